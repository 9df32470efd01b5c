package kerneltest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// podman runs podman with the project's containers.conf.
func podman(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("podman", args...)
	conf, _ := filepath.Abs("../deploy/containers.conf")
	cmd.Env = append(os.Environ(), "CONTAINERS_CONF="+conf)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// buildStatic builds the project's package pkg (cmd/tcptrace) into dir,
// statically (CGO_ENABLED=0), for an image FROM scratch.
func buildStatic(t *testing.T, dir, pkg string) {
	t.Helper()
	build := exec.Command("go", "build", "-o", filepath.Join(dir, filepath.Base(pkg)), "github.com/tcptrace/tcptrace/"+pkg)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v: %s", pkg, err, out)
	}
}

// daemonSetCapabilities are the capabilities deploy/daemonset.yaml adds.
func daemonSetCapabilities(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../deploy/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s+add: \[(.*)\]`).FindSubmatch(b)
	if m == nil {
		t.Fatal("the DaemonSet adds no capabilities")
	}
	var caps []string
	for _, c := range strings.Split(string(m[1]), ",") {
		caps = append(caps, strings.Trim(strings.TrimSpace(c), `"`))
	}
	return caps
}

// The agent's image, as make image builds it (deploy/Dockerfile: FROM
// scratch, the static binaries), under a real container runtime (Debian's
// podman, runc) as the DaemonSet runs it: its capabilities alone, the
// host's PID and network namespaces, a read-only root, no privilege
// escalation, the host's cgroup tree mounted read-only. It attaches,
// /healthz answers, /metrics counts 20 connections in a test namespace
// exactly, and a container that churns in that namespace by its
// container id, as podman inspect gives it. The guests of make
// test-kernels have no container runtime: they leave this test out.
func TestImage(t *testing.T) {
	requireBPF(t)
	if _, err := exec.LookPath("podman"); err != nil {
		if os.Getenv("TCPTRACE_REQUIRE_BPF") == "1" {
			t.Fatal("podman is not installed (CI installs it)")
		}
		t.Skip("no podman")
	}
	dir := t.TempDir()
	buildStatic(t, dir, "cmd/tcptrace")
	buildStatic(t, dir, "cmd/tcptrace-agent")
	image := fmt.Sprintf("localhost/tcptrace-test:%d", os.Getpid())
	if out, err := podman(t, "build", "-q", "-f", "../deploy/Dockerfile", "-t", image, dir); err != nil {
		t.Fatalf("podman build: %v: %s", err, out)
	}
	t.Cleanup(func() { podman(t, "rmi", "-f", image) })

	ns := newNetns(t)
	// a process in it, as a pod's pause process holds a pod's: the
	// container sees the host's processes, not its /run/netns
	storm := startStorm(t, ns, false)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	name := fmt.Sprintf("tcptrace-test-%d", os.Getpid())
	caps := strings.Join(daemonSetCapabilities(t), ",")
	out, err := podman(t, "run", "-d", "--name", name, "--pid=host", "--net=host", "--cap-drop=all", "--cap-add="+caps,
		"--security-opt", "seccomp=unconfined", "--security-opt", "no-new-privileges", "--read-only",
		// the host's cgroup tree, read-only, as the DaemonSet mounts it
		"-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro",
		image, "agent", "--listen", addr, "--netns", fmt.Sprint(ns.ino))
	if err != nil {
		t.Fatalf("podman run: %v: %s", err, out)
	}
	t.Cleanup(func() { podman(t, "rm", "-f", "-t", "5", name) })
	logs := &lockedBuffer{}
	defer func() {
		if t.Failed() {
			out, _ := podman(t, "logs", name)
			t.Logf("the agent's output: %s%s", out, logs.String())
		}
	}()
	waitHealthy(t, addr, logs)
	stormTwenty(t, storm, addr)
	checkAgent(t, addr)

	// a container making connections in that namespace is named by its
	// id, as podman inspect gives it
	churnDir := t.TempDir()
	buildStatic(t, churnDir, "bench/churn")
	if err := os.WriteFile(filepath.Join(churnDir, "Dockerfile"), []byte("FROM scratch\nCOPY churn /\nENTRYPOINT [\"/churn\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	churnImage := image + "-churn"
	if out, err := podman(t, "build", "-q", "-t", churnImage, churnDir); err != nil {
		t.Fatalf("podman build churn: %v: %s", err, out)
	}
	t.Cleanup(func() { podman(t, "rmi", "-f", churnImage) })
	churn := name + "-churn"
	if out, err := podman(t, "run", "--name", churn, "--network", "ns:/run/netns/"+ns.name, churnImage,
		"-mode", "client-close", "-c", "1", "-rate", "20", "-d", "1s"); err != nil {
		t.Fatalf("podman run churn: %v: %s", err, out)
	}
	t.Cleanup(func() { podman(t, "rm", "-f", churn) })
	said, _ := podman(t, "logs", churn)
	m := regexp.MustCompile(`\((\d+) in `).FindStringSubmatch(said)
	if m == nil {
		t.Fatalf("churn said %q", said)
	}
	made, _ := strconv.Atoi(m[1])
	out, _ = podman(t, "inspect", "-f", "{{.Id}}", churn)
	id := strings.TrimSpace(out)
	if len(id) < 12 {
		t.Fatalf("podman inspect: %q", out)
	}
	key := fmt.Sprintf("tcptrace_cgroup_connections_total,cgroup=container:%s,container_id=%s", id[:12], id[:12])
	var got map[string]float64
	for deadline := time.Now().Add(patience); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if got = scrape(t, addr); got[key] == float64(2*made) {
			break
		}
	}
	if got[key] != float64(2*made) {
		t.Errorf("%s = %v, want %d (churn's %d connections, each a client and a server's child); the series: %v",
			key, got[key], 2*made, made, family(got, key))
	}
	// SIGTERM, as the kubelet stops it: a clean exit
	if out, err := podman(t, "stop", "-t", "10", name); err != nil {
		t.Fatalf("podman stop: %v: %s", err, out)
	}
	if out, _ := podman(t, "inspect", "-f", "{{.State.ExitCode}}", name); strings.TrimSpace(out) != "0" {
		t.Errorf("exit code %q after SIGTERM, want 0", strings.TrimSpace(out))
	}
}
