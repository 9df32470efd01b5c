package sockets

import (
	"net/netip"
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
	tab := New(0)
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

func TestChildHeldForItsAddresses(t *testing.T) {
	tab := New(0)
	var out sink
	child := rec(7, 500, events.Listen, events.SynRecv, 9, "server")
	child.LPort = 8080 // the listener's, cloned
	if err := tab.Observe(&child, out.next); err != nil {
		t.Fatal(err)
	}
	if len(out) != 0 {
		t.Fatalf("LISTEN -> SYN_RECV passed on before the child's next transition: %v", out)
	}
	est := rec(7, 520, events.SynRecv, events.Established, 0, "")
	est.LAddr, est.RAddr = netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	est.LPort, est.RPort = 8080, 40000
	if err := tab.Observe(&est, out.next); err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 {
		t.Fatalf("got %d events, want 2", len(out))
	}
	h, e := out[0], out[1]
	if h.Old != events.Listen || h.Mono != 500 || h.RPort != 40000 || h.RAddr != est.RAddr || h.LAddr != est.LAddr {
		t.Errorf("held record %+v: want LISTEN -> SYN_RECV at 500 with the child's addresses", h)
	}
	if h.DwellKnown {
		t.Errorf("held record has a dwell: %v", h.Dwell)
	}
	if e.PID != 9 || e.CommString() != "server" || !e.DwellKnown || e.Dwell != 20 {
		t.Errorf("SYN_RECV -> ESTABLISHED: owner %d %q dwell %v (%v), want 9 server 20ns", e.PID, e.CommString(), e.Dwell, e.DwellKnown)
	}
}

// The cgroup comes with the owner, but also alone: the child of a listener
// that predates the tracer has a cgroup and no owner.
func TestCgroupCarried(t *testing.T) {
	tab := New(0)
	var out sink
	child := rec(7, 500, events.Listen, events.SynRecv, 0, "")
	child.Cgroup = 77
	est := rec(7, 520, events.SynRecv, events.Established, 0, "")
	fin := rec(7, 600, events.Established, events.FinWait1, 9, "server")
	fin.Cgroup = 78 // the socket went to a process in another cgroup
	fin2 := rec(7, 610, events.FinWait1, events.FinWait2, 0, "")
	for _, e := range []events.Event{child, est, fin, fin2} {
		if err := tab.Observe(&e, out.next); err != nil {
			t.Fatal(err)
		}
	}
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
	tab := New(0)
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
	tab := New(2)
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
	tab := New(0)
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
