package kerneltest

import (
	"encoding/json"
	"strings"
	"testing"
)

// `tcptrace life --json` as a user runs it: one connection in a test
// namespace gives exactly two records, the client's (TIME_WAIT, closed
// first) and the server's (closed, by the peer first), each with its
// process, and no data either way: the SYN and FINs the kernel counts in
// its byte counters are not data.
func TestLifeBinary(t *testing.T) {
	t.Parallel()
	requireBPF(t)
	stdout, stderr, srv, cli := overOneConnection(t, "life", "--json", "--count", "12")
	type record struct {
		PID         uint32
		Comm        string
		Role        string
		LPort       uint16
		RPort       uint16
		TxBytes     uint64   `json:"tx_bytes"`
		RxBytes     uint64   `json:"rx_bytes"`
		HandshakeMs *float64 `json:"handshake_ms"`
		Whole       bool
		End         string
		ClosedFirst string `json:"closed_first"`
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 records, got %d:\n%s", len(lines), stdout)
	}
	got := map[string]record{}
	for _, l := range lines {
		var r record
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("bad JSON %q: %v", l, err)
		}
		got[r.Role] = r
	}
	cl, sv := got["client"], got["server"]
	if cl.PID != uint32(cli.pid) || cl.Comm != clientComm || cl.End != "time_wait" || cl.ClosedFirst != "local" ||
		cl.RPort != port || cl.TxBytes != 0 || cl.RxBytes != 0 || cl.HandshakeMs == nil || !cl.Whole {
		t.Errorf("client record %+v", cl)
	}
	if sv.PID != uint32(srv.pid) || sv.Comm != serverComm || sv.End != "closed" || sv.ClosedFirst != "remote" ||
		sv.LPort != port || sv.RPort != cl.LPort || sv.TxBytes != 0 || sv.RxBytes != 0 || sv.HandshakeMs == nil || !sv.Whole {
		t.Errorf("server record %+v", sv)
	}
	if !strings.Contains(stderr, "tcptrace: 2 connections, 12 events, 0 lost") {
		t.Errorf("exit line: %q", stderr)
	}
}
