package kerneltest

import (
	"encoding/json"
	"strings"
	"testing"
)

// `tcptrace stats --json` as a user runs it: one connection in a test
// namespace, the command stopping itself after the connection's and its
// listener's 12 transitions; the interval it prints on exit holds each of
// those transitions once, both orderly closes, the server's process in
// the top table and its port with one new connection.
func TestStatsBinary(t *testing.T) {
	t.Parallel()
	requireBPF(t)
	stdout, _, srv, _ := overOneConnection(t, "stats", "--json", "--count", "12", "--interval", "1h")
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 1 {
		t.Fatalf("want one interval, got %d lines:\n%s", len(lines), stdout)
	}
	var iv struct {
		Events      uint64
		Lost        uint64
		Transitions []struct {
			Old, New string
			Count    uint64
		}
		Closes map[string]uint64
		Top    struct {
			Processes []struct {
				PID        uint32
				Comm       string
				New        uint64
				CloseWaits uint64 `json:"close_waits"`
			}
			Ports []struct {
				Port uint16
				New  uint64
			}
		}
	}
	if err := json.Unmarshal([]byte(lines[0]), &iv); err != nil {
		t.Fatalf("bad JSON %q: %v", lines[0], err)
	}
	want := map[string]bool{}
	for _, tr := range append(append([]string{"CLOSE->LISTEN", "LISTEN->CLOSE"}, clientClosesFirst...), "LISTEN->SYN_RECV",
		"SYN_RECV->ESTABLISHED", "ESTABLISHED->CLOSE_WAIT", "CLOSE_WAIT->LAST_ACK", "LAST_ACK->CLOSE") {
		want[tr] = true
	}
	got := map[string]bool{}
	for _, tr := range iv.Transitions {
		key := tr.Old + "->" + tr.New
		got[key] = true
		if !want[key] || tr.Count != 1 {
			t.Errorf("%s counted %d", key, tr.Count)
		}
	}
	for tr := range want {
		if !got[tr] {
			t.Errorf("%s missing", tr)
		}
	}
	if iv.Events != 12 || iv.Lost != 0 || iv.Closes["closed"] != 2 {
		t.Errorf("events %d, lost %d, closes %v", iv.Events, iv.Lost, iv.Closes)
	}
	found := false
	for _, p := range iv.Top.Processes {
		if p.PID == uint32(srv.pid) {
			found = p.Comm == serverComm && p.New == 1 && p.CloseWaits == 1
		}
	}
	if !found || len(iv.Top.Ports) != 1 || iv.Top.Ports[0].Port != port || iv.Top.Ports[0].New != 1 {
		t.Errorf("top: %+v", iv.Top)
	}
}
