package kerneltest

import (
	"encoding/json"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
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
	bin := filepath.Join(t.TempDir(), "tcptrace")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/tcptrace/tcptrace/cmd/tcptrace").CombinedOutput(); err != nil {
		t.Fatalf("build: %v: %s", err, out)
	}
	ns := newNetns(t)
	cmd := exec.Command(bin, "life", "--json", "--netns", ns.path, "--count", "12")
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start: %v", err)
	}
	defer cmd.Process.Kill()
	srv := ns.start(t, serverComm, "wait-eof", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 0)
	cli := ns.start(t, clientComm, "close-first", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 0)
	waitAttached(t, cmd.Process.Pid, &stderr)
	c := &conn{srv: srv, cli: cli}
	c.run()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("tcptrace life: %v, stderr: %s", err, stderr.String())
	}
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
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 records, got %d:\n%s", len(lines), stdout.String())
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
	if !strings.Contains(stderr.String(), "tcptrace: 2 connections, 12 events, 0 lost") {
		t.Errorf("exit line: %q", stderr.String())
	}
}
