package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// soak runs tcptrace agent for c.soak under a paced churn in a namespace
// with tcp_tw_reuse=0, so that its TIME_WAITs expire (the costliest path)
// while new ones come, and prints the agent's CPU and RSS every minute
// from /proc, its counters scraped from /metrics, and at the end whether
// they equal what the churn made, with nothing lost.
func soak(c *config) error {
	ns := fmt.Sprintf("tcpsoak-%d", os.Getpid())
	if err := expiryNetns(ns); err != nil {
		return err
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := l.Addr().String()
	l.Close()
	var stderr bytes.Buffer
	agent := exec.Command(c.tcptrace, "agent", "--netns", "/run/netns/"+ns, "--listen", addr)
	agent.Stderr = &stderr
	if err := agent.Start(); err != nil {
		return fmt.Errorf("start the agent: %w", err)
	}
	defer agent.Process.Kill()
	pid := agent.Process.Pid
	if err := waitAttached(pid); err != nil {
		return fmt.Errorf("%w; stderr: %s", err, stderr.String())
	}
	churn := exec.Command("ip", "netns", "exec", ns, c.churn, "-mode", "client-close", "-c", strconv.Itoa(c.clients),
		"-d", c.soak.String(), "-rate", strconv.FormatFloat(c.stormRate, 'f', -1, 64), "-targets", strconv.Itoa(c.stormTargets))
	var churnOut bytes.Buffer
	churn.Stdout, churn.Stderr = &churnOut, &churnOut
	if err := churn.Start(); err != nil {
		return fmt.Errorf("start churn: %w", err)
	}
	fmt.Printf("\nSoak: tcptrace agent --netns for %v, churn client-close paced to %.0f connections/s over %d addresses in a namespace with tcp_tw_reuse=0\n\n",
		c.soak, c.stormRate, c.stormTargets)
	fmt.Println("| minute | agent CPU, % of a core | RSS | TIME_WAIT sockets | connections counted | TIME_WAIT entries | TIME_WAIT ends (closed) | lost |")
	fmt.Println("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	start := time.Now()
	lastCPU, _ := cpuTicks(pid)
	for at := time.Minute; at <= c.soak; at += time.Minute {
		time.Sleep(time.Until(start.Add(at)))
		cpu, err := cpuTicks(pid)
		if err != nil {
			return err
		}
		m, err := scrapeAgent(addr)
		if err != nil {
			return err
		}
		fmt.Printf("| %d | %.2f%% | %.1f MiB | %d | %.0f | %.0f | %.0f | %.0f |\n", int(at.Minutes()),
			float64(cpu-lastCPU)/float64(clockTicks)/60*100, rssMiB(pid), timeWaits(ns),
			m[`tcptrace_transitions_total{family="ipv4",new="SYN_SENT",old="CLOSE"}`], m["tcptrace_timewait_entries_total"],
			m[`tcptrace_transitions_total{family="ipv4",new="CLOSE",old="TIME_WAIT"}`], m["tcptrace_events_lost_total"])
		lastCPU = cpu
	}
	if err := churn.Wait(); err != nil {
		return fmt.Errorf("churn: %v: %s", err, churnOut.String())
	}
	var n int
	var rate, secs float64
	if _, err := fmt.Sscanf(churnOut.String(), "connections/s: %f (%d in %fs", &rate, &n, &secs); err != nil {
		return fmt.Errorf("churn output %q: %w", churnOut.String(), err)
	}
	// the last connections' ends: a client's dead FIN_WAIT2 waiting for
	// its peer is resolved by the peer's close, or by sock_diag a second
	// later
	var m map[string]float64
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if m, err = scrapeAgent(addr); err != nil {
			return err
		}
		if m["tcptrace_timewait_entries_total"] >= float64(n) || time.Now().After(deadline) {
			break
		}
	}
	agent.Process.Signal(os.Interrupt)
	agent.Wait()
	connects := m[`tcptrace_transitions_total{family="ipv4",new="SYN_SENT",old="CLOSE"}`]
	closes := m[`tcptrace_transitions_total{family="ipv4",new="CLOSE",old="LAST_ACK"}`]
	tw := m["tcptrace_timewait_entries_total"]
	exact := connects == float64(n) && closes == float64(n) && tw == float64(n) && m["tcptrace_events_lost_total"] == 0
	fmt.Printf("\n%s; the agent counted %.0f connects, %.0f server closes, %.0f TIME_WAIT entries, %.0f lost: exact %v.\n",
		strings.TrimSpace(churnOut.String()), connects, closes, tw, m["tcptrace_events_lost_total"], exact)
	return nil
}

// scrapeAgent reads the agent's /metrics, by series as written.
func scrapeAgent(addr string) (map[string]float64, error) {
	r, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, fmt.Errorf("scrape: %w", err)
	}
	defer r.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(r.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "#") {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err == nil {
			m[l[:i]] = v
		}
	}
	return m, sc.Err()
}
