package sockets

import (
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
)

func rec(sock, mono uint64, old, new events.State, pid uint32, comm string) events.Event {
	e := events.Event{Sock: sock, Mono: mono, Old: old, New: new, PID: pid, Kind: events.Transition, Family: 4}
	copy(e.Comm[:], comm)
	return e
}

type sink []events.Event

func (s *sink) next(e *events.Event) error { *s = append(*s, *e); return nil }

func TestOwnerAndDwellCarried(t *testing.T) {
	tab := New(Options{})
	var out sink
	for _, e := range []events.Event{
		rec(1, 100, events.Close, events.SynSent, 42, "curl"),
		rec(1, 130, events.SynSent, events.Established, 0, ""), // softirq: no owner
		rec(1, 1130, events.Established, events.FinWait1, 42, "curl"),
		rec(1, 1140, events.FinWait1, events.FinWait2, 0, ""),
		rec(1, 1200, events.FinWait2, events.TimeWait, 0, ""),
	} {
		if err := tab.Observe(&e, out.next); err != nil {
			t.Fatal(err)
		}
	}
	wantDwell := []time.Duration{-1, 30, 1000, 10, 60}
	if len(out) != len(wantDwell) {
		t.Fatalf("got %d events, want %d", len(out), len(wantDwell))
	}
	for i, e := range out {
		if e.PID != 42 || e.CommString() != "curl" {
			t.Errorf("event %d: owner %d %q, want 42 curl", i, e.PID, e.CommString())
		}
		if wantDwell[i] < 0 {
			if e.DwellKnown {
				t.Errorf("event %d: dwell %v known, want unknown", i, e.Dwell)
			}
		} else if !e.DwellKnown || e.Dwell != wantDwell[i] {
			t.Errorf("event %d: dwell %v (known %v), want %v", i, e.Dwell, e.DwellKnown, wantDwell[i])
		}
	}
	if tab.Len() != 0 {
		t.Errorf("%d sockets still followed after TIME_WAIT, want 0", tab.Len())
	}
}

func holding(sock, mono uint64, pid uint32, comm string, cgroup uint64) events.Event {
	e := events.Event{Sock: sock, Mono: mono, PID: pid, Cgroup: cgroup, Kind: events.Holding}
	copy(e.Comm[:], comm)
	return e
}

// child is a server connection's first record, from listener 1
func child(sock, mono uint64, pid uint32, comm string) events.Event {
	e := rec(sock, mono, events.Listen, events.SynRecv, pid, comm)
	e.Listener = 1
	return e
}

func observe(t *testing.T, tab *Table, out *sink, evs ...events.Event) {
	t.Helper()
	for _, e := range evs {
		if err := tab.Observe(&e, out.next); err != nil {
			t.Fatal(err)
		}
	}
}

func checkOwners(t *testing.T, out sink, pid uint32, comm string) {
	t.Helper()
	for i, e := range out {
		if e.PID != pid || e.CommString() != comm {
			t.Errorf("event %d (%v -> %v): owner %d %q, want %d %q", i, e.Old, e.New, e.PID, e.CommString(), pid, comm)
		}
	}
}

// A server connection's records wait for the process that accepts it: the
// first to receive or send on it. The held LISTEN -> SYN_RECV also takes
// the child's addresses from its next transition.
func TestChildHeldForItsHolder(t *testing.T) {
	tab := New(Options{})
	var out sink
	child := rec(7, 500, events.Listen, events.SynRecv, 9, "master") // the listener's creator, cloned
	child.LPort = 8080
	est := rec(7, 520, events.SynRecv, events.Established, 0, "")
	est.LAddr, est.RAddr = netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	est.LPort, est.RPort = 8080, 40000
	observe(t, tab, &out, child, est)
	if len(out) != 0 || tab.Pending() != 1 {
		t.Fatalf("passed on %d records before the holder was known (pending %d)", len(out), tab.Pending())
	}
	observe(t, tab, &out, holding(7, 600, 11, "worker", 5))
	if len(out) != 2 {
		t.Fatalf("got %d events, want 2", len(out))
	}
	checkOwners(t, out, 11, "worker")
	h, e := out[0], out[1]
	if h.Old != events.Listen || h.Mono != 500 || h.RPort != 40000 || h.RAddr != est.RAddr || h.LAddr != est.LAddr {
		t.Errorf("held record %+v: want LISTEN -> SYN_RECV at 500 with the child's addresses", h)
	}
	if h.DwellKnown || !e.DwellKnown || e.Dwell != 20 {
		t.Errorf("dwells %v (%v), %v (%v): want unknown, then 20ns", h.Dwell, h.DwellKnown, e.Dwell, e.DwellKnown)
	}
	if h.Cgroup != 5 || e.Cgroup != 5 {
		t.Errorf("cgroups %d, %d: want the holder's, 5", h.Cgroup, e.Cgroup)
	}
	// the peer's FIN, in softirq: still the worker's
	out = out[:0]
	observe(t, tab, &out, rec(7, 700, events.Established, events.CloseWait, 0, ""))
	checkOwners(t, out, 11, "worker")
	if tab.Pending() != 0 {
		t.Errorf("%d connections still held", tab.Pending())
	}
}

// A close is a system call in the process that holds the connection: it
// releases the held records named for that process.
func TestCloseNamesTheHolder(t *testing.T) {
	tab := New(Options{})
	var out sink
	observe(t, tab, &out,
		rec(7, 500, events.Listen, events.SynRecv, 9, "master"),
		rec(7, 520, events.SynRecv, events.Established, 0, ""),
		rec(7, 530, events.Established, events.FinWait1, 12, "child"))
	if len(out) != 3 {
		t.Fatalf("got %d events, want 3", len(out))
	}
	checkOwners(t, out, 12, "child")
}

// With no holder seen within HoldFor, the records go out at Expire named
// for a holder of the socket itself, from a holders dump. While nobody
// holds it yet and several processes hold its listener (a prefork
// server), they wait for the acceptor, up to maxWait HoldFor, and then go
// out with no owner rather than a guess among the workers.
const ms = uint64(time.Millisecond)

func TestExpireFallsBackToHolders(t *testing.T) {
	var dump []events.Holder
	dumps := 0
	tab := New(Options{HoldFor: 100 * time.Millisecond, Holders: func() ([]events.Holder, error) { dumps++; return dump, nil }})
	var out sink
	listen := rec(1, 10*ms, events.Close, events.Listen, 100, "daemon") // exits once it has forked
	listen.LPort, listen.Netns = 80, 5
	listener := func(pid uint32, comm string, start uint64) events.Holder {
		h := events.Holder{Sock: 1, PID: pid, Start: start, State: events.Listen, LPort: 80, Netns: 5}
		copy(h.Comm[:], comm)
		return h
	}
	dump = []events.Holder{listener(200, "master", 50), listener(300, "worker", 60), listener(301, "worker", 70)}
	observe(t, tab, &out, listen, child(7, 500*ms, 100, "daemon"), rec(7, 520*ms, events.SynRecv, events.Established, 0, ""))
	out = out[:0]
	if err := tab.Expire(599*ms, out.next); err != nil || len(out) != 0 {
		t.Fatalf("expired before the deadline: %d events, %v", len(out), err)
	}
	// queued, three processes could take it: it waits
	for _, now := range []uint64{600 * ms, 1000 * ms, 1499 * ms} {
		if err := tab.Expire(now, out.next); err != nil || len(out) != 0 {
			t.Fatalf("at %v: released %d events of a connection nobody took yet, %v", time.Duration(now), len(out), err)
		}
	}
	if err := tab.Expire(1700*ms, out.next); err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || out[0].PID != 0 || out[1].PID != 0 {
		t.Fatalf("got %d events owned by %v, want 2 with no owner after waiting 1 s:\n%+v", len(out), out, out)
	}

	// a connection accepted but never read: its own holder, from the dump
	out = out[:0]
	held := events.Holder{Sock: 8, PID: 300, Start: 60, State: events.Established}
	copy(held.Comm[:], "worker")
	dump = append(dump, held)
	observe(t, tab, &out, child(8, 2000*ms, 100, "daemon"), rec(8, 2010*ms, events.SynRecv, events.Established, 0, ""))
	if err := tab.Expire(2100*ms, out.next); err != nil {
		t.Fatal(err)
	}
	checkOwners(t, out, 300, "worker")

	// a listener only one process holds: its connections are that one's
	out = out[:0]
	dump = []events.Holder{listener(300, "worker", 60)}
	observe(t, tab, &out, child(9, 3000*ms, 100, "daemon"), rec(9, 3010*ms, events.SynRecv, events.Established, 0, ""))
	if err := tab.Expire(3100*ms, out.next); err != nil {
		t.Fatal(err)
	}
	checkOwners(t, out, 300, "worker")
	if dumps == 0 {
		t.Errorf("no holders dump taken")
	}
}

// A connection accepted by one process and handed to another (fork after
// accept, SCM_RIGHTS): its handshake is named for the acceptor, which
// holds the listener; what follows, for the process it was handed to.
func TestHandedOn(t *testing.T) {
	lst := events.Holder{Sock: 1, PID: 100, Start: 1, State: events.Listen}
	copy(lst.Comm[:], "acceptor")
	conn := events.Holder{Sock: 7, PID: 200, Start: 2, State: events.CloseWait}
	copy(conn.Comm[:], "handler")
	tab := New(Options{Holders: func() ([]events.Holder, error) { return []events.Holder{lst, conn}, nil }})
	var out sink
	observe(t, tab, &out, rec(1, 10, events.Close, events.Listen, 100, "acceptor"))
	out = out[:0]
	observe(t, tab, &out,
		child(7, 500*ms, 100, "acceptor"),
		rec(7, 510*ms, events.SynRecv, events.Established, 0, ""),
		rec(7, 520*ms, events.Established, events.CloseWait, 0, ""),
		holding(7, 530*ms, 200, "handler", 0),
		rec(7, 830*ms, events.CloseWait, events.LastAck, 200, "handler"))
	if len(out) != 4 {
		t.Fatalf("got %d events, want 4", len(out))
	}
	checkOwners(t, out[:2], 100, "acceptor")
	checkOwners(t, out[2:], 200, "handler")
}

// Socket activation, seen late: the supervisor made the listener and
// handed it on; by the dump that would tell, the service has closed the
// listener too. Nobody holds it then, so the service, seen holding the
// connection, took it: the supervisor is never named.
func TestHandedListenerGone(t *testing.T) {
	conn := events.Holder{Sock: 7, PID: 200, Start: 2, State: events.CloseWait}
	copy(conn.Comm[:], "service")
	tab := New(Options{Holders: func() ([]events.Holder, error) { return []events.Holder{conn}, nil }})
	var out sink
	observe(t, tab, &out, rec(1, 10, events.Close, events.Listen, 100, "supervisor"))
	out = out[:0]
	observe(t, tab, &out,
		child(7, 500*ms, 100, "supervisor"),
		rec(7, 510*ms, events.SynRecv, events.Established, 0, ""),
		holding(7, 530*ms, 200, "service", 0),
		rec(7, 830*ms, events.Established, events.FinWait1, 200, "service"))
	if len(out) != 3 {
		t.Fatalf("got %d events, want 3", len(out))
	}
	checkOwners(t, out, 200, "service")
}

// A connection reset before anyone accepted it is named for its
// listener's holder at once.
func TestResetBeforeAccept(t *testing.T) {
	tab := New(Options{})
	var out sink
	listen := rec(1, 10, events.Close, events.Listen, 100, "server")
	listen.LPort = 80
	observe(t, tab, &out, listen)
	out = out[:0]
	rst := rec(7, 520, events.SynRecv, events.Close, 0, "")
	rst.LPort = 80
	observe(t, tab, &out, child(7, 500, 0, ""), rst)
	if len(out) != 2 {
		t.Fatalf("got %d events, want 2", len(out))
	}
	checkOwners(t, out, 100, "server")
	if tab.Pending() != 0 || tab.Len() != 1 {
		t.Errorf("pending %d, followed %d: want 0 and the listener", tab.Pending(), tab.Len())
	}
}

// Sockets older than the tracer get their owner from the holders dump at
// the start; their time in state stays unknown. A listener that never got
// a cookie is found by its port.
func TestSeed(t *testing.T) {
	conn := events.Holder{Sock: 5, PID: 40, Start: 1, State: events.CloseWait}
	copy(conn.Comm[:], "leaky")
	parent := conn
	parent.PID, parent.Start = 39, 0 // forked before it: not taken
	lst := events.Holder{Sock: 0, PID: 41, Start: 2, State: events.Listen, LPort: 8080, Netns: 3}
	copy(lst.Comm[:], "old-server")
	tab := New(Options{})
	tab.Seed([]events.Holder{parent, conn, lst})
	var out sink
	observe(t, tab, &out, rec(5, 100, events.CloseWait, events.LastAck, 0, ""))
	checkOwners(t, out, 40, "leaky")
	if out[0].DwellKnown {
		t.Errorf("dwell %v known for a socket older than the tracer", out[0].Dwell)
	}
	out = out[:0]
	est := rec(6, 210, events.SynRecv, events.Established, 0, "")
	est.LPort, est.Netns = 8080, 3
	child := rec(6, 200, events.Listen, events.SynRecv, 0, "")
	child.Netns = 3
	observe(t, tab, &out, child, est)
	if err := tab.Flush(out.next); err != nil {
		t.Fatal(err)
	}
	checkOwners(t, out, 41, "old-server")
}

// A held connection's records wait for its holder only up to maxHeld.
func TestHeldBounded(t *testing.T) {
	tab := New(Options{})
	var out sink
	observe(t, tab, &out, rec(7, 500, events.Listen, events.SynRecv, 9, "server"))
	for i := range maxHeld {
		observe(t, tab, &out, rec(7, uint64(510+i), events.Established, events.Established, 0, ""))
	}
	if len(out) != maxHeld+1 || tab.Pending() != 0 {
		t.Errorf("passed %d events, %d pending: want all %d out once %d were held", len(out), tab.Pending(), maxHeld+1, maxHeld)
	}
}

// The cgroup comes with the owner, but also alone: the child of a listener
// that predates the tracer has a cgroup and no owner.
func TestCgroupCarried(t *testing.T) {
	tab := New(Options{})
	var out sink
	child := child(7, 500, 0, "")
	child.Cgroup = 77
	observe(t, tab, &out, child, rec(7, 520, events.SynRecv, events.Established, 0, ""))
	if err := tab.Expire(1<<40, out.next); err != nil {
		t.Fatal(err)
	}
	fin := rec(7, 600, events.Established, events.FinWait1, 9, "server")
	fin.Cgroup = 78 // the socket went to a process in another cgroup
	observe(t, tab, &out, fin, rec(7, 610, events.FinWait1, events.FinWait2, 0, ""))
	want := []uint64{77, 77, 78, 78}
	if len(out) != len(want) {
		t.Fatalf("got %d events, want %d", len(out), len(want))
	}
	for i, e := range out {
		if e.Cgroup != want[i] {
			t.Errorf("event %d (%v -> %v): cgroup %d, want %d", i, e.Old, e.New, e.Cgroup, want[i])
		}
	}
}

func TestFlushPassesHeldInOrder(t *testing.T) {
	tab := New(Options{})
	var out sink
	for _, s := range []uint64{3, 1, 2} {
		e := rec(s, s*10, events.Listen, events.SynRecv, 0, "")
		if err := tab.Observe(&e, out.next); err != nil {
			t.Fatal(err)
		}
	}
	if err := tab.Flush(out.next); err != nil {
		t.Fatal(err)
	}
	if len(out) != 3 || out[0].Mono != 10 || out[1].Mono != 20 || out[2].Mono != 30 {
		t.Fatalf("flushed %v, want the three children by time", out)
	}
	if err := tab.Flush(out.next); err != nil || len(out) != 3 {
		t.Fatalf("a second flush passed more: %d events, err %v", len(out), err)
	}
}

func TestFullTableCounts(t *testing.T) {
	tab := New(Options{Max: 2})
	var out sink
	for s := uint64(1); s <= 3; s++ {
		e := rec(s, 100, events.Close, events.SynSent, uint32(s), "c")
		if err := tab.Observe(&e, out.next); err != nil {
			t.Fatal(err)
		}
	}
	e := rec(3, 200, events.SynSent, events.Established, 0, "")
	if err := tab.Observe(&e, out.next); err != nil {
		t.Fatal(err)
	}
	if tab.Full != 2 || tab.Len() != 2 {
		t.Errorf("full %d, len %d; want 2 records of an unfollowed socket (socket 3, twice) and 2 sockets followed", tab.Full, tab.Len())
	}
	if got := out[len(out)-1]; got.PID != 0 || got.DwellKnown {
		t.Errorf("unfollowed socket got owner %d, dwell known %v", got.PID, got.DwellKnown)
	}
}

func TestReconnectStartsAfresh(t *testing.T) {
	tab := New(Options{})
	var out sink
	for _, e := range []events.Event{
		rec(5, 100, events.Close, events.SynSent, 7, "a"),
		rec(5, 110, events.SynSent, events.Close, 7, "a"),
		rec(5, 500, events.Close, events.SynSent, 7, "a"),
	} {
		if err := tab.Observe(&e, out.next); err != nil {
			t.Fatal(err)
		}
	}
	if out[1].Dwell != 10 || out[2].DwellKnown {
		t.Errorf("dwells %v, %v (known %v): want 10ns, then unknown after CLOSE", out[1].Dwell, out[2].Dwell, out[2].DwellKnown)
	}
}

// A server that takes the connections of the listener it made gets no
// holder notes from the kernel: once its first connection shows it (its
// close), the listener's later connections go out at once, named for it.
func TestMakerTakes(t *testing.T) {
	tab := New(Options{Holders: func() ([]events.Holder, error) { return nil, nil }})
	var out sink
	listen := rec(1, 10, events.Close, events.Listen, 100, "server")
	listen.LPort = 80
	observe(t, tab, &out, listen)
	out = out[:0]
	observe(t, tab, &out,
		child(7, 500*ms, 100, "server"),
		rec(7, 510*ms, events.SynRecv, events.Established, 0, ""))
	if len(out) != 0 {
		t.Fatalf("first connection passed on before its holder was known: %d events", len(out))
	}
	observe(t, tab, &out, rec(7, 520*ms, events.Established, events.FinWait1, 100, "server"))
	if len(out) != 3 {
		t.Fatalf("got %d events, want 3", len(out))
	}
	out = out[:0]
	observe(t, tab, &out,
		child(8, 600*ms, 100, "server"),
		rec(8, 610*ms, events.SynRecv, events.Established, 0, ""),
		rec(8, 620*ms, events.Established, events.CloseWait, 0, ""))
	if len(out) != 3 || tab.Pending() != 0 {
		t.Fatalf("second connection: %d events out, %d pending; want all 3 at once", len(out), tab.Pending())
	}
	checkOwners(t, out, 100, "server")
	// a connection whose next transition never came goes out at the end
	// named for the maker too, with no dump
	out = out[:0]
	observe(t, tab, &out, child(9, 700*ms, 0, ""))
	if err := tab.Flush(out.next); err != nil {
		t.Fatal(err)
	}
	checkOwners(t, out, 100, "server")
	if tab.Dumps != 0 {
		t.Errorf("%d dumps for connections whose owner was known", tab.Dumps)
	}
	// handed to another process later: renamed from its note on
	out = out[:0]
	observe(t, tab, &out, holding(8, 630*ms, 200, "handler", 0),
		rec(8, 640*ms, events.CloseWait, events.LastAck, 200, "handler"),
		rec(8, 650*ms, events.LastAck, events.Close, 0, ""))
	checkOwners(t, out, 200, "handler")
}

// Where the kernel writes no Holding records (NoNotes), a server
// connection handed on after its handshake was released shows only in a
// dump: its ESTABLISHED -> CLOSE_WAIT waits for one, and names the
// process holding it then, not the acceptor carried from the handshake.
func TestCloseWaitWaitsForDumpWithoutNotes(t *testing.T) {
	lst := events.Holder{Sock: 1, PID: 100, Start: 1, State: events.Listen}
	copy(lst.Comm[:], "acceptor")
	dump := []events.Holder{lst}
	tab := New(Options{HoldFor: 100 * time.Millisecond, NoNotes: true,
		Holders: func() ([]events.Holder, error) { return dump, nil }})
	var out sink
	observe(t, tab, &out, rec(1, 10*ms, events.Close, events.Listen, 100, "acceptor"),
		child(7, 500*ms, 100, "acceptor"), rec(7, 510*ms, events.SynRecv, events.Established, 0, ""))
	out = out[:0]
	// the acceptor still holds it at the first dump
	acc := events.Holder{Sock: 7, PID: 100, Start: 1, State: events.Established}
	copy(acc.Comm[:], "acceptor")
	dump = append(dump, acc)
	if err := tab.Expire(600*ms, out.next); err != nil {
		t.Fatal(err)
	}
	checkOwners(t, out, 100, "acceptor")
	// then hands it to a handler, and the peer closes
	out = out[:0]
	hnd := events.Holder{Sock: 7, PID: 200, Start: 2, State: events.CloseWait}
	copy(hnd.Comm[:], "handler")
	dump = []events.Holder{lst, hnd}
	observe(t, tab, &out, rec(7, 900*ms, events.Established, events.CloseWait, 0, ""))
	if len(out) != 0 {
		t.Fatalf("CLOSE_WAIT went out before a dump: %+v", out)
	}
	if err := tab.Expire(1000*ms, out.next); err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 {
		t.Fatalf("got %d events, want the CLOSE_WAIT", len(out))
	}
	checkOwners(t, out, 200, "handler")
}

// A holder that the last dump did not show holding the listener either
// took the connection from it (it got the listener after that dump, as
// under socket activation) or was handed the connection: when the dumps'
// spacing allows no dump to tell, the records wait for the next one.
func TestHoldingWaitsForDumpToTell(t *testing.T) {
	super := events.Holder{Sock: 1, PID: 100, Start: 1, State: events.Listen}
	copy(super.Comm[:], "super")
	other := events.Holder{Sock: 99, PID: 200, Start: 2, State: events.Established}
	copy(other.Comm[:], "worker")
	dump := []events.Holder{super, other}
	tab := New(Options{HoldFor: 100 * time.Millisecond, Holders: func() ([]events.Holder, error) { return dump, nil }})
	var out sink
	observe(t, tab, &out, rec(1, 10*ms, events.Close, events.Listen, 100, "super"))
	tab.Seed(dump) // the dump at start: the worker runs, without the listener yet
	// the worker gets the listener, accepts and answers at once
	worker := events.Holder{Sock: 1, PID: 200, Start: 2, State: events.Listen}
	copy(worker.Comm[:], "worker")
	conn := events.Holder{Sock: 7, PID: 200, Start: 2, State: events.Established}
	copy(conn.Comm[:], "worker")
	dump = []events.Holder{super, worker, conn}
	out = out[:0]
	observe(t, tab, &out, child(7, 500*ms, 100, "super"), rec(7, 510*ms, events.SynRecv, events.Established, 0, ""))
	tab.lastDump = 505 * ms // a dump just taken: the next may come only after HoldFor
	observe(t, tab, &out, holding(7, 520*ms, 200, "worker", 0))
	if len(out) != 0 {
		t.Fatalf("released before a dump could tell: %+v", out)
	}
	if err := tab.Expire(620*ms, out.next); err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 {
		t.Fatalf("got %d events, want the handshake", len(out))
	}
	checkOwners(t, out, 200, "worker")
}

// Socket activation where dumps are slow (under emulation one took
// 100 ms, which spaces them 2 s apart): the supervisor made the listener
// and handed it to the service before the tracer's first dump since. A
// connection that waited 10 HoldFor gets its dump at once, spacing or
// not, and is named for the service, not guessed from the listener's
// maker; so is one whose holder was seen, without a dump.
func TestSlowDumpsNameTheService(t *testing.T) {
	for _, notes := range []bool{false, true} {
		service := events.Holder{Sock: 1, PID: 200, Start: 2, State: events.Listen}
		copy(service.Comm[:], "service")
		conn := events.Holder{Sock: 7, PID: 200, Start: 2, State: events.Established}
		copy(conn.Comm[:], "service")
		dumps := 0
		tab := New(Options{HoldFor: 100 * time.Millisecond, NoNotes: !notes, Holders: func() ([]events.Holder, error) {
			dumps++
			return []events.Holder{service, conn}, nil
		}})
		var out sink
		observe(t, tab, &out, rec(1, 10*ms, events.Close, events.Listen, 100, "super"))
		tab.lastDump, tab.dumpTook = 5*ms, uint64(100*time.Millisecond)
		out = out[:0]
		observe(t, tab, &out, child(7, 500*ms, 0, ""), rec(7, 510*ms, events.SynRecv, events.Established, 0, ""))
		if notes {
			observe(t, tab, &out, holding(7, 520*ms, 200, "service", 0))
		}
		for now := 600 * ms; now <= 1600*ms; now += 100 * ms {
			if err := tab.Expire(now, out.next); err != nil {
				t.Fatal(err)
			}
		}
		if len(out) != 2 {
			t.Fatalf("notes %v: got %d events, want the handshake", notes, len(out))
		}
		checkOwners(t, out, 200, "service")
		if dumps != 1 {
			t.Errorf("notes %v: %d dumps, want 1", notes, dumps)
		}
	}
}

// A dump that shows nobody holding a listener still open tells nothing:
// the connection waits for the next, rather than being named for the
// listener's maker. One that shows nobody holding anything (the 5.10
// guest's iterator gave such dumps under load) is taken again at once.
func TestEmptyDumpWaits(t *testing.T) {
	service := events.Holder{Sock: 1, PID: 200, Start: 2, State: events.Listen}
	copy(service.Comm[:], "service")
	other := events.Holder{Sock: 99, PID: 300, Start: 3, State: events.Established}
	dumps := 0
	tab := New(Options{HoldFor: 100 * time.Millisecond, NoNotes: true, Holders: func() ([]events.Holder, error) {
		dumps++
		switch dumps {
		case 1:
			return nil, nil
		case 2:
			return []events.Holder{other}, nil
		}
		return []events.Holder{service}, nil
	}})
	var out sink
	observe(t, tab, &out, rec(1, 10*ms, events.Close, events.Listen, 100, "super"))
	out = out[:0]
	observe(t, tab, &out, child(7, 500*ms, 0, ""), rec(7, 510*ms, events.SynRecv, events.Established, 0, ""))
	if err := tab.Expire(600*ms, out.next); err != nil {
		t.Fatal(err)
	}
	if len(out) != 0 {
		t.Fatalf("released after a dump with no holder: %+v", out)
	}
	if err := tab.Expire(700*ms, out.next); err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || dumps != 3 {
		t.Fatalf("got %d events after %d dumps, want the handshake after 3", len(out), dumps)
	}
	checkOwners(t, out, 200, "service")
}

// The tracer's holders dump can make a socket's last close itself (it
// held the file when the holder closed it): such a close is named for the
// holder, not the tracer.
func TestDumpsCloseIsTheHolders(t *testing.T) {
	tab := New(Options{})
	self := uint32(os.Getpid())
	var out sink
	observe(t, tab, &out, rec(1, 10*ms, events.Close, events.Listen, 100, "worker"),
		rec(1, 20*ms, events.Listen, events.Close, self, "kerneltest"))
	checkOwners(t, out, 100, "worker")
}
