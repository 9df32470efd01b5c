package kerneltest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/filter"
)

// Debian's nginx, configured as it ships (daemon mode, a master and
// workers), in a test namespace. The process that calls listen() exits
// when nginx daemonizes; the master holds the listener and the workers
// accept. Every server-side transition of a connection must name the
// worker that served it, which nginx's own access log says ($pid,
// $remote_port). HTTP/1.0 requests make nginx close first; HTTP/1.1
// requests, closed by the client after the answer, leave nginx's side in
// CLOSE_WAIT until the worker closes it.
func TestOwnerNginx(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	tr := startTracer(t, filter.Filter{Netns: ns.ino})
	master, workers, dir := startNginx(t, ns)

	// requests from this process, entered into the namespace
	const perKind = 20
	ports := map[uint16]string{}
	inNetns(t, ns, func() {
		for i := range 2 * perKind {
			proto := "HTTP/1.0"
			if i%2 == 1 {
				proto = "HTTP/1.1"
			}
			ports[request(t, proto)] = proto
		}
	})
	served := accessLog(t, filepath.Join(dir, "access.log"), len(ports))
	tr.waitFor("every connection's end", patience, func(evs []events.Event) bool {
		// nginx's side ends in CLOSE, or in TIME_WAIT where it closed
		// first
		ended := 0
		for _, e := range evs {
			if e.LPort == port && (e.New == events.Close && e.Old != events.Listen || e.New == events.TimeWait) {
				ended++
			}
		}
		return ended == len(ports)
	})
	evs := tr.stop()

	alive := map[uint32]bool{master: true}
	for _, w := range workers {
		alive[w] = true
	}
	for cport, proto := range ports {
		w, ok := served[cport]
		if !ok {
			t.Fatalf("nginx logged no request from port %d", cport)
		}
		srv := serverOf(evs, cport)
		if len(srv) == 0 {
			t.Errorf("%s from port %d: no server connection traced:\n%s", proto, cport, dump(evs))
			continue
		}
		want := append(append([]string{}, handshake...), "ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2", "FIN_WAIT2->TIME_WAIT")
		if proto == "HTTP/1.1" {
			want = append(append([]string{}, handshake...), afterFIN...)
		}
		checkSeq(t, fmt.Sprintf("%s from port %d", proto, cport), srv, &proc{t: t, role: "nginx", pid: w, cgroup: srv[0].Cgroup}, want...)
	}
	// nothing on nginx's side names a process that is not running
	for _, e := range evs {
		if e.LPort == port && !(e.Old == events.Close && e.New == events.Listen) && !alive[e.PID] {
			t.Errorf("%s named pid %d, not nginx's master or a worker (%d, %v)", arrow(e), e.PID, master, workers)
		}
	}
}

// startNginx runs Debian's nginx in ns as it ships (daemon mode, a
// master and 2 workers), answering "ok" on 127.0.0.1:8080 and logging
// "$pid $remote_port" for each request, and returns the master, the
// workers and its directory.
func startNginx(t *testing.T, ns *netns) (master uint32, workers []uint32, dir string) {
	t.Helper()
	nginxBin, err := exec.LookPath("nginx")
	if err != nil {
		if os.Getenv("TCPTRACE_REQUIRE_BPF") == "1" {
			t.Fatalf("nginx is not installed (apt-get install nginx; .ci/run installs it)")
		}
		t.Skip("needs nginx: apt-get install nginx")
	}
	dir = t.TempDir()
	conf := fmt.Sprintf(`daemon on;
worker_processes 2;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 64; }
http {
	log_format conns '$pid $remote_port';
	access_log %[1]s/access.log conns;
	client_body_temp_path %[1]s;
	proxy_temp_path %[1]s;
	fastcgi_temp_path %[1]s;
	uwsgi_temp_path %[1]s;
	scgi_temp_path %[1]s;
	server {
		listen 127.0.0.1:%[2]d;
		location / { return 200 "ok\n"; }
	}
}
`, dir, port)
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	start := exec.Command("ip", "netns", "exec", ns.name, nginxBin, "-p", dir, "-c", filepath.Join(dir, "nginx.conf"))
	if out, err := start.CombinedOutput(); err != nil {
		t.Fatalf("start nginx: %v: %s", err, out)
	}
	master = waitPIDFile(t, filepath.Join(dir, "nginx.pid"))
	t.Cleanup(func() {
		exec.Command("ip", "netns", "exec", ns.name, nginxBin, "-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-s", "stop").Run()
	})
	return master, childrenOf(t, master, 2), dir
}

// request makes one HTTP request and reads the answer; for HTTP/1.1 the
// client closes first once it has the answer, for HTTP/1.0 nginx does.
// It returns the client's port.
func request(t *testing.T, proto string) uint16 {
	t.Helper()
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 5*time.Second)
	if err != nil {
		t.Fatalf("connect to nginx: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(patience))
	if _, err := fmt.Fprintf(c, "GET / %s\r\nHost: test\r\n\r\n", proto); err != nil {
		t.Fatalf("request: %v", err)
	}
	rd := bufio.NewReader(c)
	if proto == "HTTP/1.0" {
		body, err := io.ReadAll(rd)
		if err != nil || !strings.HasSuffix(string(body), "ok\n") {
			t.Fatalf("answer %q, %v", body, err)
		}
	} else {
		// headers, then the 3-byte body: the connection stays open
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				t.Fatalf("answer: %v", err)
			}
			if line == "\r\n" {
				break
			}
		}
		if _, err := io.ReadFull(rd, make([]byte, 3)); err != nil {
			t.Fatalf("body: %v", err)
		}
	}
	return uint16(c.LocalAddr().(*net.TCPAddr).Port)
}

func waitPIDFile(t *testing.T, path string) uint32 {
	t.Helper()
	for deadline := time.Now().Add(patience); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		b, err := os.ReadFile(path)
		if n, perr := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && perr == nil {
			return uint32(n)
		}
	}
	t.Fatalf("nginx wrote no pid file")
	return 0
}

// childrenOf waits for want children of pid and returns them.
func childrenOf(t *testing.T, pid uint32, want int) []uint32 {
	t.Helper()
	for deadline := time.Now().Add(patience); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		var kids []uint32
		procs, _ := os.ReadDir("/proc")
		for _, d := range procs {
			stat, err := os.ReadFile("/proc/" + d.Name() + "/stat")
			if err != nil {
				continue
			}
			f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
			if len(f) > 1 && f[1] == strconv.Itoa(int(pid)) {
				n, _ := strconv.Atoi(d.Name())
				kids = append(kids, uint32(n))
			}
		}
		if len(kids) == want {
			return kids
		}
	}
	t.Fatalf("nginx master %d did not start %d workers", pid, want)
	return nil
}

// accessLog waits for n lines of "$pid $remote_port" and maps each client
// port to the worker that served it.
func accessLog(t *testing.T, path string, n int) map[uint16]uint32 {
	t.Helper()
	for deadline := time.Now().Add(patience); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		b, _ := os.ReadFile(path)
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) < n {
			continue
		}
		out := map[uint16]uint32{}
		for _, l := range lines {
			var pid, cport int
			if _, err := fmt.Sscanf(l, "%d %d", &pid, &cport); err != nil {
				t.Fatalf("access log line %q: %v", l, err)
			}
			out[uint16(cport)] = uint32(pid)
		}
		return out
	}
	t.Fatalf("nginx logged fewer than %d requests", n)
	return nil
}
