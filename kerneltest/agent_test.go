package kerneltest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/loader"
)

// startAgent runs `tcptrace agent` for the namespace on a free loopback
// port, and returns its address once /healthz says it is attached. With
// a wrapper, the agent runs through it (a command and its arguments).
func startAgent(t *testing.T, ns *netns, wrapper ...string) string {
	t.Helper()
	addr, _ := startAgentAt(t, ns, tcptraceBinary(t), wrapper...)
	return addr
}

// lockedBuffer is a stderr a test may read while the process writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startAgentAt is startAgent with the binary at bin; it also returns the
// agent's stderr.
func startAgentAt(t *testing.T, ns *netns, bin string, wrapper ...string) (string, *lockedBuffer) {
	t.Helper()
	return startAgentArgs(t, ns, bin, nil, wrapper...)
}

// startAgentArgs is startAgentAt with more arguments for the agent.
func startAgentArgs(t *testing.T, ns *netns, bin string, args []string, wrapper ...string) (string, *lockedBuffer) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	argv := append(append(wrapper, bin, "agent", "--netns", ns.path, "--listen", addr), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	})
	waitHealthy(t, addr, stderr)
	return addr, stderr
}

// waitHealthy waits until the agent at addr answers /healthz: attached.
func waitHealthy(t *testing.T, addr string, stderr *lockedBuffer) {
	t.Helper()
	for deadline := time.Now().Add(patience); ; time.Sleep(50 * time.Millisecond) {
		if r, err := http.Get("http://" + addr + "/healthz"); err == nil {
			r.Body.Close()
			if r.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent never became healthy; stderr: %s", stderr.String())
		}
	}
}

// scrape reads /metrics as Prometheus would, by series.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	r, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(r.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	out := map[string]float64{}
	for name, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := name
			for _, l := range m.GetLabel() {
				// an empty label is no label, as Prometheus takes it
				if l.GetValue() != "" {
					key += "," + l.GetName() + "=" + l.GetValue()
				}
			}
			switch {
			case m.Counter != nil:
				out[key] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[key] = m.GetGauge().GetValue()
			case m.Histogram != nil:
				out[key+",count"] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

const connections = 20

// twentyConnections makes 20 connections in the namespace, the client
// closing first, from a tt-storm process (which forks nothing, so no
// child of another test's fork ever holds one of them at its last
// close), then ends the listener, and waits until the agent has counted
// every end.
func twentyConnections(t *testing.T, ns *netns, addr string) {
	t.Helper()
	stormTwenty(t, startStorm(t, ns, false), addr)
}

// stormTwenty has storm process p make the 20 connections, as
// twentyConnections says.
func stormTwenty(t *testing.T, p *proc, addr string) {
	t.Helper()
	p.storm(connections)
	p.stdin.Close()
	p.wait()
	for deadline := time.Now().Add(patience); ; time.Sleep(50 * time.Millisecond) {
		m := scrape(t, addr)
		if m["tcptrace_transitions_total,family=ipv4,new=close,old=last_ack"] == connections &&
			m["tcptrace_transitions_total,family=ipv4,new=close,old=listen"] == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not count every end: %v", m)
		}
	}
}

// The agent's /metrics after 20 real connections: every transition
// counter exactly 20, the process's counts, the TIME_WAIT sockets as ss
// sees them, nothing lost; it survives SIGHUP; /healthz answers.
func TestAgentMetrics(t *testing.T) {
	t.Parallel()
	requireBPF(t)
	ns := newNetns(t)
	addr := startAgent(t, ns)
	twentyConnections(t, ns, addr)
	checkAgent(t, addr)
	// SIGHUP does not stop it
	exec.Command("pkill", "-HUP", "-f", "tcptrace agent --netns "+ns.path).Run()
	time.Sleep(200 * time.Millisecond)
	if r, err := http.Get("http://" + addr + "/healthz"); err != nil || r.StatusCode != http.StatusOK {
		t.Errorf("after SIGHUP: %v", err)
	}
	// no endpoint changes state: anything but GET is refused
	if r, err := http.Post("http://"+addr+"/metrics", "text/plain", nil); err != nil || r.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /metrics: %v %v", r.StatusCode, err)
	}
}

// publicBinaries copies tcptrace and tcptrace-agent to a directory
// anyone may read, for a run as nobody: tcptrace agent runs
// tcptrace-agent, next to it, and the test binaries' directory (under
// t.TempDir's parent) is private. It returns tcptrace's path.
func publicBinaries(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tcptrace-caps-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, name := range []string{"tcptrace", "tcptrace-agent"} {
		src := filepath.Join(filepath.Dir(tcptraceBinary(t)), name)
		if out, err := exec.Command("cp", src, filepath.Join(dir, name)).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v: %s", err, out)
		}
	}
	os.Chmod(dir, 0o755)
	return filepath.Join(dir, "tcptrace")
}

// The agent with exactly the capabilities deploy/tcptrace-agent.service
// grants, as a user with no others (nobody), under no_new_privs, as
// systemd would start it: every count as with root, and no warning.
func TestAgentWithUnitCapabilities(t *testing.T) {
	t.Parallel()
	requireBPF(t)
	unit, err := os.ReadFile("../deploy/tcptrace-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	var caps []string
	for _, l := range strings.Split(string(unit), "\n") {
		if v, ok := strings.CutPrefix(l, "AmbientCapabilities="); ok {
			for _, c := range strings.Fields(v) {
				caps = append(caps, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
			}
		}
	}
	if len(caps) == 0 {
		t.Fatal("the unit grants no capabilities")
	}
	set := "-all," + strings.Join(caps, ",")
	ns := newNetns(t)
	bin := publicBinaries(t)
	addr, stderr := startAgentAt(t, ns, bin, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--no-new-privs",
		"--inh-caps="+set, "--ambient-caps="+set, "--bounding-set="+set)
	twentyConnections(t, ns, addr)
	checkAgent(t, addr)
	if w := withoutFeatureWarnings(t, stderr.String()); strings.Contains(w, "warning") {
		t.Errorf("warnings with the unit's capabilities: %s", w)
	}
}

// checkAgent checks the counts of twentyConnections on the agent.
func checkAgent(t *testing.T, addr string) {
	t.Helper()
	m := scrape(t, addr)
	for _, cell := range [][2]string{{"CLOSE", "SYN_SENT"}, {"SYN_SENT", "ESTABLISHED"}, {"ESTABLISHED", "FIN_WAIT1"},
		{"FIN_WAIT1", "FIN_WAIT2"}, {"FIN_WAIT2", "TIME_WAIT"}, {"LISTEN", "SYN_RECV"}, {"SYN_RECV", "ESTABLISHED"},
		{"ESTABLISHED", "CLOSE_WAIT"}, {"CLOSE_WAIT", "LAST_ACK"}, {"LAST_ACK", "CLOSE"}} {
		key := fmt.Sprintf("tcptrace_transitions_total,family=ipv4,new=%s,old=%s", strings.ToLower(cell[1]), strings.ToLower(cell[0]))
		if m[key] != connections {
			t.Errorf("%s = %v, want %d", key, m[key], connections)
		}
	}
	// the build, and the kernel it runs on, as uname says
	var uts unix.Utsname
	unix.Uname(&uts)
	build := family(m, "tcptrace_build_info")
	if len(build) != 1 {
		t.Errorf("tcptrace_build_info: %v, want one series", build)
	}
	for k, v := range build {
		if v != 1 || !strings.Contains(k, "kernel="+unix.ByteSliceToString(uts.Release[:])) || !strings.Contains(k, "goversion=go1.") {
			t.Errorf("tcptrace_build_info: %s = %v", k, v)
		}
	}
	comm := stormComm
	for key, want := range map[string]float64{
		"tcptrace_timewait_entries_total":                        connections,
		"tcptrace_closes_total,cause=closed,family=ipv4":         connections + 1,
		"tcptrace_process_connections_total,comm=" + comm:        2 * connections,
		"tcptrace_process_timewait_entries_total,comm=" + comm:   connections,
		"tcptrace_process_close_wait_sockets,comm=" + comm:       0,
		"tcptrace_state_duration_seconds,state=syn_sent,count":   connections,
		"tcptrace_state_duration_seconds,state=close_wait,count": connections,
		"tcptrace_events_lost_total":                             0,
		"tcptrace_sockets,family=ipv4,state=time_wait":           connections,
	} {
		if got, ok := m[key]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v; the family's series: %v", key, got, ok, want, family(m, key))
		}
	}
	if _, ok := m["go_goroutines"]; !ok {
		t.Error("no Go process metrics")
	}
	// the kernel features in use: what the probes of this kernel say
	fs, err := loader.Features()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fs {
		key, want := "tcptrace_kernel_feature,feature="+f.Name, 0.0
		if f.Has {
			want = 1
		}
		if got, ok := m[key]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", key, got, ok, want)
		}
	}
}

// family lists the series of key's metric in m, for a failure's message.
func family(m map[string]float64, key string) map[string]float64 {
	name, _, _ := strings.Cut(key, ",")
	out := map[string]float64{}
	for k, v := range m {
		if n, _, _ := strings.Cut(k, ","); n == name {
			out[k] = v
		}
	}
	return out
}

// The agent's diagnosis metrics: in a namespace whose two ports are held
// by TIME_WAIT, two connects that find no free port count as no_port
// failures, the destination's port range is used up, and two CLOSE_WAITs
// a worker leaks count as stuck for its name once past the threshold.
func TestAgentDiagnosis(t *testing.T) {
	t.Parallel()
	requireBPF(t)
	ns := newNetns(t)
	addr, _ := startAgentArgs(t, ns, tcptraceBinary(t), []string{"--destinations", "2", "--closewait-threshold", "1s", "--diagnose-every", "1s"})
	w := ns.start(t, workerComm, "", serverAddr(), 0, "TT_OWN=1", "TT_LEAK=1", "TT_CONNS=2")
	w.goAhead()
	w.expect("listening")
	leakTo(t, ns, 2)
	w.await("held")
	lport := exhaust(t, ns, 2)
	dest := ",laddr=127.0.0.1,raddr=127.0.0.1,rport=" + strconv.Itoa(int(lport))
	want := map[string]float64{
		"tcptrace_connect_failures_total,cause=no_port":        2,
		"tcptrace_connect_failures_total,cause=refused":        0,
		"tcptrace_port_range_usable_ports":                     2,
		"tcptrace_port_range_used_ratio_max":                   1,
		"tcptrace_close_wait_stuck_sockets,comm=" + workerComm: 2,
		"tcptrace_destination_timewait_sockets" + dest:         2,
		"tcptrace_destination_timewait_created_total" + dest:   2,
		"tcptrace_destination_port_range_used_ratio" + dest:    1,
		"tcptrace_destination_connect_failures_total" + dest:   2,
	}
	var m map[string]float64
	for deadline := time.Now().Add(patience); ; time.Sleep(200 * time.Millisecond) {
		m = scrape(t, addr)
		ok := true
		for k, v := range want {
			ok = ok && m[k] == v
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			for k, v := range want {
				if got, present := m[k]; got != v {
					t.Errorf("%s = %v (present %v), want %v; the family's series: %v", k, got, present, v, family(m, k))
				}
			}
			return
		}
	}
}

// A real Prometheus (Debian's) scrapes the agent; after 20 connections a
// PromQL query over its HTTP API returns exactly 20 on the right series,
// and every panel's query of deploy/grafana-dashboard.json returns data.
func TestPrometheusScrapesAgent(t *testing.T) {
	t.Parallel()
	requireBPF(t)
	prom, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("TCPTRACE_REQUIRE_BPF") == "1" {
			t.Fatal("prometheus is not installed (CI installs it)")
		}
		t.Skip("no prometheus")
	}
	ns := newNetns(t)
	addr := startAgent(t, ns)
	dir := t.TempDir()
	config := fmt.Sprintf("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tcptrace\n    static_configs:\n      - targets: [%q]\n", addr)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	promAddr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, prom, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+promAddr)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	// scraped once before the connections, so that rates see them
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if v, err := promQuery(promAddr, `up{job="tcptrace"}`); err == nil && v == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus never scraped the agent: %.2000s", stderr.String())
		}
	}
	twentyConnections(t, ns, addr)

	query := `sum(tcptrace_transitions_total{job="tcptrace",old="last_ack",new="close"})`
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		v, err := promQuery(promAddr, query)
		if err == nil && v == connections {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("PromQL %s: %v, %v; prometheus: %.2000s", query, v, err, stderr.String())
		}
	}
	if v, err := promQuery(promAddr, `tcptrace_timewait_entries_total{job="tcptrace"}`); err != nil || v != connections {
		t.Errorf("TIME_WAIT entries: %v, %v", v, err)
	}

	// every query of the Grafana dashboard runs and returns something
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	b, err := os.ReadFile("../deploy/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	queries := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			// the variables as Grafana fills them: this job, every node
			q := strings.NewReplacer("$__rate_interval", "30s", "$job", "tcptrace", "$instance", ".*").Replace(tg.Expr)
			// a rate needs two samples of a series: series born with
			// the connections have them a scrape later
			n, err := promSeries(promAddr, q)
			for deadline := time.Now().Add(patience); err == nil && n == 0 && time.Now().Before(deadline); {
				time.Sleep(500 * time.Millisecond)
				n, err = promSeries(promAddr, q)
			}
			if err != nil || n == 0 {
				t.Errorf("panel %q: %s: %d series, %v", p.Title, q, n, err)
			}
			queries++
		}
	}
	if queries < len(dash.Panels) {
		t.Errorf("%d queries for %d panels", queries, len(dash.Panels))
	}
}

// promResult runs an instant query and returns its samples' values.
func promResult(addr, q string) ([]float64, error) {
	r, err := http.Get("http://" + addr + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return nil, err
	}
	defer r.Body.Close()
	var res struct {
		Status string
		Error  string
		Data   struct {
			Result []struct {
				Value [2]any
			}
		}
	}
	if err := json.NewDecoder(r.Body).Decode(&res); err != nil {
		return nil, err
	}
	if res.Status != "success" {
		return nil, fmt.Errorf("%s: %s", res.Status, res.Error)
	}
	values := make([]float64, len(res.Data.Result))
	for i, s := range res.Data.Result {
		v, _ := s.Value[1].(string)
		if values[i], err = strconv.ParseFloat(v, 64); err != nil {
			return nil, err
		}
	}
	return values, nil
}

// promQuery runs an instant query that returns one sample.
func promQuery(addr, q string) (float64, error) {
	values, err := promResult(addr, q)
	if err != nil {
		return 0, err
	}
	if len(values) != 1 {
		return 0, fmt.Errorf("%d results", len(values))
	}
	return values[0], nil
}

// promSeries runs an instant query and says how many series it returns.
func promSeries(addr, q string) (int, error) {
	values, err := promResult(addr, q)
	return len(values), err
}

// randomHex is n random hex digits.
func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, (n+1)/2)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)[:n]
}

// The agent names a Kubernetes pod's container from its cgroup's path, in
// both of kubelet's layouts: a process moved into a cgroup made as the
// systemd driver and containerd make one, then one as cgroupfs and CRI-O
// do, each making 20 connections to itself (40 new: each client and its
// server's child). Each cgroup's series carries its container id, its
// pod's UID and QoS class, and counts exactly its own.
func TestAgentNamesPods(t *testing.T) {
	t.Parallel()
	requireBPF(t)
	ns := newNetns(t)
	addr, _ := startAgentArgs(t, ns, tcptraceBinary(t), []string{"--top-k", "50"})
	uid := func() string {
		h := randomHex(t, 32)
		return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
	}
	type pod struct{ path, id, uid, qos string }
	u1, u2, id1, id2 := uid(), uid(), randomHex(t, 64), randomHex(t, 64)
	pods := []pod{
		{"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + strings.ReplaceAll(u1, "-", "_") + ".slice/cri-containerd-" + id1 + ".scope", id1, u1, "burstable"},
		{"kubepods/besteffort/pod" + u2 + "/crio-" + id2, id2, u2, "besteffort"},
	}
	for _, p := range pods {
		// one after the other: they listen on the same port
		s := ns.startIn(t, p.path, stormComm, "client-first", serverAddr(), 0)
		s.expect("listening")
		s.storm(connections)
		s.stdin.Close()
		s.wait()
	}
	var m map[string]float64
	for deadline := time.Now().Add(patience); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		m = scrape(t, addr)
		done := true
		for _, p := range pods {
			key := fmt.Sprintf("tcptrace_cgroup_connections_total,cgroup=container:%s,container_id=%s,pod_uid=%s,qos_class=%s", p.id[:12], p.id[:12], p.uid, p.qos)
			done = done && m[key] == 2*connections
		}
		if done {
			return
		}
	}
	t.Errorf("the pods' series: %v", family(m, "tcptrace_cgroup_connections_total"))
}

// The agent under its scrapers: 200 scrapes at once all answer, while a
// slow-loris client trickles a request's headers, and ten more hold
// connections open idle; then SIGTERM during a scrape ends it cleanly:
// status 0 and its exit line.
func TestAgentHardToKnockOver(t *testing.T) {
	t.Parallel()
	requireBPF(t)
	ns := newNetns(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(tcptraceBinary(t), "agent", "--netns", ns.path, "--listen", addr)
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitHealthy(t, addr, stderr)

	// the slow and the idle: each holds one of the server's goroutines
	for i := range 11 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if i == 0 {
			go func() {
				for _, part := range []string{"GET /metrics HTTP/1.1\r\n", "Host: x\r\n", "X-Slow: 1\r\n"} {
					if _, err := c.Write([]byte(part)); err != nil {
						return
					}
					time.Sleep(time.Second)
				}
			}()
		}
	}
	client := &http.Client{Timeout: patience}
	errs := make(chan error, 200)
	for range 200 {
		go func() {
			r, err := client.Get("http://" + addr + "/metrics")
			if err == nil {
				_, err = io.Copy(io.Discard, r.Body)
				r.Body.Close()
				if err == nil && r.StatusCode != http.StatusOK {
					err = fmt.Errorf("status %s", r.Status)
				}
			}
			errs <- err
		}()
	}
	failed := 0
	for range 200 {
		if err := <-errs; err != nil {
			failed++
			if failed < 4 {
				t.Errorf("a scrape: %v", err)
			}
		}
	}
	if failed > 0 {
		t.Errorf("%d of 200 concurrent scrapes failed", failed)
	}

	// SIGTERM with a scrape under way
	go client.Get("http://" + addr + "/metrics")
	time.Sleep(10 * time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("after SIGTERM: %v; stderr: %s", err, stderr.String())
		}
	case <-time.After(patience):
		t.Fatalf("the agent did not end after SIGTERM; stderr: %s", stderr.String())
	}
	if !strings.Contains(stderr.String(), "events, 0 lost") {
		t.Errorf("no exit line: %s", stderr.String())
	}
}
