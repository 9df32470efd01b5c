package aggregate

import (
	"net/netip"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
)

var (
	lo     = netip.MustParseAddr("127.0.0.1")
	remote = netip.MustParseAddr("10.1.2.3")
	t0     = time.Unix(1000, 0)
)

// step is one transition of a socket, with its dwell in the old state.
type step struct {
	old, new events.State
	at       time.Duration // since the start
	dwell    time.Duration // < 0: not known
	cause    events.Cause
}

func feed(t *testing.T, a *Aggregate, sock uint64, pid uint32, comm string, lport uint16, raddr netip.Addr, steps ...step) {
	t.Helper()
	for _, s := range steps {
		e := &events.Event{Kind: events.Transition, Sock: sock, PID: pid, Family: 4, LAddr: lo, RAddr: raddr,
			LPort: lport, RPort: 80, Old: s.old, New: s.new, Cause: s.cause, Mono: uint64(s.at),
			Dwell: s.dwell, DwellKnown: s.dwell >= 0}
		copy(e.Comm[:], comm)
		if err := a.Write(e); err != nil {
			t.Fatal(err)
		}
	}
}

const us, ms = time.Microsecond, time.Millisecond

// A client connection that closes first and the server side of it: each
// cell of the matrix once, both closes orderly, every histogram where its
// dwell belongs, no socket left in any state.
func TestLifecycle(t *testing.T) {
	a := New(0, t0)
	feed(t, a, 1, 10, "curl", 40000, remote,
		step{events.Close, events.SynSent, 0, -1, 0},
		step{events.SynSent, events.Established, 50 * us, 50 * us, 0},
		step{events.Established, events.FinWait1, 200 * ms, 200 * ms, 0},
		step{events.FinWait1, events.FinWait2, 201 * ms, ms, 0},
		step{events.FinWait2, events.TimeWait, 501 * ms, 300 * ms, 0},
		step{events.TimeWait, events.Close, 60501 * ms, 60 * time.Second, events.CauseClosed},
	)
	feed(t, a, 2, 20, "nginx", 80, remote,
		step{events.Listen, events.SynRecv, 10 * us, -1, 0},
		step{events.SynRecv, events.Established, 40 * us, 30 * us, 0},
		step{events.Established, events.CloseWait, 201 * ms, 200 * ms, 0},
		step{events.CloseWait, events.LastAck, 501 * ms, 300 * ms, 0},
		step{events.LastAck, events.Close, 502 * ms, ms, events.CauseClosed},
	)
	iv := a.Take(t0.Add(time.Minute))
	if iv.Events != 11 || iv.Closes[events.CauseClosed] != 2 {
		t.Errorf("events %d, orderly closes %d", iv.Events, iv.Closes[events.CauseClosed])
	}
	cells := 0
	for o := range States {
		for n := range States {
			if c := iv.Matrix[o][n]; c > 1 {
				t.Errorf("%v -> %v counted %d times", events.State(o), events.State(n), c)
			} else if c == 1 {
				cells++
			}
		}
	}
	if cells != 11 || iv.Matrix[events.CloseWait][events.LastAck] != 1 {
		t.Errorf("%d cells counted", cells)
	}
	for st, n := range a.Sockets() {
		if n != 0 {
			t.Errorf("%d sockets left in %v", n, events.State(st))
		}
	}
	want := map[int]time.Duration{ClientHandshake: 50 * us, ServerHandshake: 30 * us, CloseWait: 300 * ms,
		FinWait2: 300 * ms, TimeWait: 60 * time.Second}
	for h, d := range want {
		got := iv.Histograms[h]
		if got.Count != 1 || got.Sum != d || got.Buckets[Bucket(d)] != 1 {
			t.Errorf("%s: count %d sum %v, bucket %d has %d", HistogramNames[h], got.Count, got.Sum, Bucket(d), got.Buckets[Bucket(d)])
		}
	}
	// lifetimes: the client from ESTABLISHED (50 us) to TIME_WAIT
	// (501 ms), the server from 40 us to CLOSE (502 ms)
	if l := iv.Histograms[Lifetime]; l.Count != 2 || l.Sum != (501*ms-50*us)+(502*ms-40*us) {
		t.Errorf("lifetime: count %d sum %v", l.Count, l.Sum)
	}
	// the client's connect, TIME_WAIT; the server's new connection and
	// CLOSE_WAIT, the server's on its listening port
	if c := iv.Processes[Process{10, "curl"}]; c == nil || *c != (Counts{New: 1, TimeWaits: 1}) {
		t.Errorf("curl: %+v", c)
	}
	if c := iv.Processes[Process{20, "nginx"}]; c == nil || *c != (Counts{New: 1, CloseWait: 1}) {
		t.Errorf("nginx: %+v", c)
	}
	if c := iv.Peers[remote]; c == nil || *c != (Counts{New: 2, TimeWaits: 1, CloseWait: 1}) {
		t.Errorf("peer: %+v", c)
	}
	if len(iv.Ports) != 1 || iv.Ports[80] == nil || *iv.Ports[80] != (Counts{New: 1}) {
		t.Errorf("ports: %v", iv.Ports)
	}
	// the next interval starts empty; the sockets per state carry on
	if next := a.Take(t0.Add(2 * time.Minute)); next.Events != 0 || len(next.Processes) != 0 || !next.Start.Equal(t0.Add(time.Minute)) {
		t.Errorf("next interval: %+v", next)
	}
}

// Each bucket holds [2^k, 2^(k+1)) us; the first everything under 2 us,
// the last everything from 2^39 us on.
func TestBucketEdges(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want int
	}{
		{0, 0}, {-time.Second, 0}, {1999 * time.Nanosecond, 0}, {2 * us, 1}, {3999 * time.Nanosecond, 1},
		{4 * us, 2}, {1023 * us, 9}, {1024 * us, 10}, {time.Duration(1<<39) * us, 39}, {time.Duration(1<<62) * time.Nanosecond, 39},
	} {
		if got := Bucket(tc.d); got != tc.want {
			t.Errorf("Bucket(%v) = %d, want %d", tc.d, got, tc.want)
		}
		if k := Bucket(tc.d); tc.d >= 0 && k < Buckets-1 && (tc.d < BucketStart(k) || tc.d >= BucketStart(k+1)) && k > 0 {
			t.Errorf("%v outside bucket %d's [%v, %v)", tc.d, k, BucketStart(k), BucketStart(k+1))
		}
	}
	var h Histogram
	for range 90 {
		h.Add(100 * us) // bucket 6: 64-128 us
	}
	for range 10 {
		h.Add(10 * ms) // bucket 13
	}
	if p50, p99 := h.Quantile(0.5), h.Quantile(0.99); p50 < 64*us || p50 >= 128*us || p99 < 8192*us || p99 >= 16384*us {
		t.Errorf("p50 %v, p99 %v", p50, p99)
	}
}

// A full top table drops new keys, counts what it dropped, and keeps
// counting the keys it has; the other counts miss nothing.
func TestMaxKeys(t *testing.T) {
	a := New(2, t0)
	for pid := uint32(1); pid <= 3; pid++ {
		feed(t, a, uint64(pid), pid, "c", 40000, netip.AddrFrom4([4]byte{10, 0, 0, byte(pid)}),
			step{events.Close, events.SynSent, 0, -1, 0})
	}
	feed(t, a, 9, 1, "c", 40001, netip.AddrFrom4([4]byte{10, 0, 0, 1}), step{events.Close, events.SynSent, 0, -1, 0})
	iv := a.Take(t0)
	if len(iv.Processes) != 2 || len(iv.Peers) != 2 || iv.Dropped != 1 || iv.Matrix[events.Close][events.SynSent] != 4 {
		t.Errorf("processes %d peers %d dropped %d connects %d", len(iv.Processes), len(iv.Peers), iv.Dropped, iv.Matrix[events.Close][events.SynSent])
	}
	if c := iv.Processes[Process{1, "c"}]; c == nil || c.New != 2 {
		t.Errorf("pid 1: %+v", c)
	}
}

// Counting allocates nothing once the keys are known.
func TestWriteDoesNotAllocate(t *testing.T) {
	a := New(0, t0)
	e := &events.Event{Kind: events.Transition, Sock: 1, PID: 1, Family: 4, LAddr: lo, RAddr: remote,
		Old: events.Close, New: events.SynSent}
	a.Write(e)
	if n := testing.AllocsPerRun(100, func() { a.Write(e) }); n != 0 {
		t.Errorf("%v allocations per event", n)
	}
}
