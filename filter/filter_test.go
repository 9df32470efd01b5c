package filter

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/tcptrace/tcptrace/events"
)

func event() *events.Event {
	e := &events.Event{Family: 4, Netns: 7, PID: 42, LPort: 8080, RPort: 50000, Old: events.Established, New: events.CloseWait,
		LAddr: netip.MustParseAddr("127.0.0.1"), RAddr: netip.MustParseAddr("127.0.0.1")}
	copy(e.Comm[:], "nginx")
	return e
}

// Each field drops what it does not name, and only that; the zero
// filter keeps everything.
func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    Filter
		keep bool
	}{
		{"zero", Filter{}, true},
		{"family", Filter{Family: 4}, true},
		{"other family", Filter{Family: 6}, false},
		{"netns", Filter{Netns: 7}, true},
		{"other netns", Filter{Netns: 8}, false},
		{"old state", Filter{States: []events.State{events.Established}}, true},
		{"new state", Filter{States: []events.State{events.TimeWait, events.CloseWait}}, true},
		{"other state", Filter{States: []events.State{events.TimeWait}}, false},
		{"pid", Filter{PIDs: []uint32{1, 42}}, true},
		{"other pid", Filter{PIDs: []uint32{43}}, false},
		{"comm", Filter{Comm: "nginx"}, true},
		{"comm prefix", Filter{Comm: "ngin"}, false},
		{"lport", Filter{LPorts: []uint16{80, 8080}}, true},
		{"other lport", Filter{LPorts: []uint16{80}}, false},
		{"rport", Filter{RPorts: []uint16{50000}}, true},
		{"other rport", Filter{RPorts: []uint16{8080}}, false},
		{"port, local side", Filter{Ports: []uint16{8080}}, true},
		{"port, remote side", Filter{Ports: []uint16{1, 50000}}, true},
		{"other port", Filter{Ports: []uint16{80}}, false},
		{"all of them", Filter{Family: 4, Netns: 7, PIDs: []uint32{42}, Comm: "nginx", LPorts: []uint16{8080}}, true},
		{"all but one", Filter{Family: 4, Netns: 7, PIDs: []uint32{42}, Comm: "nginx", LPorts: []uint16{80}}, false},
	} {
		if got := tc.f.Match(event()); got != tc.keep {
			t.Errorf("%s: Match = %v, want %v", tc.name, got, tc.keep)
		}
		if got := tc.f.All(); got != (tc.name == "zero") {
			t.Errorf("%s: All = %v", tc.name, got)
		}
	}
}

// The kernel gets what holds for a whole socket, nothing else.
func TestKernel(t *testing.T) {
	f := Filter{Family: 6, Netns: 9, States: []events.State{events.Listen}, PIDs: []uint32{1}, Comm: "x",
		LPorts: []uint16{1}, RPorts: []uint16{2, 3}}
	k := f.Kernel()
	if k.Family != 6 || k.Netns != 9 || len(k.LPorts) != 1 || len(k.RPorts) != 2 {
		t.Errorf("kernel part %+v", k)
	}
}

func TestCheck(t *testing.T) {
	many := make([]uint16, MaxValues+1)
	for _, tc := range []struct {
		f    Filter
		want string
	}{
		{Filter{Family: 5}, "want 4 or 6"},
		{Filter{Comm: strings.Repeat("x", events.CommLen)}, "at most 15 bytes"},
		{Filter{LPorts: many}, "at most 64 values"},
	} {
		if err := tc.f.Check(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.f, err, tc.want)
		}
	}
	if err := (&Filter{Family: 4, Comm: "nginx"}).Check(); err != nil {
		t.Error(err)
	}
}
