package graph

import (
	"encoding/xml"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
)

func ev(sock uint64, pid uint32, comm string, l, r string, old, new events.State, at, dwell time.Duration) *events.Event {
	la, ra := netip.MustParseAddrPort(l), netip.MustParseAddrPort(r)
	e := &events.Event{Kind: events.Transition, Sock: sock, PID: pid, Family: 4, LAddr: la.Addr(), LPort: la.Port(),
		RAddr: ra.Addr(), RPort: ra.Port(), Old: old, New: new, Mono: uint64(at), Dwell: dwell, DwellKnown: dwell > 0}
	copy(e.Comm[:], comm)
	if new == events.Close {
		e.Cause = events.CauseClosed
	}
	return e
}

const us, ms = time.Microsecond, time.Millisecond

// one connection, both ends, as the kernel reports it (the client's first
// record before its port is chosen), a listener around it, and another
// connection to the same server
func connection() []*events.Event {
	const c, s, srv = "127.0.0.1:45888", "127.0.0.1:8080", "127.0.0.1:8080"
	return []*events.Event{
		ev(1, 20, "api-server", srv, "0.0.0.0:0", events.Close, events.Listen, 0, 0),
		ev(2, 10, "curl-ish", "127.0.0.1:0", s, events.Close, events.SynSent, 300*ms, 0),
		ev(2, 10, "curl-ish", c, s, events.SynSent, events.Established, 300*ms+57*us, 57*us),
		ev(3, 20, "api-server", s, c, events.Listen, events.SynRecv, 300*ms+60*us, 0),
		ev(3, 20, "api-server", s, c, events.SynRecv, events.Established, 300*ms+65*us, 5*us),
		ev(2, 10, "curl-ish", c, s, events.Established, events.FinWait1, 300*ms+180*us, 120*us),
		ev(3, 20, "api-server", s, c, events.Established, events.CloseWait, 300*ms+190*us, 120*us),
		ev(2, 10, "curl-ish", c, s, events.FinWait1, events.FinWait2, 343*ms, 43*ms),
		ev(3, 20, "api-server", s, c, events.CloseWait, events.LastAck, 601*ms, 300*ms),
		ev(2, 10, "curl-ish", c, s, events.FinWait2, events.TimeWait, 601*ms+50*us, 258*ms),
		ev(3, 20, "api-server", s, c, events.LastAck, events.Close, 601*ms+60*us, 60*us),
		ev(4, 11, "other", "127.0.0.1:45890", s, events.SynSent, events.Established, 700*ms, 50*us),
		ev(1, 20, "api-server", srv, "0.0.0.0:0", events.Listen, events.Close, 900*ms, 900*ms),
	}
}

// The DOT parses back into the edges seen, each with its count, and the
// median dwell where it is known.
func TestDOT(t *testing.T) {
	var m Machine
	for _, e := range connection() {
		m.Write(e)
	}
	var b strings.Builder
	if err := m.DOT(&b); err != nil {
		t.Fatal(err)
	}
	dot := b.String()
	if !strings.HasPrefix(dot, "digraph tcp {") || !strings.HasSuffix(dot, "}\n") {
		t.Fatalf("not a digraph:\n%s", dot)
	}
	edge := regexp.MustCompile(`^  "([A-Z_0-9]+)" -> "([A-Z_0-9]+)" \[label="(\d+)(\\n(?:after|median ~)[^"]+)?"\];$`)
	got := map[string]int{}
	medians := map[string]string{}
	for _, l := range strings.Split(dot, "\n") {
		if m := edge.FindStringSubmatch(l); m != nil {
			n, _ := strconv.Atoi(m[3])
			got[m[1]+"->"+m[2]] = n
			medians[m[1]+"->"+m[2]] = m[4]
		}
	}
	if len(got) != 12 || got["SYN_SENT->ESTABLISHED"] != 2 || got["LISTEN->SYN_RECV"] != 1 || got["LISTEN->CLOSE"] != 1 {
		t.Errorf("edges %v", got)
	}
	if medians["CLOSE_WAIT->LAST_ACK"] != `\nafter 300ms` || medians["SYN_SENT->ESTABLISHED"] != `\nmedian ~45us` || medians["CLOSE->SYN_SENT"] != "" {
		t.Errorf("medians %v", medians)
	}
}

// By the client's address, the ladder has both ends, the client first,
// every transition of each in time order, and neither the listener nor
// the other connection.
func TestLadder(t *testing.T) {
	for _, id := range []string{"127.0.0.1:45888", "2", "127.0.0.1:8080"} {
		sel, err := ParseSelector(id)
		if err != nil {
			t.Fatal(err)
		}
		l := NewLadder(sel)
		for _, e := range connection() {
			l.Write(e)
		}
		sides, err := l.Sides()
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if len(sides) != 2 || sides[0].Role != "client" || sides[0].Comm != "curl-ish" || len(sides[0].Evs) != 5 ||
			sides[1].Role != "server" || sides[1].PID != 20 || len(sides[1].Evs) != 5 {
			t.Fatalf("%s: sides %+v", id, sides)
		}
		var b strings.Builder
		Text(&b, sides)
		lines := strings.Split(strings.TrimSpace(b.String()), "\n")
		if len(lines) != 11 || !strings.Contains(lines[0], "client 127.0.0.1:45888 (curl-ish 10)") ||
			!strings.HasPrefix(lines[1], "+0us") || !strings.Contains(lines[3], "LISTEN -> SYN_RECV") ||
			!strings.Contains(lines[10], "LAST_ACK -> CLOSE (60us) closed") {
			t.Errorf("%s: ladder\n%s", id, b.String())
		}
		b.Reset()
		SVG(&b, sides)
		dec := xml.NewDecoder(strings.NewReader(b.String()))
		texts := 0
		for {
			tok, err := dec.Token()
			if err != nil {
				break
			}
			if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "text" {
				texts++
			}
		}
		if texts != 4+2*10 {
			t.Errorf("%s: %d text elements in the SVG, want %d", id, texts, 4+2*10)
		}
	}
	if _, err := ParseSelector("nope"); err == nil {
		t.Error("a bad --conn was taken")
	}
}
