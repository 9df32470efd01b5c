package kerneltest

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// runGraph runs `tcptrace graph` with args over one real connection in a
// fresh namespace, stopping itself after its and its listener's 12
// transitions, and returns stdout.
func runGraph(t *testing.T, bin string, args ...string) string {
	t.Helper()
	ns := newNetns(t)
	cmd := exec.Command(bin, append([]string{"graph", "--netns", ns.path, "--count", "12"}, args...)...)
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
		t.Fatalf("tcptrace graph %v: %v, stderr: %s", args, err, stderr.String())
	}
	return stdout.String()
}

// `tcptrace graph`: the DOT holds the 12 transitions of one connection
// and its listener, once each; --conn by the server's address gives that
// connection's ladder, client and server side by side; --svg renders.
func TestGraphBinary(t *testing.T) {
	t.Parallel()
	requireBPF(t)
	bin := filepath.Join(t.TempDir(), "tcptrace")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/tcptrace/tcptrace/cmd/tcptrace").CombinedOutput(); err != nil {
		t.Fatalf("build: %v: %s", err, out)
	}
	dot := runGraph(t, bin)
	edge := regexp.MustCompile(`(?m)^  "([A-Z_0-9]+)" -> "([A-Z_0-9]+)" \[label="(\d+)`)
	edges := edge.FindAllStringSubmatch(dot, -1)
	if len(edges) != 12 {
		t.Fatalf("%d edges, want 12:\n%s", len(edges), dot)
	}
	for _, e := range edges {
		if e[3] != "1" {
			t.Errorf("%s -> %s counted %s", e[1], e[2], e[3])
		}
	}

	ladder := runGraph(t, bin, "--conn", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	lines := strings.Split(strings.TrimSpace(ladder), "\n")
	if len(lines) != 11 || !strings.Contains(lines[0], "client 127.0.0.1:") || !strings.Contains(lines[0], "server 127.0.0.1:"+strconv.Itoa(port)) ||
		!strings.Contains(lines[1], "CLOSE -> SYN_SENT") || !strings.Contains(lines[10], "-> CLOSE") {
		t.Errorf("ladder:\n%s", ladder)
	}

	if _, err := exec.LookPath("dot"); err != nil {
		if os.Getenv("TCPTRACE_REQUIRE_BPF") == "1" {
			t.Fatal("graphviz's dot is not installed (CI installs it)")
		}
		t.Skip("no graphviz: --svg not tested")
	}
	svg := filepath.Join(t.TempDir(), "tcp.svg")
	runGraph(t, bin, "--svg", svg)
	b, err := os.ReadFile(svg)
	if err != nil || !strings.Contains(string(b), "<svg") || !strings.Contains(string(b), "CLOSE_WAIT") {
		t.Errorf("svg: %v, %.200s", err, b)
	}
}
