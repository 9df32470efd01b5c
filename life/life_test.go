package life

import (
	"encoding/csv"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
)

var t0 = time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)

func ev(sock uint64, pid uint32, comm string, l, r string, old, new events.State, at, dwell time.Duration, cause events.Cause) *events.Event {
	la, ra := netip.MustParseAddrPort(l), netip.MustParseAddrPort(r)
	e := &events.Event{Kind: events.Transition, Sock: sock, PID: pid, Family: 4, LAddr: la.Addr(), LPort: la.Port(),
		RAddr: ra.Addr(), RPort: ra.Port(), Old: old, New: new, Mono: uint64(at), Time: t0.Add(at),
		Dwell: dwell, DwellKnown: dwell > 0, Cause: cause}
	copy(e.Comm[:], comm)
	return e
}

const us, ms = time.Microsecond, time.Millisecond

func run(t *testing.T, evs ...*events.Event) []Conn {
	t.Helper()
	var got []Conn
	tr := New(0, func(c *Conn) error { got = append(got, *c); return nil }, func() error { return nil })
	for _, e := range evs {
		if err := tr.Write(e); err != nil {
			t.Fatal(err)
		}
	}
	return got
}

// A client that closes first ends as it enters TIME_WAIT; its server ends
// at LAST_ACK -> CLOSE; the listener is no connection; the TIME_WAIT's
// own end adds nothing; a refused connect and a reset each end once.
func TestConnections(t *testing.T) {
	const c, s = "127.0.0.1:45888", "127.0.0.1:8080"
	// the kernel's counts on the ends: 100 bytes up, 1000 down, with the
	// client's SYN and both FINs
	clientEnd := ev(2, 10, "curl", c, s, events.FinWait2, events.TimeWait, 500*ms+50*us, 299*ms, 0)
	clientEnd.BytesAcked, clientEnd.BytesReceived, clientEnd.Retrans = 102, 1001, 3
	serverEnd := ev(3, 20, "api-server", s, c, events.LastAck, events.Close, 500*ms+60*us, 60*us, events.CauseClosed)
	serverEnd.BytesAcked, serverEnd.BytesReceived = 1001, 101
	got := run(t,
		ev(1, 20, "api-server", s, "0.0.0.0:0", events.Close, events.Listen, 0, 0, 0),
		ev(2, 10, "curl", "127.0.0.1:0", s, events.Close, events.SynSent, 100*ms, 0, 0),
		ev(2, 10, "curl", c, s, events.SynSent, events.Established, 100*ms+57*us, 57*us, 0),
		ev(3, 20, "api-server", s, c, events.Listen, events.SynRecv, 100*ms+60*us, 0, 0),
		ev(3, 20, "api-server", s, c, events.SynRecv, events.Established, 100*ms+65*us, 5*us, 0),
		ev(2, 10, "curl", c, s, events.Established, events.FinWait1, 200*ms, 100*ms, 0),
		ev(3, 20, "api-server", s, c, events.Established, events.CloseWait, 200*ms+10*us, 100*ms, 0),
		ev(2, 10, "curl", c, s, events.FinWait1, events.FinWait2, 201*ms, ms, 0),
		ev(3, 20, "api-server", s, c, events.CloseWait, events.LastAck, 500*ms, 300*ms, 0),
		clientEnd,
		serverEnd,
		ev(1, 20, "api-server", s, "0.0.0.0:0", events.Listen, events.Close, 900*ms, 900*ms, events.CauseClosed),
		ev(2, 10, "curl", c, s, events.TimeWait, events.Close, 60500*ms, 60*time.Second, events.CauseClosed),
		ev(4, 11, "nc", "127.0.0.1:0", "127.0.0.1:9", events.Close, events.SynSent, time.Second, 0, 0),
		ev(4, 11, "nc", "127.0.0.1:0", "127.0.0.1:9", events.SynSent, events.Close, time.Second+30*us, 30*us, events.CauseRefused),
		// opened before the trace: first seen established
		ev(5, 12, "db", "127.0.0.1:5432", "127.0.0.1:40000", events.Established, events.Close, 2*time.Second, 0, events.CauseResetReceived),
	)
	if len(got) != 4 {
		t.Fatalf("%d connections: %+v", len(got), got)
	}
	cl, sv, nc, db := got[0], got[1], got[2], got[3]
	if cl.Role != Client || cl.EndedBy != "time_wait" || cl.ClosedBy != Local || cl.Handshake != 57*us ||
		cl.Duration != 400*ms+50*us || !cl.Whole || cl.LPort != 45888 || cl.PID != 10 || cl.Comm != "curl" ||
		cl.Sent != 100 || cl.Received != 1000 || cl.Retrans != 3 {
		t.Errorf("client %+v", cl)
	}
	if sv.Role != Server || sv.EndedBy != "closed" || sv.ClosedBy != Remote || sv.Handshake != 5*us ||
		sv.Duration != 400*ms || !sv.Whole || sv.PID != 20 || sv.Sent != 1000 || sv.Received != 100 {
		t.Errorf("server %+v", sv)
	}
	if nc.Role != Client || nc.EndedBy != "refused" || nc.ClosedBy != NotSeen || nc.Handshake != 0 {
		t.Errorf("refused %+v", nc)
	}
	if db.Role != Unknown || db.Whole || db.EndedBy != "reset_received" {
		t.Errorf("reset %+v", db)
	}
}

// The formats: JSON with every key, CSV with a header parsed back.
func TestFormats(t *testing.T) {
	conns := run(t,
		ev(2, 10, "curl", "127.0.0.1:0", "127.0.0.1:80", events.Close, events.SynSent, 0, 0, 0),
		ev(2, 10, "curl", "127.0.0.1:45888", "127.0.0.1:80", events.SynSent, events.Established, 57*us, 57*us, 0),
		ev(2, 10, "curl", "127.0.0.1:45888", "127.0.0.1:80", events.Established, events.Close, ms, ms, events.CauseResetSent),
	)
	var b strings.Builder
	w := NewWriter(&b, JSON)
	w.Write(&conns[0])
	var j map[string]any
	if err := json.Unmarshal([]byte(b.String()), &j); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"sock": "2", "pid": 10.0, "comm": "curl", "role": "client", "lport": 45888.0,
		"rport": 80.0, "handshake_ms": 0.057, "ms": 1.0, "whole": true, "end": "reset_sent", "closed_first": "-"} {
		if j[k] != want {
			t.Errorf("%s = %v, want %v", k, j[k], want)
		}
	}
	b.Reset()
	w = NewWriter(&b, CSV)
	w.Write(&conns[0])
	w.Flush()
	recs, err := csv.NewReader(strings.NewReader(b.String())).ReadAll()
	if err != nil || len(recs) != 2 || recs[0][0] != "TIME" || recs[1][2] != "curl" || recs[1][11] != "0.057" || recs[1][13] != "reset_sent" {
		t.Errorf("csv %v %v", recs, err)
	}
}
