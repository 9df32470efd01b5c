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

// `tcptrace graph`: the DOT holds the 12 transitions of one connection
// and its listener, once each; --conn by the server's address gives that
// connection's ladder, client and server side by side; --svg renders.
func TestGraphBinary(t *testing.T) {
	t.Parallel()
	requireBPF(t)
	dot, _, _, _ := overOneConnection(t, "graph", "--count", "12")
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

	ladder, _, _, _ := overOneConnection(t, "graph", "--count", "12", "--conn", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
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
	overOneConnection(t, "graph", "--count", "12", "--svg", svg)
	b, err := os.ReadFile(svg)
	if err != nil || !strings.Contains(string(b), "<svg") || !strings.Contains(string(b), "CLOSE_WAIT") {
		t.Errorf("svg: %v, %.200s", err, b)
	}
}
