package netconf

import (
	"strings"
	"testing"
)

func TestReservedIn(t *testing.T) {
	for _, tc := range []struct {
		list   string
		lo, hi int
		want   int
	}{
		{"", 1024, 65535, 0},
		{"8080", 1024, 65535, 1},
		{"8080,40000-40009", 40000, 40004, 5},
		{"1-100,200", 50, 60, 11},
		{"70000", 1024, 65535, 0},
	} {
		if got := reservedIn(tc.list, tc.lo, tc.hi); got != tc.want {
			t.Errorf("reservedIn(%q, %d, %d) = %d, want %d", tc.list, tc.lo, tc.hi, got, tc.want)
		}
	}
	s := Settings{PortLow: 40000, PortHigh: 40001}
	if s.UsablePorts() != 2 || !s.InRange(40001) || s.InRange(8080) {
		t.Errorf("usable %d", s.UsablePorts())
	}
}

func TestParseNetstat(t *testing.T) {
	in := "TcpExt: SyncookiesSent TW TWRecycled TCPTimeWaitOverflow\nTcpExt: 0 12 3 7\nIpExt: InNoRoutes\nIpExt: 1\n"
	c, err := parseNetstat(strings.NewReader(in), "TcpExt:")
	if err != nil {
		t.Fatal(err)
	}
	if c["TW"] != 12 || c["TWRecycled"] != 3 || c["TCPTimeWaitOverflow"] != 7 {
		t.Errorf("got %v", c)
	}
	if _, err := parseNetstat(strings.NewReader("IpExt: A\nIpExt: 1\n"), "TcpExt:"); err == nil {
		t.Error("no TcpExt line: no error")
	}
}

// This machine's own namespace reads without error, with a sane range.
func TestReadSelf(t *testing.T) {
	s, c, err := Read(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if s.PortLow <= 0 || s.PortHigh < s.PortLow || s.UsablePorts() <= 0 {
		t.Errorf("settings %+v", s)
	}
	if _, ok := c["TW"]; !ok {
		t.Errorf("no TW counter in %v", c)
	}
}
