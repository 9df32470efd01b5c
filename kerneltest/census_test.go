package kerneltest

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// holdOpen has a worker in ns accept k connections from this process and
// hold them, both ends ESTABLISHED, until the test ends.
func holdOpen(t *testing.T, ns *netns, k int) {
	t.Helper()
	w := ns.start(t, workerComm, "", serverAddr(), 0, "TT_OWN=1", "TT_LEAK=1", "TT_CONNS="+strconv.Itoa(k))
	w.goAhead()
	w.expect("listening")
	inNetns(t, ns, func() {
		for range k {
			c, err := net.Dial("tcp4", serverAddr())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
		}
	})
	w.await("held")
}

// hostStates counts, with ss, the TCP sockets in each state of every
// network namespace of the host: those processes are in, and those ip
// netns names.
func hostStates(t *testing.T) map[string]int {
	t.Helper()
	seen := map[uint64]bool{}
	var paths []string
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		if p.Name()[0] < '0' || p.Name()[0] > '9' {
			continue
		}
		paths = append(paths, "/proc/"+p.Name()+"/ns/net")
	}
	named, _ := filepath.Glob("/run/netns/*")
	paths = append(paths, named...)
	states := map[string]int{}
	for _, path := range paths {
		var st unix.Stat_t
		if unix.Stat(path, &st) != nil || seen[st.Ino] {
			continue
		}
		seen[st.Ino] = true
		out, err := exec.Command("nsenter", "--net="+path, "ss", "-tanH").Output()
		if err != nil {
			continue // the process has gone
		}
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if f := strings.Fields(l); len(f) > 0 {
				states[f[0]]++
			}
		}
	}
	return states
}

// The agent traces every namespace when given none, and counts the
// sockets of each: 20 and 30 connections held open in two namespaces
// before it starts, both ends, keep their count across three recounts
// (each namespace's own dump), equal to what ss finds in every namespace
// at each. Its own scrapes are not counted by owner. Not parallel: the
// host's counts are the test's alone.
func TestAgentCountsEveryNamespace(t *testing.T) {
	requireBPF(t)
	a, b := newNetns(t), newNetns(t)
	holdOpen(t, a, 20)
	holdOpen(t, b, 30)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(tcptraceBinary(t), "agent", "--listen", addr, "--recount-every", "1s")
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() })
	waitHealthy(t, addr, stderr)
	sockets := func(m map[string]float64, state string) float64 {
		n := 0.0
		for k, v := range family(m, "tcptrace_sockets") {
			if strings.HasSuffix(k, "state="+state) || strings.Contains(k, "state="+state+",") {
				n += v
			}
		}
		return n
	}
	// the scrapes' own connection, kept alive: made and counted first
	scrape(t, addr)
	start := time.Now()
	for i := range 4 {
		// each second a recount: three of them between the first and
		// the last of these
		time.Sleep(time.Until(start.Add(time.Duration(i)*1500*time.Millisecond + 1600*time.Millisecond)))
		m := scrape(t, addr)
		ss := hostStates(t)
		if got := sockets(m, "established"); got != float64(ss["ESTAB"]) || ss["ESTAB"] < 2*(20+30) {
			t.Errorf("at %v: ESTABLISHED %v, ss %d (want at least %d)", time.Since(start).Round(time.Millisecond), got, ss["ESTAB"], 2*(20+30))
		}
		if got := sockets(m, "listen"); got != float64(ss["LISTEN"]) {
			t.Errorf("at %v: LISTEN %v, ss %d", time.Since(start).Round(time.Millisecond), got, ss["LISTEN"])
		}
		// its scrapes are its own: left out of what it counts by owner
		if n, ok := m["tcptrace_process_connections_total,comm=tcptrace-agent"]; ok {
			t.Errorf("the agent counts %v connections of its own", n)
		}
	}
}
