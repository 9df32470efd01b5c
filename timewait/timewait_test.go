package timewait

import (
	"net/netip"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/sockdiag"
)

// fakeDiag answers from a table by cookie; absent means gone.
type fakeDiag struct {
	socks    map[uint64]sockdiag.Socket
	lookups  int
	batched  int // lookups through LookupMany
	dumps    int
	released []uint32
}

func (d *fakeDiag) Lookup(e *events.Event, pid uint32) (sockdiag.Socket, bool, error) {
	d.lookups++
	s, ok := d.socks[e.Sock]
	return s, ok, nil
}
func (d *fakeDiag) LookupMany(netns, pid uint32, n int, ev func(int) *events.Event, fn func(int, sockdiag.Socket, bool)) error {
	for i := range n {
		d.batched++
		s, ok := d.socks[ev(i).Sock]
		fn(i, s, ok)
	}
	return nil
}

func (d *fakeDiag) Release(ns uint32) { d.released = append(d.released, ns) }

func (d *fakeDiag) MiniSockets(netns, pid uint32, family uint8, fn func(sockdiag.MiniSocket)) error {
	d.dumps++
	for cookie, s := range d.socks {
		fn(sockdiag.MiniSocket{Cookie: cookie, Socket: s})
	}
	return nil
}

const ms = uint64(time.Millisecond)

var (
	client = netip.MustParseAddr("10.0.0.1")
	server = netip.MustParseAddr("10.0.0.2")
)

// parked is the client's dead FIN_WAIT2 of a connection 10.0.0.1:40000 ->
// 10.0.0.2:80, handed to a mini-socket at the given time.
func parked(at uint64) *events.Event {
	return &events.Event{
		Kind: events.Parked, Mono: at, Dwell: time.Duration(5 * ms), DwellKnown: true,
		Sock: 7, Netns: 99, PID: 42, Family: 4,
		LAddr: client, LPort: 40000, RAddr: server, RPort: 80,
		Old: events.FinWait2, New: events.Close,
	}
}

// serverClose is the server side's LAST_ACK -> CLOSE of that connection.
func serverClose(at uint64) *events.Event {
	return &events.Event{
		Kind: events.Transition, Mono: at, Sock: 8, Netns: 99, PID: 43, Family: 4,
		LAddr: server, LPort: 80, RAddr: client, RPort: 40000,
		Old: events.LastAck, New: events.Close, Cause: events.CauseClosed,
	}
}

func collect(out *[]events.Event) func(*events.Event) error {
	return func(e *events.Event) error { *out = append(*out, *e); return nil }
}

func observe(t *testing.T, f *Follower, e *events.Event, out *[]events.Event) bool {
	t.Helper()
	show, err := f.Observe(e, collect(out))
	if err != nil {
		t.Fatal(err)
	}
	return show
}

// The local peer's close resolves a parked FIN_WAIT2 at once, before the
// close itself is shown; then its TIME_WAIT is followed to the end.
func TestPeerCloseResolves(t *testing.T) {
	d := &fakeDiag{socks: map[uint64]sockdiag.Socket{}}
	f := New(d, Options{})
	var out []events.Event
	if observe(t, f, parked(1000*ms), &out) || len(out) != 0 {
		t.Fatalf("a parked note was shown: %+v", out)
	}
	if !observe(t, f, serverClose(1300*ms), &out) {
		t.Fatal("the server's close was not shown")
	}
	if len(out) != 1 || out[0].Old != events.FinWait2 || out[0].New != events.TimeWait || out[0].Mono != 1300*ms ||
		out[0].Dwell != time.Duration(305*ms) || out[0].PID != 42 || out[0].Sock != 7 {
		t.Fatalf("got %+v", out)
	}
	if f.Len() != 1 || f.Next() != alignUp(1300*ms+uint64(TimeWaitLen+expirySlack)) {
		t.Fatalf("follows %d, next check at %d", f.Len(), f.Next())
	}
	// at expiry the mini-socket is gone: TIME_WAIT -> CLOSE, closed
	out = nil
	now := f.Next()
	if err := f.Poll(now, collect(&out)); err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 || out[0].Old != events.TimeWait || out[0].New != events.Close || out[0].Cause != events.CauseClosed ||
		out[0].Dwell != time.Duration(now-1300*ms) || out[0].PID != 42 {
		t.Fatalf("got %+v", out)
	}
	// TIME_WAIT is checked by a dump of the namespace, not a lookup
	if f.Len() != 0 || len(d.released) != 1 || d.released[0] != 99 || d.lookups != 0 || d.dumps != 1 {
		t.Errorf("len %d, released %v, lookups %d, dumps %d", f.Len(), d.released, d.lookups, d.dumps)
	}
}

// A close that is not the orderly end of our peer resolves nothing.
func TestOtherClosesDoNotResolve(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*events.Event)
	}{
		{"other port", func(e *events.Event) { e.RPort = 40001 }},
		{"other netns", func(e *events.Event) { e.Netns = 100 }},
		{"same side", func(e *events.Event) { e.LAddr, e.RAddr, e.LPort, e.RPort = client, server, 40000, 80 }},
	} {
		f := New(&fakeDiag{}, Options{})
		var out []events.Event
		observe(t, f, parked(1000*ms), &out)
		c := serverClose(1300 * ms)
		tc.change(c)
		observe(t, f, c, &out)
		if len(out) != 0 || f.Len() != 1 || f.parked != 1 {
			t.Errorf("%s: got %+v, len %d", tc.name, out, f.Len())
		}
	}
}

// A local peer that takes a reset from our parked FIN_WAIT2 (it sent data
// after our close): ours sent it, and is gone, then: FIN_WAIT2 -> CLOSE
// reset_sent at the peer's time, where the kernel reports no mini-socket
// reset; one it did report (MiniReset) ends it first, and the peer's
// close then finds nothing.
func TestPeerResetEndsParked(t *testing.T) {
	for _, mini := range []bool{false, true} {
		f := New(&fakeDiag{}, Options{})
		var out []events.Event
		observe(t, f, parked(1000*ms), &out)
		if mini {
			r := parked(1299 * ms)
			r.Kind, r.Old, r.New, r.Cause, r.Sock, r.PID = events.MiniReset, events.FinWait2, events.Close, events.CauseResetSent, 0, 0
			observe(t, f, r, &out)
		}
		c := serverClose(1300 * ms)
		c.Old, c.Cause = events.CloseWait, events.CauseResetReceived
		observe(t, f, c, &out)
		at := 1300 * ms
		if mini {
			at = 1299 * ms
		}
		if len(out) != 1 || out[0].Old != events.FinWait2 || out[0].New != events.Close || out[0].Cause != events.CauseResetSent ||
			out[0].Mono != at || out[0].PID != 42 || f.Len() != 0 {
			t.Errorf("mini %v: got %+v, len %d", mini, out, f.Len())
		}
	}
}

// With NoPeerMatch, sock_diag sees the FIN, with a back-off from 10 ms.
func TestDiagResolves(t *testing.T) {
	d := &fakeDiag{socks: map[uint64]sockdiag.Socket{7: {State: events.FinWait2, Expires: 59 * time.Second}}}
	f := New(d, Options{NoPeerMatch: true})
	var out []events.Event
	observe(t, f, parked(1000*ms), &out)
	// first check 10 ms after the note: still waiting
	if err := f.Poll(1010*ms, collect(&out)); err != nil || len(out) != 0 {
		t.Fatalf("%v %v", out, err)
	}
	if next := f.Next(); next != 1020*ms {
		t.Errorf("next check at %d ms, want 1020 (back-off starts at 10 ms)", next/ms)
	}
	observe(t, f, serverClose(1015*ms), &out)
	if len(out) != 0 {
		t.Fatalf("resolved by the peer's close despite NoPeerMatch: %+v", out)
	}
	d.socks[7] = sockdiag.Socket{State: events.TimeWait, Expires: 60 * time.Second}
	if err := f.Poll(1020*ms, collect(&out)); err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 || out[0].Old != events.FinWait2 || out[0].New != events.TimeWait ||
		out[0].Dwell != time.Duration(1020*ms-995*ms) {
		t.Fatalf("got %+v", out)
	}
	if f.Len() != 1 || f.parked != 0 {
		t.Errorf("len %d, parked %d", f.Len(), f.parked)
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
		d := &fakeDiag{socks: map[uint64]sockdiag.Socket{7: {State: events.FinWait2, Expires: tc.expires}}}
		f := New(d, Options{})
		var out []events.Event
		observe(t, f, parked(1000*ms), &out)
		f.Poll(1010*ms, collect(&out))
		delete(d.socks, 7)
		f.Poll(tc.gone, collect(&out))
		if len(out) != 1 || out[0].New != events.Close || out[0].Cause != tc.want {
			t.Errorf("%s: got %+v, want cause %s", tc.name, out, tc.want)
		}
	}
}

// A new connection on a followed tuple ends its TIME_WAIT, shown before the
// new connection's transition; the connection's own later transitions and
// other tuples do not.
func TestReuse(t *testing.T) {
	f := New(&fakeDiag{}, Options{})
	var out []events.Event
	tw := *parked(1000 * ms)
	tw.Kind, tw.New = events.Transition, events.TimeWait
	if !observe(t, f, &tw, &out) || f.Len() != 1 {
		t.Fatalf("TIME_WAIT shown %v, len %d", out, f.Len())
	}
	next := *parked(2000 * ms)
	next.Kind, next.Sock, next.Old, next.New = events.Transition, 9, events.SynSent, events.Established
	other := next
	other.LPort = 40001
	observe(t, f, &other, &out)
	if len(out) != 0 || f.Len() != 1 {
		t.Fatalf("another tuple ended it: %+v", out)
	}
	if !observe(t, f, &next, &out) {
		t.Fatal("the new connection's transition was not shown")
	}
	if len(out) != 1 || out[0].Old != events.TimeWait || out[0].New != events.Close || out[0].Cause != events.CauseReused ||
		out[0].Sock != 7 || out[0].Mono != 2000*ms || out[0].Dwell != time.Second {
		t.Fatalf("got %+v", out)
	}
	if f.Len() != 0 || f.Next() != 0 {
		t.Errorf("reuse: len %d next %d", f.Len(), f.Next())
	}
}

// A new connection on a tuple whose TIME_WAIT is past its timer: the
// timer wheel ended it and the port search took the port again before the
// follower's check. That is an expiry, not a reuse.
func TestTakenAfterExpiry(t *testing.T) {
	f := New(&fakeDiag{}, Options{})
	var out []events.Event
	tw := *parked(1000 * ms)
	tw.Kind, tw.New = events.Transition, events.TimeWait
	observe(t, f, &tw, &out)
	at := 1000*ms + uint64(TimeWaitLen) + 5*ms
	next := *parked(at)
	next.Kind, next.Sock, next.Old, next.New = events.Transition, 9, events.SynSent, events.Established
	observe(t, f, &next, &out)
	if len(out) != 1 || out[0].Old != events.TimeWait || out[0].Cause != events.CauseClosed || out[0].Mono != at {
		t.Fatalf("got %+v, want TIME_WAIT -> CLOSE closed at %d", out, at)
	}
}

// Hints feed the follower but are not shown; what it makes is emitted
// whatever the record that revealed it (the caller filters it).
func TestHints(t *testing.T) {
	f := New(&fakeDiag{}, Options{})
	var out []events.Event
	p := parked(1000 * ms)
	p.BytesAcked, p.BytesReceived = 101, 7
	observe(t, f, p, &out)
	hint := serverClose(1300 * ms)
	hint.Kind = events.Hint
	if observe(t, f, hint, &out) {
		t.Error("a hint was shown")
	}
	// what the connection carried goes with it, and the peer's FIN the
	// mini-socket took counts as the kernel counts one the socket took
	if len(out) != 1 || out[0].New != events.TimeWait || out[0].BytesAcked != 101 || out[0].BytesReceived != 8 {
		t.Fatalf("got %+v", out)
	}
	out = nil
	f.Poll(f.Next(), collect(&out))
	if len(out) != 1 || out[0].Old != events.TimeWait || out[0].New != events.Close || f.Len() != 0 {
		t.Errorf("got %+v, len %d", out, f.Len())
	}
}

// Max bounds TIME_WAIT and parked entries separately. A TIME_WAIT over the
// limit is shown but not followed; a parked FIN_WAIT2 over it is shown as
// the kernel reported it.
func TestMax(t *testing.T) {
	f := New(&fakeDiag{}, Options{Max: 1})
	var out []events.Event
	a := parked(1000 * ms)
	observe(t, f, a, &out)
	observe(t, f, serverClose(1001*ms), &out) // a is in TIME_WAIT now
	b := parked(1002 * ms)
	b.Sock, b.LPort = 10, 40002
	observe(t, f, b, &out) // b parks: a different limit
	if f.Len() != 2 || f.Untracked != 0 {
		t.Fatalf("len %d untracked %d", f.Len(), f.Untracked)
	}
	c := parked(1003 * ms)
	c.Sock, c.LPort = 11, 40003
	out = nil
	observe(t, f, c, &out)
	if len(out) != 1 || out[0].Sock != 11 || out[0].New != events.Close || out[0].Cause != events.CauseClosed || f.Untracked != 1 {
		t.Fatalf("parked over the limit: %+v, untracked %d", out, f.Untracked)
	}
	out = nil
	bc := serverClose(1004 * ms)
	bc.RPort = 40002
	observe(t, f, bc, &out) // b's TIME_WAIT: shown, not followed
	if len(out) != 1 || out[0].Sock != 10 || out[0].New != events.TimeWait || f.Untracked != 2 || f.Len() != 1 || f.parked != 0 {
		t.Fatalf("TIME_WAIT over the limit: %+v, untracked %d, len %d", out, f.Untracked, f.Len())
	}
}

// The TIME_WAIT connections due in one tick are checked with one dump per
// namespace and family: those still listed are checked again once their
// timer says, the rest end. A dual-stack socket's mini-socket is listed
// under IPv6.
func TestTimeWaitsCheckedTogether(t *testing.T) {
	d := &fakeDiag{socks: map[uint64]sockdiag.Socket{}}
	f := New(d, Options{})
	var out []events.Event
	for i := range 10 {
		e := parked(1000 * ms)
		e.Kind, e.New, e.Sock, e.LPort = events.Transition, events.TimeWait, uint64(100+i), uint16(41000+i)
		e.V4Mapped = i == 9
		observe(t, f, e, &out)
	}
	// three still there: the timer wheel is late by 2 s
	for _, s := range []uint64{100, 101, 109} {
		d.socks[s] = sockdiag.Socket{State: events.TimeWait, Expires: 0}
	}
	now := f.Next()
	if now != alignUp(1000*ms+uint64(TimeWaitLen+expirySlack)) {
		t.Fatalf("first check at %d", now)
	}
	out = nil
	if err := f.Poll(now, collect(&out)); err != nil {
		t.Fatal(err)
	}
	if len(out) != 7 || d.dumps != 2 || d.lookups != 0 {
		t.Fatalf("%d ends, %d dumps, %d lookups: want 7 ends from 2 dumps (IPv4, IPv6)", len(out), d.dumps, d.lookups)
	}
	for _, e := range out {
		if e.Old != events.TimeWait || e.New != events.Close || e.Cause != events.CauseClosed || e.Sock == 100 || e.Sock == 101 || e.Sock == 109 {
			t.Errorf("ended %+v", e)
		}
	}
	if f.Len() != 3 || f.Next() != now+uint64(Tick) {
		t.Errorf("follows %d, next check at %d: want 3, at the next tick %d", f.Len(), f.Next(), now+uint64(Tick))
	}
}

// A parked FIN_WAIT2 whose peer is on loopback waits for the peer's close
// in the stream: it is first asked about after a second, not 10 ms.
func TestLoopbackPeerNotAskedSoon(t *testing.T) {
	d := &fakeDiag{socks: map[uint64]sockdiag.Socket{7: {State: events.FinWait2, Expires: 59 * time.Second}}}
	f := New(d, Options{})
	var out []events.Event
	e := parked(1000 * ms)
	e.LAddr, e.RAddr = netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	observe(t, f, e, &out)
	if f.Next() != 1000*ms+uint64(loopbackCheck) {
		t.Errorf("first check at %d, want %d", f.Next(), 1000*ms+uint64(loopbackCheck))
	}
}

// A few TIME_WAITs due out of many are looked up one by one (in a batch);
// when most are due, one dump of the namespace answers for all.
func TestLookupsOrDump(t *testing.T) {
	d := &fakeDiag{socks: map[uint64]sockdiag.Socket{}}
	f := New(d, Options{})
	var out []events.Event
	const n = 100
	for i := range uint64(n) {
		e := &events.Event{
			Kind: events.Transition, Mono: 1000*ms + i*1000*ms, Sock: 100 + i, Netns: 99, PID: 42, Family: 4,
			LAddr: client, LPort: uint16(40000 + i), RAddr: server, RPort: 80,
			Old: events.FinWait2, New: events.TimeWait,
		}
		observe(t, f, e, &out)
	}
	// the first is due alone: its mini-socket is gone
	if err := f.Poll(f.Next(), collect(&out)); err != nil {
		t.Fatal(err)
	}
	if d.batched != 1 || d.dumps != 0 || f.Len() != n-1 {
		t.Fatalf("one due of %d: %d looked up, %d dumps, %d followed", n, d.batched, d.dumps, f.Len())
	}
	// all the rest at once
	if err := f.Poll(f.Next()+uint64(2*time.Minute), collect(&out)); err != nil {
		t.Fatal(err)
	}
	if d.batched != 1 || d.dumps != 1 || f.Len() != 0 {
		t.Fatalf("all due: %d looked up, %d dumps, %d followed", d.batched, d.dumps, f.Len())
	}
	ends := 0
	for _, e := range out {
		if e.Old == events.TimeWait && e.New == events.Close && e.Cause == events.CauseClosed {
			ends++
		}
	}
	if ends != n {
		t.Errorf("%d TIME_WAIT ends reported, want %d", ends, n)
	}
}
