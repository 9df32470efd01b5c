// Package stuck finds connections that stay where they should only pass:
// CLOSE_WAIT (the peer closed, the application never called close(): a
// leak), FIN_WAIT2 (we closed, the peer never did), SYN_RECV (a SYN flood
// or a dead peer) and SYN_SENT (a destination that does not answer). A
// Tracker learns each socket's owner and when it entered its state from
// the transitions, and is seeded from a dump at start, so that a leak that
// began before tcptrace is found too; a Reporter joins it with a dump of
// the namespace (ages, unread bytes, accept queues) at each refresh.
package stuck

import (
	"net/netip"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/sockdiag"
	"github.com/tcptrace/tcptrace/sockets"
)

// Watched are the states a socket should not stay in.
var Watched = []events.State{events.CloseWait, events.FinWait2, events.SynRecv, events.SynSent}

func watched(s events.State) bool {
	return s == events.CloseWait || s == events.FinWait2 || s == events.SynRecv || s == events.SynSent
}

// Owner is the process that holds a socket.
type Owner struct {
	PID    uint32
	Comm   string
	Cgroup uint64
}

// sock is what is known of a socket in a watched state.
type sock struct {
	state events.State
	since time.Time
	// known: since is when it entered the state; otherwise it is when
	// tcptrace first saw it there, and the age is at least that
	known bool
	owner Owner
	// where records name sockets by address: its connection, or a
	// client's destination until it has a local port (names.go)
	conn conn
	dest dest
}

// maxSockets bounds the sockets followed.
const maxSockets = 1 << 20

// Failure names a failed handshake's side: a client's toward RAddr:RPort
// (LPort 0), or a server's on LPort (RPort 0).
type Failure struct {
	Netns uint32
	RAddr netip.Addr
	RPort uint16
	LPort uint16
}

// maxFailures bounds the failure keys kept.
const maxFailures = 4096

// Tracker follows sockets in the watched states and counts failed
// handshakes by cause. It is a stream.Consumer; it and the Reporter run
// on the stream's goroutine.
type Tracker struct {
	// only, if not 0, narrows the states followed to one (the agent
	// follows CLOSE_WAIT alone)
	only      events.State
	socks     map[uint64]*sock
	listeners map[uint64]Owner // who made each listener seen, by cookie
	failures  map[Failure]*[16]uint64
	names     names
	// FailuresDropped counts failures past maxFailures keys.
	FailuresDropped uint64
}

// NewTracker returns an empty tracker of every watched state.
func NewTracker() *Tracker {
	return &Tracker{socks: map[uint64]*sock{}, listeners: map[uint64]Owner{}, failures: map[Failure]*[16]uint64{}}
}

// NewTrackerOf returns a tracker of one watched state: no failures, no
// listeners.
func NewTrackerOf(state events.State) *Tracker {
	t := NewTracker()
	t.only = state
	return t
}

func (t *Tracker) follows(s events.State) bool {
	if t.only != 0 {
		return s == t.only
	}
	return watched(s)
}

func ownerOf(e *events.Event) Owner { return Owner{PID: e.PID, Comm: e.CommString(), Cgroup: e.Cgroup} }

// Seed takes the holders of the sockets open when tracing began
// (loader.Tracer.Holders) and a dump of namespace netns then: the sockets
// already in a watched state are followed from now, their age unknown.
func (t *Tracker) Seed(holders []events.Holder, dump []sockdiag.Detail, netns uint32, now time.Time) {
	owners := map[uint64]Owner{}
	named := map[conn]uint64{} // where records name sockets by address
	// a socket that had no cookie at the holders dump (its namespace is
	// not the tracer's, where the dump gives them: see
	// loader.Tracer.Holders) has one by the sock_diag dump, which makes
	// it: it is found by its connection
	uncooked := map[conn]Owner{}
	for id, h := range sockets.YoungestPerSocket(holders) {
		o := Owner{PID: h.PID, Comm: h.CommString(), Cgroup: h.Cgroup}
		owners[id] = o
		c := conn{h.Netns, h.LAddr, h.RAddr, h.LPort, h.RPort}
		if events.ByAddress(h.Sock) {
			named[c] = h.Sock
		} else if h.Sock == 0 {
			uncooked[c] = o
		}
	}
	for i := range dump {
		d := &dump[i]
		id := d.Cookie
		c := conn{netns, d.LAddr, d.RAddr, d.LPort, d.RPort}
		if len(named) > 0 {
			if n, ok := named[c]; ok {
				id = n
			}
		}
		if o, ok := uncooked[c]; ok {
			if _, known := owners[id]; !known {
				owners[id] = o
			}
		}
		switch {
		case d.State == events.Listen:
			if o, ok := owners[id]; ok {
				t.listeners[id] = o
				t.listen(&events.Event{Sock: id, Netns: netns, LAddr: d.LAddr, RAddr: d.RAddr,
					LPort: d.LPort, RPort: d.RPort, New: events.Listen})
			}
		case t.follows(d.State):
			if _, ok := t.socks[id]; !ok && len(t.socks) < maxSockets {
				s := &sock{state: d.State, since: now, owner: owners[id]}
				t.socks[id] = s
				if events.ByAddress(id) {
					t.track(id, s, &events.Event{Netns: netns, LAddr: d.LAddr, RAddr: d.RAddr,
						LPort: d.LPort, RPort: d.RPort, New: d.State})
				}
			}
		}
	}
}

// Write follows one event.
func (t *Tracker) Write(e *events.Event) error {
	if t.only != 0 {
		if e.Old == t.only {
			t.drop(e.Sock)
		} else if e.New == t.only {
			t.follow(e)
		}
		return nil
	}
	if e.New == events.Listen {
		t.listeners[e.Sock] = ownerOf(e)
		t.listen(e)
	} else if e.Old == events.Listen && e.New == events.Close {
		delete(t.listeners, e.Sock)
		t.listen(e)
	}
	if watched(e.Old) {
		t.drop(e.Sock)
		if e.New == events.Close && e.Cause != events.CauseNone {
			switch e.Old {
			case events.SynSent:
				t.fail(Failure{Netns: e.Netns, RAddr: e.RAddr, RPort: e.RPort}, e.Cause)
			case events.SynRecv:
				t.fail(Failure{Netns: e.Netns, LPort: e.LPort}, e.Cause)
			}
		}
	}
	if watched(e.New) {
		t.follow(e)
	}
	return nil
}

// follow starts following e's socket in e's new state.
func (t *Tracker) follow(e *events.Event) {
	if len(t.socks) >= maxSockets {
		return
	}
	s := &sock{state: e.New, since: e.Time, known: true, owner: ownerOf(e)}
	t.socks[e.Sock] = s
	t.track(e.Sock, s, e)
}

func (t *Tracker) fail(k Failure, c events.Cause) {
	n := t.failures[k]
	if n == nil {
		if len(t.failures) >= maxFailures {
			t.FailuresDropped++
			return
		}
		n = new([16]uint64)
		t.failures[k] = n
	}
	n[c&15]++
}

// Flush does nothing: reports are built on demand.
func (t *Tracker) Flush() error { return nil }
