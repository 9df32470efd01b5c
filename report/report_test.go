package report

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/aggregate"
	"github.com/tcptrace/tcptrace/events"
)

func interval(t *testing.T) (*aggregate.Aggregate, aggregate.Interval) {
	a := aggregate.New(0, time.Unix(0, 0))
	for i, s := range []struct{ old, new events.State }{{events.Close, events.SynSent}, {events.SynSent, events.Established}} {
		e := &events.Event{Kind: events.Transition, Sock: 1, PID: 42, Family: 4, Old: s.old, New: s.new,
			RAddr: netip.MustParseAddr("10.0.0.2"), Dwell: 100 * time.Microsecond, DwellKnown: i == 1}
		copy(e.Comm[:], "curl")
		a.Write(e)
	}
	return a, a.Take(time.Unix(5, 0))
}

// The JSON object parses back with the documented keys and values.
func TestJSON(t *testing.T) {
	a, iv := interval(t)
	var b strings.Builder
	sockets := a.Sockets()
	if err := WriteJSON(&b, &iv, &sockets, Extra{Lost: 3}, 10); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Start, End  time.Time
		Events      uint64
		Lost        uint64
		Transitions []struct {
			Old, New string
			Count    uint64
		}
		Sockets    map[string]int64
		Histograms map[string]struct {
			Count   uint64
			Buckets []struct {
				FromUs uint64 `json:"from_us"`
				ToUs   uint64 `json:"to_us"`
				Count  uint64
			}
		}
		Top struct {
			Processes []struct {
				PID  uint32
				Comm string
				New  uint64
			}
			Peers []struct {
				Addr string
				New  uint64
			}
		}
	}
	if err := json.Unmarshal([]byte(b.String()), &got); err != nil {
		t.Fatal(err)
	}
	if got.Events != 2 || got.Lost != 3 || len(got.Transitions) != 2 || got.Transitions[0].Old != "SYN_SENT" && got.Transitions[0].Old != "CLOSE" ||
		got.Sockets["ESTABLISHED"] != 1 || got.End.Sub(got.Start) != 5*time.Second {
		t.Errorf("parsed %+v", got)
	}
	h := got.Histograms["client_handshake"]
	if h.Count != 1 || len(h.Buckets) != 1 || h.Buckets[0].FromUs != 64 || h.Buckets[0].ToUs != 128 {
		t.Errorf("client_handshake %+v", h)
	}
	if len(got.Top.Processes) != 1 || got.Top.Processes[0].PID != 42 || got.Top.Processes[0].Comm != "curl" || got.Top.Processes[0].New != 1 ||
		len(got.Top.Peers) != 1 || got.Top.Peers[0].Addr != "10.0.0.2" {
		t.Errorf("top %+v", got.Top)
	}
	for _, k := range aggregate.HistogramNames {
		if _, ok := got.Histograms[k]; !ok {
			t.Errorf("histogram %s missing", k)
		}
	}
}

// The text shows each transition, the histogram's bucket and the top row.
func TestText(t *testing.T) {
	a, iv := interval(t)
	var b strings.Builder
	sockets := a.Sockets()
	if err := WriteText(&b, &iv, &sockets, Extra{}, 10); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"CLOSE        -> SYN_SENT", "SYN_SENT     -> ESTABLISHED", "client handshake: 1",
		"64µs - 128µs", "42 curl", "sockets now:  ESTABLISHED 1"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, b.String())
		}
	}
}
