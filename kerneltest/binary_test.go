package kerneltest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/loader"
)

// The built binary attaches where tracefs is not mounted, as on a fresh
// machine: it runs in a mount namespace where tracefs and debugfs are
// unmounted, and must report the traffic of a test namespace as JSON.
func TestBinaryWithoutTracefs(t *testing.T) {
	t.Parallel()
	requireBPF(t)
	bin := tcptraceBinary(t)
	ns := newNetns(t)
	script := `umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug 2>/dev/null
if grep -qE ' (tracefs|debugfs) ' /proc/self/mounts; then echo "tracefs still mounted" >&2; exit 99; fi
exec "$0" "$@"`
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script,
		bin, "--json", "--netns", ns.path, "--count", "3", "--state", "LISTEN")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start: %v", err)
	}
	defer cmd.Process.Kill()

	srv := ns.start(t, serverComm, "wait-eof", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 0)
	cli := ns.start(t, clientComm, "close-first", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 0)
	waitAttached(t, cmd.Process.Pid, &stderr)
	c := &conn{srv: srv, cli: cli}
	c.run()

	sc := bufio.NewScanner(stdout)
	var lines []map[string]any
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("bad JSON line %q: %v", sc.Text(), err)
		}
		lines = append(lines, m)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("tcptrace: %v, stderr: %s", err, stderr.String())
	}
	if len(lines) != 3 {
		t.Fatalf("want 3 lines, got %d: %v", len(lines), lines)
	}
	// the server's child socket starts in LISTEN too
	for i, want := range [][2]string{{"CLOSE", "LISTEN"}, {"LISTEN", "SYN_RECV"}, {"LISTEN", "CLOSE"}} {
		if lines[i]["old"] != want[0] || lines[i]["new"] != want[1] || lines[i]["pid"] != float64(srv.pid) || lines[i]["comm"] != serverComm {
			t.Errorf("line %d: %v, want %s->%s by %d %s", i, lines[i], want[0], want[1], srv.pid, serverComm)
		}
	}
	// a warning for each feature this kernel lacks, then the summary
	want := strings.Join(append(featureWarnings(t), "tcptrace: 3 events, 0 lost"), "\n")
	if got := strings.TrimSpace(stderr.String()); got != want {
		t.Errorf("stderr %q, want %q", got, want)
	}
}

// built is the tcptrace binary the tests run, built once.
var built struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// tcptraceBinary builds cmd/tcptrace once for the package's tests, with
// tcptrace-agent next to it, or takes them from $TT_BIN_DIR.
func tcptraceBinary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		if dir := env("BIN_DIR"); dir != "" {
			// built on the host by make test-kernels: compiling in
			// an emulated guest takes minutes
			built.path = filepath.Join(dir, "tcptrace")
			_, built.err = os.Stat(built.path)
			return
		}
		if built.dir, built.err = os.MkdirTemp("", "tcptrace-bin-"); built.err != nil {
			return
		}
		built.path = filepath.Join(built.dir, "tcptrace")
		if out, err := exec.Command("go", "build", "-o", built.path, "github.com/tcptrace/tcptrace/cmd/tcptrace").CombinedOutput(); err != nil {
			built.err = fmt.Errorf("build: %v: %s", err, out)
			return
		}
		// tcptrace agent runs this one, next to it
		if out, err := exec.Command("go", "build", "-o", filepath.Join(built.dir, "tcptrace-agent"),
			"github.com/tcptrace/tcptrace/cmd/tcptrace-agent").CombinedOutput(); err != nil {
			built.err = fmt.Errorf("build the agent: %v: %s", err, out)
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.path
}

// removeBinary runs after the tests.
func removeBinary() {
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
}

// overOneConnection runs the binary with args (after --netns) while one
// connection (the client closes first, the server waits for its EOF) and
// its listener go through a fresh namespace, and waits for it to exit:
// args should stop it, with --count or --duration. It returns stdout,
// stderr and the two processes.
func overOneConnection(t *testing.T, args ...string) (stdout, stderr string, srv, cli *proc) {
	t.Helper()
	ns := newNetns(t)
	cmd := exec.Command(tcptraceBinary(t), append([]string{args[0], "--netns", ns.path}, args[1:]...)...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatalf("start: %v", err)
	}
	defer cmd.Process.Kill()
	srv = ns.start(t, serverComm, "wait-eof", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 0)
	cli = ns.start(t, clientComm, "close-first", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 0)
	waitAttached(t, cmd.Process.Pid, &errOut)
	c := &conn{srv: srv, cli: cli}
	c.run()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("tcptrace %v: %v, stderr: %s", args, err, errOut.String())
	}
	return out.String(), errOut.String(), srv, cli
}

// waitAttached waits until the process holds all its BPF links.
func waitAttached(t *testing.T, pid int, stderr *strings.Builder) {
	t.Helper()
	want, err := loader.ExpectedLinks()
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(patience); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if loader.LinksHeld(pid) == want {
			return
		}
		// one that failed to load has exited: say why now, not in 10 s
		if exited(pid) {
			t.Fatalf("tcptrace exited before it attached; stderr: %s", stderr.String())
		}
	}
	t.Fatalf("tcptrace did not attach within %v; stderr: %s", patience, stderr.String())
}

// exited tells whether process pid has ended (gone, or a zombie not yet
// waited for).
func exited(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	// pid (comm) state ...: comm may hold spaces and parentheses
	i := strings.LastIndexByte(string(stat), ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z'
}

// featureWarnings are the lines tcptrace says at start on this kernel: one
// per optional feature it lacks (loader.Features).
func featureWarnings(t *testing.T) []string {
	t.Helper()
	fs, err := loader.Features()
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, f := range fs {
		if !f.Has {
			lines = append(lines, "tcptrace: warning: "+f.Warning())
		}
	}
	return lines
}

// withoutFeatureWarnings is s less the feature warnings of this kernel.
func withoutFeatureWarnings(t *testing.T, s string) string {
	for _, w := range featureWarnings(t) {
		s = strings.ReplaceAll(s, w+"\n", "")
	}
	return s
}
