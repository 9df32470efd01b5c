package stuck

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/netconf"
	"github.com/tcptrace/tcptrace/sockdiag"
)

var (
	local  = netip.MustParseAddr("10.0.0.9")
	remote = netip.MustParseAddr("10.0.0.5")
	t0     = time.Date(2026, 11, 27, 14, 0, 0, 0, time.UTC)
)

func ev(old, new events.State, sock uint64, at time.Time, pid uint32, comm string) *events.Event {
	e := &events.Event{Kind: events.Transition, Old: old, New: new, Sock: sock, Netns: 1, LAddr: local, LPort: 8080, RAddr: remote, RPort: 50000, PID: pid, Time: at}
	copy(e.Comm[:], comm)
	return e
}

func det(sock uint64, st events.State, recvQ uint32) sockdiag.Detail {
	return sockdiag.Detail{Cookie: sock, State: st, LAddr: local, LPort: 8080, RAddr: remote, RPort: 50000, RecvQ: recvQ}
}

// A leak seen entering CLOSE_WAIT and one found by the seed dump, past
// and under the threshold; the summary per process; a failed connect; a
// full accept queue; what left its state.
func TestReport(t *testing.T) {
	tr := NewTracker()
	holders := []events.Holder{{Sock: 1, PID: 100, Start: 1}, {Sock: 1, PID: 200, Start: 2}}
	copy(holders[0].Comm[:], "master")
	copy(holders[1].Comm[:], "worker")
	tr.Seed(holders, []sockdiag.Detail{det(1, events.CloseWait, 1)}, 0, t0)
	tr.Write(ev(events.Established, events.CloseWait, 2, t0.Add(time.Second), 300, "app"))
	tr.Write(ev(events.Established, events.CloseWait, 3, t0.Add(50*time.Second), 300, "app"))
	tr.Write(ev(events.Established, events.CloseWait, 4, t0.Add(2*time.Second), 300, "app"))
	tr.Write(ev(events.CloseWait, events.LastAck, 4, t0.Add(3*time.Second), 300, "app"))
	refused := ev(events.SynSent, events.Close, 5, t0, 300, "app")
	refused.Cause = events.CauseRefused
	tr.Write(refused)

	r := NewReporter(tr, nil, 30*time.Second, t0)
	full := sockdiag.Detail{Cookie: 9, State: events.Listen, LAddr: local, LPort: 8080, RecvQ: 129, SendQ: 128}
	rep := r.Build(&Snapshot{Time: t0.Add(60 * time.Second), Netns: 1, Counters: netconf.Counters{"ListenOverflows": 7},
		Sockets: []sockdiag.Detail{det(1, events.CloseWait, 1), det(2, events.CloseWait, 11), det(3, events.CloseWait, 1), full}})
	if len(rep.Sockets) != 2 {
		t.Fatalf("sockets %+v", rep.Sockets)
	}
	if s := rep.Sockets[0]; s.PID != 200 || s.Comm != "worker" || s.AgeKnown || s.Age != 60 || s.Unread != 0 {
		t.Errorf("seeded %+v", s)
	}
	if s := rep.Sockets[1]; s.PID != 300 || !s.AgeKnown || s.Age != 59 || s.RecvQ != 11 || s.Unread != 10 {
		t.Errorf("seen %+v", s)
	}
	if len(rep.ByProcess) != 2 || len(rep.HandshakeFailures) != 1 || rep.HandshakeFailures[0].Causes["refused"] != 1 ||
		rep.HandshakeFailures[0].RAddr != "10.0.0.5" || len(rep.Listeners) != 1 || !rep.Listeners[0].Full {
		t.Errorf("by process %+v, failures %+v, listeners %+v", rep.ByProcess, rep.HandshakeFailures, rep.Listeners)
	}
	for _, want := range []string{"pid 300 app holds 1 connection in CLOSE_WAIT, the oldest for 59s", "pid 200 worker holds 1 connection in CLOSE_WAIT, the oldest for ≥ 1m0s",
		"listener 10.0.0.9:8080 (owner not known) has a full accept queue (129 queued, backlog 128)"} {
		found := false
		for _, v := range rep.Verdicts {
			found = found || strings.Contains(v, want)
		}
		if !found {
			t.Errorf("no verdict with %q in %q", want, rep.Verdicts)
		}
	}
	// gone from the dump: forgotten
	rep = r.Build(&Snapshot{Time: t0.Add(61 * time.Second), Netns: 1})
	if len(rep.Sockets) != 0 || len(tr.socks) != 0 {
		t.Errorf("after: %+v, %d followed", rep.Sockets, len(tr.socks))
	}
}

// The agent's tracker follows CLOSE_WAIT alone.
func TestTrackerOf(t *testing.T) {
	tr := NewTrackerOf(events.CloseWait)
	tr.Write(ev(events.Close, events.SynSent, 1, t0, 1, "a"))
	tr.Write(ev(events.Established, events.CloseWait, 2, t0, 1, "a"))
	if len(tr.socks) != 1 || tr.socks[2] == nil {
		t.Errorf("followed %v", tr.socks)
	}
}

// Where records name sockets by address (Linux 5.10), a dump is joined
// with them by connection: a CLOSE_WAIT leak seen entering it, a client
// stuck in SYN_SENT whose record had no local port yet, and a listener
// keep their owners and ages.
func TestReportByAddress(t *testing.T) {
	const base = uint64(0x1ffff) << 47
	tr := NewTracker()
	listen := ev(events.Close, events.Listen, base|1, t0, 100, "server")
	listen.RAddr, listen.RPort = netip.IPv4Unspecified(), 0
	tr.Write(listen)
	tr.Write(ev(events.Established, events.CloseWait, base|2, t0.Add(time.Second), 100, "server"))
	dial := ev(events.Close, events.SynSent, base|3, t0.Add(2*time.Second), 300, "client")
	dial.LPort, dial.RPort = 0, 9
	tr.Write(dial)

	leak := det(77, events.CloseWait, 1)
	syn := sockdiag.Detail{Cookie: 78, State: events.SynSent, LAddr: local, LPort: 41000, RAddr: remote, RPort: 9}
	listener := sockdiag.Detail{Cookie: 79, State: events.Listen, LAddr: local, LPort: 8080, RAddr: netip.IPv4Unspecified(),
		RecvQ: 2, SendQ: 1}
	r := NewReporter(tr, nil, 30*time.Second, t0)
	rep := r.Build(&Snapshot{Time: t0.Add(60 * time.Second), Netns: 1, Sockets: []sockdiag.Detail{leak, syn, listener}})
	if len(rep.Sockets) != 2 {
		t.Fatalf("sockets %+v", rep.Sockets)
	}
	if s := rep.Sockets[0]; s.PID != 100 || !s.AgeKnown || s.Age != 59 || s.State != "CLOSE_WAIT" {
		t.Errorf("leak %+v", s)
	}
	if s := rep.Sockets[1]; s.PID != 300 || !s.AgeKnown || s.Age != 58 || s.State != "SYN_SENT" {
		t.Errorf("client %+v", s)
	}
	if len(rep.Listeners) != 1 || rep.Listeners[0].PID != 100 {
		t.Errorf("listeners %+v", rep.Listeners)
	}
	if len(tr.socks) != 2 {
		t.Errorf("%d sockets followed, want 2 (none twice)", len(tr.socks))
	}
}

// A leak older than tcptrace: the seed dump finds it 5 s into a run; its
// tcp_info says it took its peer's FIN 40 s ago. It is reported with the
// default threshold, at least 40 s old, first: before an older orphaned
// FIN_WAIT2, which goes in its own section.
func TestReportOlderLeak(t *testing.T) {
	tr := NewTracker()
	holders := []events.Holder{{Sock: 1, PID: 100, Start: 1}}
	copy(holders[0].Comm[:], "python3")
	leak := det(1, events.CloseWait, 4)
	leak.HasInfo, leak.LastAck = true, 40*time.Second
	orphan := det(2, events.FinWait2, 0) // a mini-socket: no tcp_info
	orphan.RPort = 50001
	tr.Seed(holders, []sockdiag.Detail{leak, orphan}, 1, t0)
	r := NewReporter(tr, nil, DefaultThreshold, t0)
	leak.LastAck = 45 * time.Second
	rep := r.Build(&Snapshot{Time: t0.Add(5 * time.Second), Netns: 1, Sockets: []sockdiag.Detail{leak, orphan}})
	if len(rep.Sockets) != 1 {
		t.Fatalf("sockets %+v, want the leak alone (the orphan is 5 s old)", rep.Sockets)
	}
	if s := rep.Sockets[0]; s.PID != 100 || s.Comm != "python3" || s.AgeKnown || s.Age != 45 || s.Unread != 3 || s.Orphan {
		t.Errorf("leak %+v", s)
	}
	rep = r.Build(&Snapshot{Time: t0.Add(100 * time.Second), Netns: 1, Sockets: []sockdiag.Detail{leak, orphan}})
	if len(rep.Sockets) != 2 || rep.Sockets[0].State != "CLOSE_WAIT" || rep.Sockets[0].Age != 100 || !rep.Sockets[1].Orphan {
		t.Fatalf("sockets %+v, want the leak, then the orphan", rep.Sockets)
	}
	var b strings.Builder
	if err := WriteText(&b, rep, 10); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	i, j := strings.Index(out, "python3"), strings.Index(out, "orphaned FIN_WAIT2")
	if i < 0 || j < i || !strings.Contains(out, "≥ 1m40s") || !strings.Contains(out, "the oldest for ≥ 1m40s") {
		t.Errorf("text:\n%s", out)
	}
}
