package kerneltest

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/storm"
	"github.com/tcptrace/tcptrace/stuck"
)

// binaryRun is a tcptrace process a test started.
type binaryRun struct {
	cmd         *exec.Cmd
	out, errOut strings.Builder
}

// startBinary runs tcptrace with args and waits until it is attached.
func startBinary(t *testing.T, args ...string) *binaryRun {
	t.Helper()
	r := &binaryRun{cmd: exec.Command(tcptraceBinary(t), args...)}
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.errOut
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() { r.cmd.Process.Kill() })
	waitAttached(t, r.cmd.Process.Pid, &r.errOut)
	return r
}

// stop ends it as Ctrl-C does, once the test has made what it reports,
// and returns its stdout: its last report covers everything until then,
// however slow the machine (a fixed --duration ends too soon under
// emulation).
func (r *binaryRun) stop(t *testing.T) string {
	t.Helper()
	if err := r.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatalf("interrupt tcptrace: %v", err)
	}
	return r.wait(t)
}

// wait waits for it to end by itself and returns its stdout.
func (r *binaryRun) wait(t *testing.T) string {
	t.Helper()
	if err := r.cmd.Wait(); err != nil {
		t.Fatalf("tcptrace %v: %v, stderr: %s", r.cmd.Args[1:], err, r.errOut.String())
	}
	return r.out.String()
}

// stormPort is the listener of the storms: outside any port range the
// tests set, so that it takes none of the clients' ports.
const stormPort = port

// startStorm starts a tt-storm process in ns: connections to its own
// listener on 127.0.0.1:8080, closed first by the client, or serverFirst
// by the server.
func startStorm(t *testing.T, ns *netns, serverFirst bool) *proc {
	t.Helper()
	mode := "client-first"
	if serverFirst {
		mode = "server-first"
	}
	p := ns.start(t, stormComm, mode, serverAddr(), 0)
	p.expect("listening")
	return p
}

// storm has p make n connections and waits until every side is closed.
func (p *proc) storm(n int) {
	p.t.Helper()
	if _, err := fmt.Fprintf(p.stdin, "go %d\n", n); err != nil {
		p.t.Fatalf("%s: %v", p.role, err)
	}
	p.expect(fmt.Sprintf("done %d", n))
}

// stormUntil has p make connections until ns holds n TIME_WAIT sockets
// on the side given ("dport" for the client's, "sport" for the
// server's), and returns how many it made. Every connection enters
// TIME_WAIT, but even with tcp_tw_reuse=0, for about one in a thousand
// the kernel ends a live TIME_WAIT early for a new connection with the
// same addresses and ports (a client's connect() that takes that port
// again; a client's new SYN to a server's TIME_WAIT): tcptrace shows it
// "reused", and the dump no longer has it. So the counts are checked
// against the dump, and the connections made.
func stormUntil(t *testing.T, ns *netns, p *proc, side string, n int) int {
	t.Helper()
	made := 0
	start := time.Now()
	for held := 0; held < n; held = timeWaitsTo(t, ns, side, stormPort) {
		if made > 0 {
			// each round, for a failure to show its history
			t.Logf("%s: %d connections made in %v, %d TIME_WAIT", side, made, time.Since(start).Round(time.Millisecond), held)
		}
		if made > n+n/100 {
			t.Fatalf("%d connections made, %d TIME_WAIT: the kernel ended more than 1%% early", made, held)
		}
		p.storm(n - held)
		made += n - held
		awaitStable(t, ns)
	}
	t.Logf("%d connections made for %d TIME_WAIT", made, n)
	return made
}

// timeWaitsTo counts, with ss, the TIME_WAIT sockets of ns whose local
// (sport) or remote (dport) port is port.
func timeWaitsTo(t *testing.T, ns *netns, side string, port int) int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns.name, "ss", "-tanH", "state", "time-wait", side, "= :"+strconv.Itoa(port)).Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	return strings.Count(string(out), "\n")
}

// awaitStable waits until no connection of ns is between its client's
// close and TIME_WAIT.
func awaitStable(t *testing.T, ns *netns) {
	t.Helper()
	for deadline := time.Now().Add(patience); ; time.Sleep(20 * time.Millisecond) {
		out, err := exec.Command("ip", "netns", "exec", ns.name, "ss", "-tanH", "state", "fin-wait-1", "state", "fin-wait-2",
			"state", "close-wait", "state", "last-ack", "state", "established").Output()
		if err != nil {
			t.Fatalf("ss: %v", err)
		}
		if len(out) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("connections still closing after 5s:\n%s", out)
		}
	}
}

// failConnects makes k connects to 127.0.0.1:port in ns, one system
// call each as a C client makes them (Go's Dial tries again on
// EADDRNOTAVAIL), each of which must fail with EADDRNOTAVAIL.
func failConnects(t *testing.T, ns *netns, port, k int) {
	t.Helper()
	inNetns(t, ns, func() {
		for i := range k {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
			if err != nil {
				t.Fatal(err)
			}
			err = unix.Connect(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}})
			unix.Close(fd)
			if !errors.Is(err, syscall.EADDRNOTAVAIL) {
				t.Fatalf("connect %d: %v, want EADDRNOTAVAIL", i+1, err)
			}
		}
	})
}

func decodeLast[T any](t *testing.T, out string) *T {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var v T
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &v); err != nil {
		t.Fatalf("bad JSON %q: %v", lines[len(lines)-1], err)
	}
	return &v
}

func hasVerdict(verdicts []storm.Verdict, parts ...string) bool {
	for _, v := range verdicts {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(v.Text, p)
		}
		if all {
			return true
		}
	}
	return false
}

func selfComm() string {
	comm := filepath.Base(os.Args[0])
	if len(comm) > 15 {
		comm = comm[:15]
	}
	return comm
}

// A client-side storm that exhausts the port range: 2,000 connections (and
// a few more, see below) closed first by this process, in a namespace with
// 2,000 local ports and tcp_tw_reuse=0, then 3 connects that find no free
// port. The report counts exactly the creations toward 127.0.0.1:8080,
// as many TIME_WAITs as ss shows, this process as their owner, the client as the
// side that closes first, 100% of the range, the 3 failed connects, and
// says so in its verdicts.
func TestTimewaitClientStorm(t *testing.T) {
	t.Parallel()
	requireBPF(t)
	ns := newNetns(t)
	ns.sysctl(t, "net.ipv4.tcp_tw_reuse", "0")
	ns.sysctl(t, "net.ipv4.ip_local_port_range", "40000 41999")
	const n, failures = 2000, 3
	r := startBinary(t, "timewait", "--netns", ns.path, "--json", "--once", "--duration", "10m")
	p := startStorm(t, ns, false)
	made := stormUntil(t, ns, p, "dport", n)
	failConnects(t, ns, stormPort, failures)
	rep := decodeLast[storm.Report](t, r.stop(t))
	ss := timeWaitsTo(t, ns, "dport", stormPort)

	if rep.TimeWaitTotal != n || len(rep.Destinations) != 1 {
		t.Fatalf("timewait_total %d, %d destinations, want %d and 1: %+v", rep.TimeWaitTotal, len(rep.Destinations), n, rep.Destinations)
	}
	d := rep.Destinations[0]
	if d.LAddr != "127.0.0.1" || d.RAddr != "127.0.0.1" || d.RPort != stormPort || d.ActiveCloser != "client" {
		t.Errorf("destination %+v", d)
	}
	if d.Created != uint64(made) || d.TimeWait != ss || ss != n || d.ConnectFailures != failures {
		t.Errorf("created %d, timewait %d (ss %d), failures %d; want %d, %d, %d", d.Created, d.TimeWait, ss, d.ConnectFailures, made, n, failures)
	}
	// the storm's process made the TIME_WAITs, this one the failed connects
	want := []storm.OwnerCount{{PID: p.pid, Comm: stormComm, Count: uint64(made)}, {PID: uint32(os.Getpid()), Comm: selfComm(), ConnectFailures: failures}}
	if len(d.Owners) != 2 {
		t.Fatalf("owners %+v, want %+v", d.Owners, want)
	}
	for i, o := range d.Owners {
		o.Unit = ""
		if o != want[i] {
			t.Errorf("owner %+v, want %+v", o, want[i])
		}
	}
	if d.PortRangeUsedPct == nil || *d.PortRangeUsedPct != 100 || rep.Settings.UsablePorts != n || rep.Settings.TWReuse != 0 {
		t.Errorf("range used %v of %d usable, tw_reuse %d", d.PortRangeUsedPct, rep.Settings.UsablePorts, rep.Settings.TWReuse)
	}
	if !hasVerdict(rep.Verdicts, "connect() to 127.0.0.1:8080 failed 3 times", "EADDRNOTAVAIL", "pid "+strconv.Itoa(int(p.pid))+" "+stormComm) ||
		!hasVerdict(rep.Verdicts, "client 127.0.0.1", "closes first", "100% of the port range", "keep-alive") {
		t.Errorf("verdicts %+v", rep.Verdicts)
	}
}

// A server-side storm: 1,000 connections closed first by the server. The
// TIME_WAITs are the server's, on its port, with the server's verdict.
// Then the listener closes, a new one cannot bind without SO_REUSEADDR,
// and a report names the TIME_WAITs holding the port and when they clear.
func TestTimewaitServerStorm(t *testing.T) {
	t.Parallel()
	requireBPF(t)
	ns := newNetns(t)
	const n = 1000
	r := startBinary(t, "timewait", "--netns", ns.path, "--json", "--once", "--duration", "10m")
	p := startStorm(t, ns, true)
	made := stormUntil(t, ns, p, "sport", n)
	rep := decodeLast[storm.Report](t, r.stop(t))
	var created, held int
	for _, d := range rep.Destinations {
		if d.ActiveCloser != "server" || d.LPort != stormPort {
			t.Errorf("destination %+v, want the server's on %d", d, stormPort)
			continue
		}
		created += int(d.Created)
		held += d.TimeWait
		if len(d.Owners) != 1 || d.Owners[0].PID != p.pid || d.Owners[0].Comm != stormComm {
			t.Errorf("owners %+v, want the storm's %d", d.Owners, p.pid)
		}
	}
	if created != made || held != n || len(rep.ServerPorts) != 1 || rep.ServerPorts[0].Port != stormPort ||
		rep.ServerPorts[0].TimeWait != n || !rep.ServerPorts[0].Listening {
		t.Errorf("created %d, held %d, server ports %+v; want %d, %d", created, held, rep.ServerPorts, made, n)
	}
	if !hasVerdict(rep.Verdicts, "server port 8080 closes first", "1000 TIME_WAIT", "harmless for the port range") {
		t.Errorf("verdicts %+v", rep.Verdicts)
	}

	// the server restarts without SO_REUSEADDR
	p.stdin.Close()
	p.wait()
	inNetns(t, ns, func() {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: stormPort, Addr: [4]byte{127, 0, 0, 1}}); !errors.Is(err, syscall.EADDRINUSE) {
			t.Fatalf("bind without SO_REUSEADDR: %v, want EADDRINUSE", err)
		}
	})
	r = startBinary(t, "timewait", "--netns", ns.path, "--json", "--once", "--duration", "500ms")
	rep = decodeLast[storm.Report](t, r.wait(t))
	if len(rep.ServerPorts) != 1 || rep.ServerPorts[0].Listening || rep.ServerPorts[0].TimeWait != n {
		t.Fatalf("server ports %+v", rep.ServerPorts)
	}
	if rep.ServerPorts[0].ClearsAt == nil {
		t.Fatal("no clears_at")
	}
	clears := *rep.ServerPorts[0].ClearsAt
	if until := time.Until(clears); until < 50*time.Second || until > 62*time.Second {
		t.Errorf("clears at %v, in %v: want about 60 s after the storm", clears, until)
	}
	if !hasVerdict(rep.Verdicts, "port 8080 is held by 1000 TIME_WAIT sockets of the previous server",
		"without SO_REUSEADDR cannot bind until "+clears.Local().Format("15:04:05")) {
		t.Errorf("verdicts %+v", rep.Verdicts)
	}
}

// leakTo connects k clients to serverAddr() in ns from this process;
// each sends 5 bytes and closes. A server that never reads nor closes
// keeps them in CLOSE_WAIT with 5 bytes unread.
func leakTo(t *testing.T, ns *netns, k int) {
	t.Helper()
	inNetns(t, ns, func() {
		for range k {
			c, err := net.Dial("tcp4", serverAddr())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			c.Close()
		}
	})
}

// closewaitReport runs tcptrace closewait once over d, with a 1 s
// threshold, while during runs.
func closewaitReport(t *testing.T, ns *netns, d time.Duration, during func()) *stuck.Report {
	t.Helper()
	r := startBinary(t, "closewait", "--netns", ns.path, "--json", "--once", "--duration", d.String(), "--threshold", "1s")
	during()
	return decodeLast[stuck.Report](t, r.wait(t))
}

// checkLeak checks that rep shows k CLOSE_WAIT sockets held by pid, each
// with 5 unread bytes (Recv-Q 6, with the FIN), and the summary and
// verdict for pid; and their k peers, this process's, in FIN_WAIT2 (an
// owner tcptrace knows only if it saw them close).
func checkLeak(t *testing.T, rep *stuck.Report, k int, pid uint32, comm string, ageKnown bool) {
	t.Helper()
	if len(rep.Sockets) != 2*k {
		t.Fatalf("%d sockets, want %d: %+v", len(rep.Sockets), 2*k, rep.Sockets)
	}
	for _, s := range rep.Sockets {
		switch s.State {
		case "CLOSE_WAIT":
			if s.PID != pid || s.Comm != comm || s.RecvQ != 6 || s.Unread != 5 || s.LPort != port || s.AgeKnown != ageKnown || s.Age < 1 {
				t.Errorf("socket %+v, want pid %d %s on %d with 5 unread bytes, age known %v", s, pid, comm, port, ageKnown)
			}
		case "FIN_WAIT2":
			// closed, so held by no process: only a tracer that saw
			// the close knows who closed it. That is this process,
			// unless a test running alongside forked while it held
			// the socket: then the last close is the child's, as it
			// execs, and the kernel names the child
			if s.RPort != port || s.AgeKnown != ageKnown || !ageKnown && s.PID != 0 {
				t.Errorf("peer %+v, want an orphan toward %d", s, port)
			}
		default:
			t.Errorf("socket %+v", s)
		}
	}
	var cw *stuck.Process
	for i, p := range rep.ByProcess {
		if p.State == "CLOSE_WAIT" {
			cw = &rep.ByProcess[i]
		}
	}
	if len(rep.ByProcess) != 2 || cw == nil || cw.PID != pid || cw.Count != k || cw.Unread != uint64(5*k) {
		t.Errorf("by process %+v", rep.ByProcess)
	}
	want := "pid " + strconv.Itoa(int(pid)) + " " + comm
	found := false
	for _, v := range rep.Verdicts {
		found = found || strings.Contains(v, want) && strings.Contains(v, strconv.Itoa(k)+" connections in CLOSE_WAIT")
	}
	if !found {
		t.Errorf("verdicts %q, want one naming %s", rep.Verdicts, want)
	}
}

// K sockets held in CLOSE_WAIT by a child process: closewait reports K,
// with that pid. Started again, when they are already in CLOSE_WAIT, it
// finds them by its dump, with the same owner and an age of at least.
func TestClosewaitLeak(t *testing.T) {
	t.Parallel()
	requireBPF(t)
	ns := newNetns(t)
	const k = 3
	w := ns.start(t, workerComm, "", serverAddr(), 0, "TT_OWN=1", "TT_LEAK=1", "TT_CONNS="+strconv.Itoa(k))
	rep := closewaitReport(t, ns, 3*time.Second, func() {
		w.goAhead()
		w.expect("listening")
		leakTo(t, ns, k)
		for range k {
			w.await("conn ")
		}
		w.await("held")
	})
	checkLeak(t, rep, k, w.pid, workerComm, true)

	rep = closewaitReport(t, ns, 1500*time.Millisecond, func() {})
	checkLeak(t, rep, k, w.pid, workerComm, false)
}

// A leak in a prefork worker names the worker that accepted each
// connection, not the master that made the listener.
func TestClosewaitPrefork(t *testing.T) {
	t.Parallel()
	requireBPF(t)
	ns := newNetns(t)
	m := ns.start(t, masterComm, "", serverAddr(), 0, "TT_WORKERS=2", "TT_LEAK=1", "TT_CONNS=1")
	var took map[int]uint32
	rep := closewaitReport(t, ns, 3*time.Second, func() {
		m.goAhead()
		for range 2 {
			w := spawned(m, workerComm)
			t.Cleanup(func() { syscall.Kill(int(w.pid), syscall.SIGKILL) })
		}
		m.await("listening")
		leakTo(t, ns, 2)
		took = served(m, 2)
		m.await("held")
		m.await("held")
	})
	var leaked []stuck.Socket
	for _, s := range rep.Sockets {
		if s.State == "CLOSE_WAIT" {
			leaked = append(leaked, s)
		}
	}
	if len(leaked) != 2 {
		t.Fatalf("%d sockets in CLOSE_WAIT, want 2: %+v", len(leaked), rep.Sockets)
	}
	for _, s := range leaked {
		if want := took[int(s.RPort)]; s.PID != want || s.Comm != workerComm || s.PID == m.pid {
			t.Errorf("client port %d: pid %d %s, want the worker %d (master %d)", s.RPort, s.PID, s.Comm, want, m.pid)
		}
	}
}

// The handshake states and the accept queue: a connect to a port nobody
// listens on (refused), and a listener with a backlog of 1 that never
// accepts, to which 4 clients connect: two fill its queue, the kernel
// drops the others' SYNs (counted as overflows) and leaves them in
// SYN_SENT, and the report says which listener is full.
func TestClosewaitHandshakes(t *testing.T) {
	t.Parallel()
	requireBPF(t)
	ns := newNetns(t)
	var fds []int
	t.Cleanup(func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	})
	socket := func() int {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		fds = append(fds, fd)
		return fd
	}
	loopback := [4]byte{127, 0, 0, 1}
	rep := closewaitReport(t, ns, 3*time.Second, func() {
		inNetns(t, ns, func() {
			l := socket()
			if err := unix.Bind(l, &unix.SockaddrInet4{Port: 7000, Addr: loopback}); err != nil {
				t.Fatal(err)
			}
			if err := unix.Listen(l, 1); err != nil {
				t.Fatal(err)
			}
			for range 4 {
				unix.Connect(socket(), &unix.SockaddrInet4{Port: 7000, Addr: loopback})
			}
			unix.Connect(socket(), &unix.SockaddrInet4{Port: 7001, Addr: loopback})
		})
	})
	refused, synSent := false, 0
	for _, f := range rep.HandshakeFailures {
		refused = refused || f.Side == "client" && f.RAddr == "127.0.0.1" && f.RPort == 7001 && f.Causes["refused"] == 1 && f.Total == 1
	}
	for _, s := range rep.Sockets {
		if s.State == "SYN_SENT" && s.RPort == 7000 && s.PID == uint32(os.Getpid()) && s.AgeKnown && s.Age >= 1 {
			synSent++
		}
	}
	if !refused || synSent != 2 {
		t.Errorf("refused %v, %d stuck in SYN_SENT (want 2): failures %+v, sockets %+v", refused, synSent, rep.HandshakeFailures, rep.Sockets)
	}
	var full *stuck.Listener
	for i, l := range rep.Listeners {
		if l.LPort == 7000 {
			full = &rep.Listeners[i]
		}
	}
	if full == nil || !full.Full || full.Queued != 2 || full.Backlog != 1 || full.PID != uint32(os.Getpid()) ||
		rep.Counters["ListenOverflows"].Total == 0 {
		t.Errorf("listener %+v, overflows %+v", full, rep.Counters)
	}
	found := false
	for _, v := range rep.Verdicts {
		found = found || strings.Contains(v, "listener 127.0.0.1:7000 (pid "+strconv.Itoa(os.Getpid())) && strings.Contains(v, "full accept queue (2 queued, backlog 1)")
	}
	if !found {
		t.Errorf("verdicts %q", rep.Verdicts)
	}
}

// Debian's nginx closing first: 120 HTTP/1.0 requests. The report puts
// every TIME_WAIT on nginx's port as the server's, owned by the worker
// that served it, exactly as many per worker as nginx's own access log
// says, with the server's verdict.
func TestTimewaitNginx(t *testing.T) {
	t.Parallel()
	requireBPF(t)
	ns := newNetns(t)
	r := startBinary(t, "timewait", "--netns", ns.path, "--json", "--once", "--duration", "10m")
	_, workers, dir := startNginx(t, ns)
	const n = 120
	inNetns(t, ns, func() {
		for range n {
			request(t, "HTTP/1.0")
		}
	})
	served := accessLog(t, filepath.Join(dir, "access.log"), n)
	perWorker := map[uint32]uint64{}
	for _, w := range served {
		perWorker[w]++
	}
	rep := decodeLast[storm.Report](t, r.stop(t))
	got := map[uint32]uint64{}
	var created uint64
	for _, d := range rep.Destinations {
		if d.ActiveCloser != "server" || d.LPort != port {
			t.Errorf("destination %+v, want nginx's on %d", d, port)
		}
		created += d.Created
		for _, o := range d.Owners {
			if o.Comm != "nginx" || !slices.Contains(workers, o.PID) {
				t.Errorf("owner %+v, want a worker of %v", o, workers)
			}
			got[o.PID] += o.Count
		}
	}
	if created != n || !maps.Equal(got, perWorker) {
		t.Errorf("created %d, per worker %v; nginx's log says %d, %v", created, got, n, perWorker)
	}
	ss := timeWaitsTo(t, ns, "sport", port)
	if len(rep.ServerPorts) != 1 || rep.ServerPorts[0].Port != port || !rep.ServerPorts[0].Listening || rep.ServerPorts[0].TimeWait != ss {
		t.Errorf("server ports %+v, ss %d", rep.ServerPorts, ss)
	}
	if !hasVerdict(rep.Verdicts, "server port 8080 closes first", "harmless for the port range") {
		t.Errorf("verdicts %+v", rep.Verdicts)
	}
}
