package kerneltest

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// tmux runs a tmux command on the test's own server (socket).
type tmux struct {
	t      *testing.T
	socket string
}

func (x tmux) run(args ...string) (string, error) {
	out, err := exec.Command("tmux", append([]string{"-L", x.socket}, args...)...).CombinedOutput()
	return string(out), err
}

// screen waits until the pane shows what cond wants, and returns it.
func (x tmux) screen(what string, cond func(string) bool) string {
	x.t.Helper()
	var last string
	for deadline := time.Now().Add(patience); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		out, err := x.run("capture-pane", "-p", "-t", "top")
		if err != nil {
			x.t.Fatalf("capture-pane: %v: %s", err, out)
		}
		if last = out; cond(out) {
			return out
		}
	}
	x.t.Fatalf("the screen never showed %s; last:\n%s", what, last)
	return ""
}

// startTop runs `tcptrace top` on ns in a real terminal (tmux, 120x40),
// redrawn every 300 ms, with args, and waits until it is attached.
func startTop(t *testing.T, ns *netns, args ...string) tmux {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		if os.Getenv("TCPTRACE_REQUIRE_BPF") == "1" {
			t.Fatal("tmux is not installed (CI installs it)")
		}
		t.Skip("no tmux")
	}
	bin := tcptraceBinary(t)
	x := tmux{t, fmt.Sprintf("tcptrace-test-%d-%s", os.Getpid(), t.Name())}
	t.Cleanup(func() { x.run("kill-server"); os.Remove("/tmp/" + x.socket + ".err") })
	if out, err := x.run("new-session", "-d", "-x", "120", "-y", "40", "-s", "top",
		"exec "+bin+" top --netns "+ns.path+" --interval 300ms "+strings.Join(args, " ")+" 2>/tmp/"+x.socket+".err"); err != nil {
		t.Fatalf("tmux: %v: %s", err, out)
	}
	pidOut, err := x.run("display", "-p", "-t", "top", "#{pane_pid}")
	if err != nil {
		t.Fatalf("pane pid: %v", err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(pidOut))
	var stderr strings.Builder
	waitAttached(t, pid, &stderr)
	return x
}

// holding says whether screen s has the row of pid comm with n
// CLOSE_WAITs held (the last column).
func holding(s string, pid uint32, comm string, n int) bool {
	for _, l := range strings.Split(s, "\n") {
		f := strings.Fields(l)
		if len(f) >= 7 && f[0] == strconv.Itoa(int(pid)) && f[1] == comm && f[len(f)-1] == strconv.Itoa(n) {
			return true
		}
	}
	return false
}

// `tcptrace top` in a real terminal (tmux, 120x40): it shows the rates,
// the sockets per state and the server process holding a CLOSE_WAIT while
// it does; s changes the sort; q quits and gives the terminal back.
func TestTopInTmux(t *testing.T) {
	t.Parallel()
	requireBPF(t)
	if _, err := exec.LookPath("tmux"); err != nil {
		if os.Getenv("TCPTRACE_REQUIRE_BPF") == "1" {
			t.Fatal("tmux is not installed (CI installs it)")
		}
		t.Skip("no tmux")
	}
	ns := newNetns(t)
	x := startTop(t, ns)
	x.screen("the first interval", func(s string) bool { return strings.Contains(s, "transitions/s") })

	// the server holds its CLOSE_WAIT for 3 s after the client closed
	c := newConn(t, ns, "127.0.0.1", "hold", "close-first", 3*time.Second)
	c.srv.goAhead()
	c.srv.expect("listening")
	c.cli.goAhead()
	c.cli.expect("done")
	c.cli.wait()
	held := x.screen("the server holding a CLOSE_WAIT", func(s string) bool {
		return holding(s, c.srv.pid, serverComm, 1) && strings.Contains(s, "CLOSE_WAIT 1")
	})
	if !strings.Contains(held, "tcptrace top") || !strings.Contains(held, "PROCESS") || !strings.Contains(held, "PEER") {
		t.Errorf("screen:\n%s", held)
	}
	x.run("send-keys", "-t", "top", "s")
	x.screen("the sort by CLOSE_WAIT held", func(s string) bool { return strings.Contains(s, "sort (by CLOSE_WAIT held)") })
	c.srv.expect("done")
	c.srv.wait()

	x.run("send-keys", "-t", "top", "q")
	for deadline := time.Now().Add(patience); ; time.Sleep(100 * time.Millisecond) {
		if _, err := x.run("has-session", "-t", "top"); err != nil {
			break // tcptrace exited, and the session with it
		}
		if time.Now().After(deadline) {
			out, _ := x.run("capture-pane", "-p", "-t", "top")
			t.Fatalf("q did not quit:\n%s", out)
		}
	}
	if b, _ := os.ReadFile("/tmp/" + x.socket + ".err"); !strings.Contains(string(b), "events, 0 lost") {
		t.Errorf("exit line: %q", b)
	}
}
