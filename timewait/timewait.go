// Package timewait follows connections after the kernel handed them to a
// timewait mini-socket, where no tracepoint fires: a dead FIN_WAIT2 until
// the peer's FIN moves it to TIME_WAIT (or its timer ends it), and TIME_WAIT
// until the mini-socket goes away. The BPF program resolves what it can
// (a local peer's close, a new connection on the same addresses); this
// package asks sock_diag about the rest.
package timewait

import (
	"container/heap"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/sockdiag"
)

// Kernel is the BPF side's table of followed connections.
type Kernel interface {
	// Forget drops a connection user space saw end.
	Forget(e *events.Event) error
	// Promote marks a parked FIN_WAIT2 as in TIME_WAIT since mono.
	Promote(e *events.Event, mono uint64) error
}

// Diag looks up a connection's mini-socket.
type Diag interface {
	Lookup(e *events.Event, pid uint32) (sockdiag.Socket, bool, error)
	Release(netns uint32)
}

// Timing of the checks.
const (
	// TimeWaitLen is the kernel's TCP_TIMEWAIT_LEN: 2·MSL on Linux.
	TimeWaitLen = 60 * time.Second
	// firstCheck: a local peer is resolved in the kernel within
	// microseconds; only a parked FIN_WAIT2 still waiting after this is
	// asked about.
	firstCheck = 10 * time.Millisecond
	// maxCheck bounds the back-off of a long wait.
	maxCheck = time.Second
	// expirySlack: a mini-socket is asked about this long after its timer
	// should have fired.
	expirySlack = 100 * time.Millisecond
)

type entry struct {
	ev    events.Event // the transition that started the wait
	since uint64       // entry into the current substate, CLOCK_MONOTONIC
	next  uint64       // when to ask sock_diag
	ends  uint64       // when its timer should fire, as last known
	index int          // in the heap
}

// Follower tracks parked FIN_WAIT2 and TIME_WAIT connections.
type Follower struct {
	kernel     Kernel
	diag       Diag
	finTimeout time.Duration
	byCookie   map[uint64]*entry
	due        queue
	perNetns   map[uint32]int
	// Unfollowable counts connections given up because their namespace
	// could not be entered or sock_diag failed.
	Unfollowable uint64
	// LastErr is the last such failure, for a warning.
	LastErr error
}

// New returns a follower.
func New(k Kernel, d Diag) *Follower {
	return &Follower{
		kernel:     k,
		diag:       d,
		finTimeout: finTimeout(),
		byCookie:   make(map[uint64]*entry),
		perNetns:   make(map[uint32]int),
	}
}

// finTimeout reads net.ipv4.tcp_fin_timeout, the life of a parked FIN_WAIT2.
func finTimeout() time.Duration {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_fin_timeout")
	if err != nil {
		return TimeWaitLen
	}
	s, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return TimeWaitLen
	}
	return time.Duration(s) * time.Second
}

// life is how long a mini-socket waits in the state e entered, unless its
// timer is seen to say otherwise.
func (f *Follower) life(e *events.Event) time.Duration {
	if e.New == events.TimeWait {
		return TimeWaitLen
	}
	return f.finTimeout
}

// Len is the number of connections followed.
func (f *Follower) Len() int { return len(f.byCookie) }

// add follows e's connection, replacing what was followed of it.
func (f *Follower) add(e *events.Event, since, next uint64) {
	// count it first, so replacing an entry keeps the namespace's
	// sock_diag connection open
	f.perNetns[e.Netns]++
	if old, ok := f.byCookie[e.Sock]; ok {
		f.remove(old)
	}
	en := &entry{ev: *e, since: since, next: next, ends: since + uint64(f.life(e))}
	f.byCookie[e.Sock] = en
	heap.Push(&f.due, en)
}

func (f *Follower) remove(en *entry) {
	delete(f.byCookie, en.ev.Sock)
	if en.index >= 0 {
		heap.Remove(&f.due, en.index)
	}
	ns := en.ev.Netns
	if f.perNetns[ns]--; f.perNetns[ns] <= 0 {
		delete(f.perNetns, ns)
		f.diag.Release(ns)
	}
}

// Observe sees every record in order and says whether to show it.
func (f *Follower) Observe(e *events.Event) bool {
	switch {
	case e.Kind == events.Parked:
		f.add(e, e.Mono-uint64(e.Dwell), e.Mono+uint64(firstCheck))
		return false
	case e.New == events.TimeWait:
		en, parked := f.byCookie[e.Sock]
		if e.Resolved && (!parked || en.ev.New == events.TimeWait) {
			return false // sock_diag saw it first and it was shown then
		}
		f.add(e, e.Mono, e.Mono+uint64(TimeWaitLen+expirySlack))
		return true
	case e.New == events.Close && e.Cause == events.CauseReused:
		if en, ok := f.byCookie[e.Sock]; ok {
			f.remove(en)
		}
		return true
	}
	return true
}

// Next is when Poll has something to check, or 0 when nothing is followed.
func (f *Follower) Next() uint64 {
	if len(f.due) == 0 {
		return 0
	}
	return f.due[0].next
}

// Poll asks sock_diag about every connection due by now and emits the
// transitions it finds.
func (f *Follower) Poll(now uint64, emit func(*events.Event) error) error {
	for len(f.due) > 0 && f.due[0].next <= now {
		en := f.due[0]
		s, found, err := f.diag.Lookup(&en.ev, en.ev.PID)
		if err != nil {
			f.Unfollowable++
			f.LastErr = err
			f.remove(en)
			continue
		}
		waitingFIN := en.ev.New != events.TimeWait
		age := time.Duration(now - en.since)
		if found {
			en.ends = now + uint64(s.Expires)
		}
		switch {
		case found && waitingFIN && s.State == events.TimeWait:
			// the peer's FIN arrived
			ev := f.transition(en, now, events.TimeWait, events.CauseNone)
			if err := f.kernel.Promote(&ev, now); err != nil {
				return err
			}
			f.add(&ev, now, now+uint64(TimeWaitLen+expirySlack))
			if err := emit(&ev); err != nil {
				return err
			}
		case found:
			// still waiting: a parked FIN_WAIT2 is asked again after a
			// back-off in proportion to its wait; TIME_WAIT when its
			// timer says
			next := min(max(age/16, firstCheck), maxCheck)
			if !waitingFIN {
				next = s.Expires + expirySlack
			}
			en.next = now + uint64(next)
			heap.Fix(&f.due, en.index)
		default:
			// gone: its timer ran out, or a RST killed it early
			cause := events.CauseClosed
			if waitingFIN {
				cause = events.CauseTimeout
			}
			// gone well before its timer: killed, by a RST
			if now+uint64(time.Second) < en.ends {
				cause = events.CauseResetReceived
			}
			ev := f.transition(en, now, events.Close, cause)
			f.remove(en)
			if err := f.kernel.Forget(&ev); err != nil {
				return err
			}
			if err := emit(&ev); err != nil {
				return err
			}
		}
	}
	return nil
}

// transition builds the event for a followed connection's next state.
func (f *Follower) transition(en *entry, now uint64, to events.State, cause events.Cause) events.Event {
	ev := en.ev
	ev.Kind = events.Transition
	ev.Resolved = false
	ev.Old = events.FinWait2
	if en.ev.New == events.TimeWait {
		ev.Old = events.TimeWait
	}
	ev.New = to
	ev.Cause = cause
	ev.Mono = now
	ev.Dwell = time.Duration(now - en.since)
	ev.DwellKnown = true
	return ev
}

// queue orders entries by their next check.
type queue []*entry

func (q queue) Len() int           { return len(q) }
func (q queue) Less(i, j int) bool { return q[i].next < q[j].next }
func (q queue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *queue) Push(x any) {
	en := x.(*entry)
	en.index = len(*q)
	*q = append(*q, en)
}
func (q *queue) Pop() any {
	old := *q
	en := old[len(old)-1]
	old[len(old)-1] = nil
	en.index = -1
	*q = old[:len(old)-1]
	return en
}
