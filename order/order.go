// Package order puts the kernel's records back in time order. Each CPU
// stages its records and writes them to the ring a batch at a time (see
// bpf/tcptrace.c), so the ring holds each CPU's records in order but
// interleaves the CPUs a batch at a time: a connection whose transitions
// ran on two CPUs can arrive out of order, and the socket table and the
// timewait follower need every socket's transitions in order.
//
// Every staged record says which CPU it came through, and a CPU's staged
// records arrive in the order of their times; a flush of a CPU's staging
// (loader.Tracer.Settle) ends with a mark, after every record of that CPU
// timed before it. So once a record or a mark of each CPU has been read,
// every record timed before the earliest of the CPUs' latest times is in
// hand: a Buffer releases those, sorted by time. It holds a few batches
// under load, however far behind the reader is.
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
	// latest[c] is the latest time CPU c's staged records or marks have
	// reached; 0 for a CPU not seen yet
	latest []uint64
	// the newest mark's time and the kernel's jiffies then
	markMono, markJiffies uint64
}

// Jiffies is the newest mark's time (CLOCK_MONOTONIC) and the kernel's
// jiffies then; 0, 0 before any mark.
func (b *Buffer) Jiffies() (mono, jiffies uint64) {
	return b.markMono, b.markJiffies
}

// Add copies evs in and takes note of how far each CPU has got. Marks
// are noted, not kept. Records written straight to the ring (Src 0) say
// nothing of their CPU: they interrupted a program that may stage an
// earlier record after them.
func (b *Buffer) Add(evs []events.Event) {
	for i := range evs {
		e := &evs[i]
		if e.Src != 0 {
			c := int(e.Src - 1)
			if c >= len(b.latest) {
				b.latest = append(b.latest, make([]uint64, c+1-len(b.latest))...)
			}
			b.latest[c] = max(b.latest[c], e.Mono)
		}
		if e.Kind != events.Mark {
			b.evs = append(b.evs, *e)
		} else if e.Mono > b.markMono {
			b.markMono, b.markJiffies = e.Mono, e.Sock
		}
	}
}

// Len is how many records are held.
func (b *Buffer) Len() int {
	return len(b.evs)
}

// Settled is the earliest of the latest times of the CPUs seen: every
// record timed before it has been added, give or take TCP's own clock
// (see bpf/tcptrace.c's clock_for). 0 until a CPU is seen.
func (b *Buffer) Settled() uint64 {
	var t uint64
	for _, l := range b.latest {
		if l != 0 && (t == 0 || l < t) {
			t = l
		}
	}
	return t
}

// Lag is how far the CPU furthest behind is behind the one furthest
// ahead. Under load every CPU's latest time moves with its batches, and
// Settled follows; a CPU that went quiet stays behind, and holds every
// other CPU's records back until a settle writes its mark.
func (b *Buffer) Lag() uint64 {
	var lo, hi uint64
	for _, l := range b.latest {
		if l == 0 {
			continue
		}
		if lo == 0 || l < lo {
			lo = l
		}
		hi = max(hi, l)
	}
	return hi - lo
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
