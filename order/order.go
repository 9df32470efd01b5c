// Package order puts the kernel's records back in time order. Each CPU
// stages its records and writes them to the ring a batch at a time (see
// bpf/tcptrace.c), so the ring holds each CPU's records in order but
// interleaves the CPUs a batch at a time: a connection whose transitions
// ran on two CPUs can arrive out of order, and the socket table and the
// timewait follower need every socket's transitions in order. A Buffer
// holds records until the tracer has settled (loader.Tracer.Settle), when
// every record timed before the settle is in hand, and releases those
// sorted by time.
package order

import (
	"cmp"
	"slices"

	"github.com/tcptrace/tcptrace/events"
)

// Buffer holds records not yet released. The zero value is ready.
type Buffer struct {
	evs []events.Event
	idx []int32 // scratch: the records being released
}

// Add copies evs in.
func (b *Buffer) Add(evs []events.Event) {
	b.evs = append(b.evs, evs...)
}

// Len is how many records are held.
func (b *Buffer) Len() int {
	return len(b.evs)
}

// Release passes fn every held record timed before mark, in time order
// (records with the same time in the order they were added), and forgets
// them. fn must copy what it keeps: the record is reused after it returns.
func (b *Buffer) Release(mark uint64, fn func(*events.Event)) {
	b.idx = b.idx[:0]
	for i := range b.evs {
		if b.evs[i].Mono < mark {
			b.idx = append(b.idx, int32(i))
		}
	}
	if len(b.idx) == 0 {
		return
	}
	// mostly in order already (a CPU's batch is): cheap for pdqsort
	slices.SortFunc(b.idx, func(x, y int32) int {
		if c := cmp.Compare(b.evs[x].Mono, b.evs[y].Mono); c != 0 {
			return c
		}
		return cmp.Compare(x, y)
	})
	for _, i := range b.idx {
		fn(&b.evs[i])
	}
	kept := 0
	for i := range b.evs {
		if b.evs[i].Mono >= mark {
			b.evs[kept] = b.evs[i]
			kept++
		}
	}
	b.evs = b.evs[:kept]
}
