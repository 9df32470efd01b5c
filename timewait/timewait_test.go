package timewait

import (
	"net/netip"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/sockdiag"
)

type fakeKernel struct{ forgot, promoted int }

func (k *fakeKernel) Forget(*events.Event) error          { k.forgot++; return nil }
func (k *fakeKernel) Promote(*events.Event, uint64) error { k.promoted++; return nil }

// fakeDiag answers from a table by cookie; absent means gone.
type fakeDiag struct {
	socks    map[uint64]sockdiag.Socket
	lookups  int
	released []uint32
}

func (d *fakeDiag) Lookup(e *events.Event, pid uint32) (sockdiag.Socket, bool, error) {
	d.lookups++
	s, ok := d.socks[e.Sock]
	return s, ok, nil
}
func (d *fakeDiag) Release(ns uint32) { d.released = append(d.released, ns) }

const ms = uint64(time.Millisecond)

func parked(at uint64) *events.Event {
	return &events.Event{
		Kind: events.Parked, Mono: at, Dwell: time.Duration(5 * ms), DwellKnown: true,
		Sock: 7, Netns: 99, PID: 42, Family: 4,
		LAddr: netip.MustParseAddr("127.0.0.1"), RAddr: netip.MustParseAddr("127.0.0.1"),
		Old: events.FinWait2, New: events.Close,
	}
}

func collect(out *[]events.Event) func(*events.Event) error {
	return func(e *events.Event) error { *out = append(*out, *e); return nil }
}

// The kernel resolves a parked FIN_WAIT2 first: shown once, then its
// TIME_WAIT is followed to the end.
func TestKernelResolvesFirst(t *testing.T) {
	k, d := &fakeKernel{}, &fakeDiag{socks: map[uint64]sockdiag.Socket{}}
	f := New(k, d)
	if f.Observe(parked(1000 * ms)) {
		t.Fatal("a parked note was shown")
	}
	tw := *parked(1300 * ms)
	tw.Kind, tw.New, tw.Resolved, tw.Dwell = events.Transition, events.TimeWait, true, time.Duration(305*ms)
	if !f.Observe(&tw) {
		t.Fatal("the kernel's TIME_WAIT was not shown")
	}
	if f.Len() != 1 || f.Next() != 1300*ms+uint64(TimeWaitLen+expirySlack) {
		t.Fatalf("follows %d, next check at %d", f.Len(), f.Next())
	}
	// at expiry the mini-socket is gone: TIME_WAIT -> CLOSE, closed
	var out []events.Event
	now := f.Next()
	if err := f.Poll(now, collect(&out)); err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 || out[0].Old != events.TimeWait || out[0].New != events.Close || out[0].Cause != events.CauseClosed ||
		out[0].Dwell != time.Duration(now-1300*ms) || out[0].PID != 42 {
		t.Fatalf("got %+v", out)
	}
	if f.Len() != 0 || k.forgot != 1 || len(d.released) != 1 || d.released[0] != 99 {
		t.Errorf("len %d, forgot %d, released %v", f.Len(), k.forgot, d.released)
	}
}

// sock_diag sees the FIN first: shown then, and the kernel's later report
// of the same move is dropped.
func TestDiagResolvesFirst(t *testing.T) {
	k, d := &fakeKernel{}, &fakeDiag{socks: map[uint64]sockdiag.Socket{7: {State: events.FinWait2, Expires: 59 * time.Second}}}
	f := New(k, d)
	f.Observe(parked(1000 * ms))
	var out []events.Event
	// first check 10 ms after the note: still waiting
	if err := f.Poll(1010*ms, collect(&out)); err != nil || len(out) != 0 {
		t.Fatalf("%v %v", out, err)
	}
	if next := f.Next(); next != 1020*ms {
		t.Errorf("next check at %d ms, want 1020 (back-off starts at 10 ms)", next/ms)
	}
	d.socks[7] = sockdiag.Socket{State: events.TimeWait, Expires: 60 * time.Second}
	if err := f.Poll(1020*ms, collect(&out)); err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 || out[0].Old != events.FinWait2 || out[0].New != events.TimeWait ||
		out[0].Dwell != time.Duration(1020*ms-995*ms) || k.promoted != 1 {
		t.Fatalf("got %+v, promoted %d", out, k.promoted)
	}
	late := *parked(1030 * ms)
	late.Kind, late.New, late.Resolved = events.Transition, events.TimeWait, true
	if f.Observe(&late) {
		t.Error("the kernel's late report of the same TIME_WAIT was shown twice")
	}
}

// A parked FIN_WAIT2 that vanishes long before its timer was killed; one
// that vanishes at its timer timed out.
func TestParkedEnds(t *testing.T) {
	for _, tc := range []struct {
		name    string
		expires time.Duration
		gone    uint64
		want    events.Cause
	}{
		{"timer", 2 * time.Second, 3010 * ms, events.CauseTimeout},
		{"killed", 50 * time.Second, 3010 * ms, events.CauseResetReceived},
	} {
		k, d := &fakeKernel{}, &fakeDiag{socks: map[uint64]sockdiag.Socket{7: {State: events.FinWait2, Expires: tc.expires}}}
		f := New(k, d)
		f.Observe(parked(1000 * ms))
		var out []events.Event
		f.Poll(1010*ms, collect(&out))
		delete(d.socks, 7)
		f.Poll(tc.gone, collect(&out))
		if len(out) != 1 || out[0].New != events.Close || out[0].Cause != tc.want {
			t.Errorf("%s: got %+v, want cause %s", tc.name, out, tc.want)
		}
	}
}

// A new connection on the tuple ended the TIME_WAIT in the kernel's view:
// it is shown and no longer followed.
func TestReuse(t *testing.T) {
	f := New(&fakeKernel{}, &fakeDiag{})
	tw := *parked(1000 * ms)
	tw.Kind, tw.New = events.Transition, events.TimeWait
	f.Observe(&tw)
	end := tw
	end.Old, end.New, end.Cause = events.TimeWait, events.Close, events.CauseReused
	if !f.Observe(&end) || f.Len() != 0 || f.Next() != 0 {
		t.Errorf("reuse: len %d next %d", f.Len(), f.Next())
	}
}
