// Package sockets keeps what tcptrace knows of each live socket between
// its transitions: who owns it, the owner's cgroup and when it entered its
// state. The kernel reports the owner only where it knows it, in a system
// call on the socket or, for a server's child, from its listener; the
// transitions that arriving packets make run in whatever task a softirq
// interrupted. Keeping this here rather than in per-socket BPF storage
// saves the BPF program about 100 ns per transition (see the README's
// overhead section).
package sockets

import (
	"cmp"
	"slices"
	"time"

	"github.com/tcptrace/tcptrace/events"
)

// DefaultMax bounds the sockets followed at once: about 64 bytes each.
const DefaultMax = 1 << 18

type entry struct {
	since  uint64 // when the socket entered its state, CLOCK_MONOTONIC
	cgroup uint64
	pid    uint32
	comm   [events.CommLen]byte
}

// Table follows sockets by cookie. It is not safe for concurrent use.
type Table struct {
	max  int
	live map[uint64]entry
	// children whose LISTEN -> SYN_RECV waits for their next transition:
	// the kernel sets a child's addresses only after that one. Pointers,
	// recycled through spare: a record is too big for a map to hold
	// inline, so storing values would allocate one per child.
	held  map[uint64]*events.Event
	spare []*events.Event
	// Full counts the records of sockets not followed because max were:
	// their owner and times in state stay unknown. A socket counts once
	// per record, not once.
	Full uint64
}

// New returns a table of at most max sockets (DefaultMax if max <= 0).
func New(max int) *Table {
	if max <= 0 {
		max = DefaultMax
	}
	return &Table{max: max, live: make(map[uint64]entry), held: make(map[uint64]*events.Event)}
}

// Len is the number of sockets followed.
func (t *Table) Len() int { return len(t.live) }

// Observe completes e, a record from the kernel in ring order, with its
// socket's owner, cgroup and time in the old state, and passes it to
// next. A child's LISTEN -> SYN_RECV is held back and passed, with the
// child's addresses, just before the child's next transition.
func (t *Table) Observe(e *events.Event, next func(*events.Event) error) error {
	if e.Old == events.Listen && e.New == events.SynRecv {
		if !t.room(e.Sock) {
			return next(e)
		}
		t.live[e.Sock] = entry{since: e.Mono, cgroup: e.Cgroup, pid: e.PID, comm: e.Comm}
		h := t.take()
		*h = *e
		t.held[e.Sock] = h
		return nil
	}
	if h, ok := t.held[e.Sock]; ok {
		delete(t.held, e.Sock)
		h.Family, h.LAddr, h.RAddr, h.LPort, h.RPort = e.Family, e.LAddr, e.RAddr, e.LPort, e.RPort
		err := next(h)
		t.spare = append(t.spare, h)
		if err != nil {
			return err
		}
	}
	en, known := t.live[e.Sock]
	if known && e.Mono >= en.since {
		e.Dwell, e.DwellKnown = time.Duration(e.Mono-en.since), true
	}
	if e.PID != 0 {
		en.pid, en.comm = e.PID, e.Comm
	} else if en.pid != 0 {
		e.PID, e.Comm = en.pid, en.comm
	}
	// apart from the owner: a child of a listener that predates the
	// tracer has a cgroup but no owner
	if e.Cgroup != 0 {
		en.cgroup = e.Cgroup
	} else {
		e.Cgroup = en.cgroup
	}
	// the kernel is done with the socket: a timewait mini-socket, if any,
	// is package timewait's
	if e.New == events.Close || e.New == events.TimeWait || e.Kind == events.Parked {
		delete(t.live, e.Sock)
	} else if known || t.room(e.Sock) {
		en.since = e.Mono
		t.live[e.Sock] = en
	}
	return next(e)
}

// take returns a spare record, or a new one.
func (t *Table) take() *events.Event {
	if n := len(t.spare); n > 0 {
		h := t.spare[n-1]
		t.spare = t.spare[:n-1]
		return h
	}
	return new(events.Event)
}

// room says whether a socket not yet followed can be.
func (t *Table) room(sock uint64) bool {
	if _, ok := t.live[sock]; ok || len(t.live) < t.max {
		return true
	}
	t.Full++
	return false
}

// Flush passes on the children still held, whose next transition never
// came (it was lost, or the trace ended first), without their addresses.
// They go in the order they happened.
func (t *Table) Flush(next func(*events.Event) error) error {
	held := make([]*events.Event, 0, len(t.held))
	for _, h := range t.held {
		held = append(held, h)
	}
	clear(t.held)
	slices.SortFunc(held, func(a, b *events.Event) int { return cmp.Compare(a.Mono, b.Mono) })
	for _, h := range held {
		if err := next(h); err != nil {
			return err
		}
	}
	return nil
}
