package storm

import (
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/netconf"
	"github.com/tcptrace/tcptrace/sockdiag"
)

var (
	client = netip.MustParseAddr("10.0.0.5")
	server = netip.MustParseAddr("10.0.0.9")
	t0     = time.Date(2026, 11, 27, 14, 0, 0, 0, time.UTC)
)

func ev(old, new events.State, sock uint64, laddr netip.Addr, lport uint16, raddr netip.Addr, rport uint16) *events.Event {
	e := &events.Event{Kind: events.Transition, Old: old, New: new, Sock: sock, Netns: 1, LAddr: laddr, LPort: lport, RAddr: raddr, RPort: rport, PID: 4242, Cgroup: 7}
	copy(e.Comm[:], "curl")
	return e
}

func tw(laddr netip.Addr, lport uint16, raddr netip.Addr, rport uint16, left time.Duration) sockdiag.Detail {
	return sockdiag.Detail{State: events.TimeWait, LAddr: laddr, LPort: lport, RAddr: raddr, RPort: rport, Expires: left}
}

func snapshot(t *Tracker, at time.Time, socks ...sockdiag.Detail) *Snapshot {
	s := NewSnapshot(at, 1, netconf.Settings{PortLow: 40000, PortHigh: 40099, MaxTWBuckets: 1000},
		netconf.Counters{"TCPTimeWaitOverflow": 0}, t)
	s.TWSize = 256
	// the kernel dumps listeners first
	for _, d := range socks {
		if d.State == events.Listen {
			s.Add(&d)
		}
	}
	for _, d := range socks {
		if d.State != events.Listen {
			s.Add(&d)
		}
	}
	return s
}

func unit(id uint64) string { return "backup.service" }

// A client that closes first toward one destination: its TIME_WAITs,
// owner, rate, port-range use, failed connects and handshake time, with
// the verdicts they call for.
func TestClientStorm(t *testing.T) {
	tr := NewTracker(0)
	r := NewReporter(tr, unit, 0, t0)
	var socks []sockdiag.Detail
	for i := range 90 {
		port := uint16(40000 + i)
		hs := ev(events.SynSent, events.Established, uint64(i+1), client, port, server, 80)
		hs.Dwell, hs.DwellKnown = 2*time.Millisecond, true
		tr.Write(hs)
		// a storm of 30 a second, the first 3 s of a 10 s interval
		e := ev(events.FinWait2, events.TimeWait, uint64(i+1), client, port, server, 80)
		e.Time = t0.Add(time.Duration(i) * time.Second / 30)
		tr.Write(e)
		socks = append(socks, tw(client, port, server, 80, 50*time.Second))
	}
	fail := ev(events.SynSent, events.Close, 100, client, 0, server, 80)
	fail.Cause = events.CauseNoPort
	tr.Write(fail)
	live := sockdiag.Detail{State: events.Established, LAddr: client, LPort: 40095, RAddr: server, RPort: 80}
	rep := r.Build(snapshot(tr, t0.Add(10*time.Second), append(socks, live)...))

	if rep.TimeWaitTotal != 90 || len(rep.Destinations) != 1 {
		t.Fatalf("total %d, destinations %+v", rep.TimeWaitTotal, rep.Destinations)
	}
	d := rep.Destinations[0]
	if d.ActiveCloser != "client" || d.TimeWait != 90 || d.Live != 1 || d.Created != 90 || math.Abs(d.CreatedPerS-30) > 1e-6 || d.Expected != 1800 ||
		*d.PortRangeUsedPct != 91 || d.ConnectFailures != 1 || d.HandshakeMs != 2 {
		t.Errorf("destination %+v (pct %v)", d, *d.PortRangeUsedPct)
	}
	if len(d.Owners) != 1 || d.Owners[0] != (OwnerCount{PID: 4242, Comm: "curl", Unit: "backup.service", Count: 90, ConnectFailures: 1}) {
		t.Errorf("owners %+v", d.Owners)
	}
	want := []string{
		"connect() to 10.0.0.9:80 failed once for lack of a free local port",
		"client 10.0.0.5 (pid 4242 curl, backup.service) opens 30 conn/s to 10.0.0.9:80 and closes first: 90 TIME_WAIT now (91% of the port range), this rate would keep 1800, which with the 1 live connections is more than the 100 usable ports",
		"connects to 10.0.0.9:80 spend 2.0 ms in SYN_SENT on average with 91% of the port range taken",
	}
	checkVerdicts(t, rep.Verdicts, want...)

	// the next report's rate is of its own interval: none made, and
	// the verdict does not speak of a rate
	rep = r.Build(snapshot(tr, t0.Add(20*time.Second), socks...))
	if d := rep.Destinations[0]; d.CreatedPerS != 0 || d.Created != 90 {
		t.Errorf("second interval: %+v", d)
	}
	checkVerdicts(t, rep.Verdicts, "connect() to 10.0.0.9:80 failed once",
		"client 10.0.0.5 (pid 4242 curl, backup.service) closed first 90 connections to 10.0.0.9:80, none since the last report: 90 TIME_WAIT still hold 90% of the port range, the last for 50 s more",
		"connects to 10.0.0.9:80 spend 2.0 ms in SYN_SENT")
}

func checkVerdicts(t *testing.T, got []Verdict, want ...string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%d verdicts, want %d: %+v", len(got), len(want), got)
	}
	for _, w := range want {
		found := false
		for _, v := range got {
			found = found || strings.Contains(v.Text, w)
		}
		if !found {
			t.Errorf("no verdict with %q in %+v", w, got)
		}
	}
}

// A server that closes first: its TIME_WAITs grouped by its port, the
// harmless verdict while it listens; once it no longer does, the
// restart verdict with the time its port clears; an overflow.
func TestServerStorm(t *testing.T) {
	tr := NewTracker(0)
	r := NewReporter(tr, unit, 0, t0)
	tr.Write(ev(events.Close, events.Listen, 1, server, 8080, netip.IPv4Unspecified(), 0))
	var socks []sockdiag.Detail
	for i := range 150 {
		port := uint16(50000 + i)
		tr.Write(ev(events.Listen, events.SynRecv, uint64(i+10), server, 8080, client, port))
		e := ev(events.FinWait2, events.TimeWait, uint64(i+10), server, 8080, client, port)
		e.Time = t0.Add(time.Duration(i) * 100 * time.Millisecond)
		tr.Write(e)
		socks = append(socks, tw(server, 8080, client, port, time.Duration(i)*100*time.Millisecond))
	}
	listener := sockdiag.Detail{State: events.Listen, LAddr: server, LPort: 8080}
	rep := r.Build(snapshot(tr, t0.Add(15*time.Second), append(socks, listener)...))
	if len(rep.Destinations) != 1 || rep.Destinations[0].ActiveCloser != "server" || rep.Destinations[0].LPort != 8080 ||
		rep.Destinations[0].Created != 150 || rep.Destinations[0].PortRangeUsedPct != nil {
		t.Fatalf("destinations %+v", rep.Destinations)
	}
	sp := rep.ServerPorts
	if len(sp) != 1 || sp[0].Port != 8080 || !sp[0].Listening || sp[0].TimeWait != 150 || sp[0].CreatedPerS != 10 || sp[0].MemoryBytes != 150*256 {
		t.Fatalf("server ports %+v", sp)
	}
	checkVerdicts(t, rep.Verdicts, "server port 8080 closes first: 150 TIME_WAIT accumulate here (10/s), harmless for the port range, 38 KiB of kernel memory")

	snap := snapshot(tr, t0.Add(20*time.Second), socks...)
	snap.Counters["TCPTimeWaitOverflow"] = 50
	rep = r.Build(snap)
	clears := t0.Add(20*time.Second + 15*time.Second).Local().Format("15:04:05")
	checkVerdicts(t, rep.Verdicts,
		"tcp_max_tw_buckets (1000) reached: new TIME_WAIT sockets are being dropped (TCPTimeWaitOverflow +10/s)",
		"port 8080 is held by 150 TIME_WAIT sockets of the previous server: a listener restarting without SO_REUSEADDR cannot bind until "+clears)
}

// Groups past the bound are counted, not kept.
func TestMaxGroups(t *testing.T) {
	tr := NewTracker(2)
	for i := range 5 {
		tr.Write(ev(events.FinWait2, events.TimeWait, uint64(i), client, 40000, server, uint16(80+i)))
	}
	if len(tr.groups) != 2 || tr.Dropped != 3 {
		t.Errorf("%d groups, %d dropped", len(tr.groups), tr.Dropped)
	}
}

// A group with nothing in the dump and nothing new since the last report
// is forgotten; one still in the dump stays.
func TestForget(t *testing.T) {
	tr := NewTracker(0)
	r := NewReporter(tr, unit, 0, t0)
	tr.Write(ev(events.FinWait2, events.TimeWait, 1, client, 40000, server, 80))
	tr.Write(ev(events.FinWait2, events.TimeWait, 2, client, 40001, server, 443))
	r.Build(snapshot(tr, t0.Add(time.Second), tw(client, 40000, server, 80, time.Minute)))
	if len(tr.groups) != 2 {
		t.Fatalf("after the first report: %d groups", len(tr.groups))
	}
	r.Build(snapshot(tr, t0.Add(2*time.Second), tw(client, 40000, server, 80, time.Minute)))
	if len(tr.groups) != 1 || tr.groups[Group{Netns: 1, LAddr: client, RAddr: server, RPort: 80}] == nil {
		t.Errorf("after the second: %v", tr.groups)
	}
}

// A TIME_WAIT on a port out of the ephemeral range toward one in it is a
// server's, in the dump and in the transitions alike, once the range is
// known; with none known, only a port seen listening says so.
func TestServerRule(t *testing.T) {
	tr := NewTracker(0)
	if tr.server(1, 8080, 40000, nil) {
		t.Error("no range known: a server")
	}
	tr.SetRange(40000, 40099)
	if !tr.server(1, 8080, 40000, nil) || tr.server(1, 40000, 8080, nil) || !tr.server(1, 40000, 8080, map[uint16]bool{40000: true}) {
		t.Error("the range rule")
	}
	tr.OnlyNetns(2)
	tr.Write(ev(events.FinWait2, events.TimeWait, 1, client, 40000, server, 80))
	if len(tr.groups) != 0 {
		t.Error("another namespace counted")
	}
}
