package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// expiryNetns makes a namespace where TIME_WAITs expire instead of being
// reused (tcp_tw_reuse=0, as toward any host but loopback), with the
// widest port range; the caller deletes it.
func expiryNetns(ns string) error {
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add: %v: %s", err, out)
	}
	for _, cmd := range [][]string{
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=0"},
		{"ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"},
	} {
		if out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
			exec.Command("ip", "netns", "del", ns).Run()
			return fmt.Errorf("%s: %v: %s", strings.Join(cmd, " "), err, out)
		}
	}
	return nil
}

// storm runs a TIME_WAIT storm whose TIME_WAITs expire: in a namespace
// with tcp_tw_reuse=0 (as toward any host but loopback) and the widest
// port range, the client-close churn makes TIME_WAIT sockets at a steady
// rate, which end by expiry 60 s later, where no tracepoint fires:
// tcptrace follows each to its end. Unpaced, with one server address,
// connect()'s search for a free port slows the churn to a few hundred a
// second once the range is two-thirds full. It samples
// tcptrace's CPU and RSS and the namespace's TIME_WAIT sockets every 10 s,
// and counts the TIME_WAIT ends tcptrace reported in each interval.
func storm(c *config) error {
	ns := fmt.Sprintf("tcpstorm-%d", os.Getpid())
	if err := expiryNetns(ns); err != nil {
		return err
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	f, err := os.CreateTemp(c.dir, "tcpstorm-*.out")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	var stderr strings.Builder
	tracer := exec.Command(c.tcptrace, "--json", "--netns", "/run/netns/"+ns)
	tracer.Stdout, tracer.Stderr = f, &stderr
	if err := tracer.Start(); err != nil {
		return fmt.Errorf("start tcptrace: %w", err)
	}
	defer tracer.Process.Kill()
	pid := tracer.Process.Pid
	if err := waitAttached(pid); err != nil {
		return fmt.Errorf("%w; stderr: %s", err, stderr.String())
	}
	churn := exec.Command("ip", "netns", "exec", ns, c.churn, "-mode", "client-close", "-c", strconv.Itoa(c.clients), "-d", c.storm.String(),
		"-rate", strconv.FormatFloat(c.stormRate, 'f', -1, 64), "-targets", strconv.Itoa(c.stormTargets))
	var churnOut bytes.Buffer
	churn.Stdout, churn.Stderr = &churnOut, &churnOut
	if err := churn.Start(); err != nil {
		return fmt.Errorf("start churn: %w", err)
	}
	fmt.Printf("\nTIME_WAIT storm: churn client-close, blocking, %d clients, %v, %.0f connections/s to %d server addresses, in a namespace with tcp_tw_reuse=0 and ports 1024-65535; tcptrace --json --netns to a file\n\n",
		c.clients, c.storm, c.stormRate, c.stormTargets)
	fmt.Println("| seconds | tcptrace CPU, % of a core | RSS | TIME_WAIT sockets | TIME_WAIT ends reported | per second |")
	fmt.Println("| ---: | ---: | ---: | ---: | ---: | ---: |")
	start := time.Now()
	lastCPU, _ := cpuTicks(pid)
	var read int64
	var steadyCPU, steadyEnds, steadySecs float64
	minTW := -1
	for at := 10 * time.Second; at <= c.storm; at += 10 * time.Second {
		time.Sleep(time.Until(start.Add(at)))
		cpu, err := cpuTicks(pid)
		if err != nil {
			return err
		}
		ends, n, err := countEnds(f.Name(), read)
		if err != nil {
			return err
		}
		read = n
		tw := timeWaits(ns)
		pct := float64(cpu-lastCPU) / float64(clockTicks) / 10 * 100
		lastCPU = cpu
		fmt.Printf("| %d | %.1f%% | %.1f MiB | %d | %d | %.0f |\n", int(at.Seconds()), pct, rssMiB(pid), tw, ends, float64(ends)/10)
		// steady: every interval after the first TIME_WAITs expired
		if at >= 80*time.Second {
			steadyCPU += pct * 10 / 100
			steadyEnds += float64(ends)
			steadySecs += 10
			if minTW < 0 || tw < minTW {
				minTW = tw
			}
		}
	}
	if err := churn.Wait(); err != nil {
		return fmt.Errorf("churn: %v: %s", err, churnOut.String())
	}
	tracer.Process.Signal(os.Interrupt)
	if err := tracer.Wait(); err != nil {
		return fmt.Errorf("tcptrace: %v: %s", err, stderr.String())
	}
	ru := tracer.ProcessState.SysUsage().(*syscall.Rusage)
	summary := strings.TrimSpace(stderr.String())
	fmt.Printf("\n%s; %s; peak RSS %.1f MiB.\n", strings.TrimSpace(churnOut.String()), summary, float64(ru.Maxrss)/1024)
	if steadySecs > 0 {
		fmt.Printf("Steady state (80 s on): tcptrace CPU %.2f%% of a core, %.0f TIME_WAIT ends reported per second, at least %d TIME_WAIT sockets.\n",
			steadyCPU/steadySecs*100, steadyEnds/steadySecs, minTW)
	}
	return nil
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times.
const clockTicks = 100

// cpuTicks is a process's user and system time, in clock ticks.
func cpuTicks(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("read tcptrace's CPU time: %w", err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	utime, _ := strconv.ParseUint(f[11], 10, 64)
	stime, _ := strconv.ParseUint(f[12], 10, 64)
	return utime + stime, nil
}

func rssMiB(pid int) float64 {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// timeWaits counts the namespace's TIME_WAIT sockets, as ss lists them.
func timeWaits(ns string) int {
	out, err := exec.Command("ip", "netns", "exec", ns, "ss", "-Htan", "state", "time-wait").Output()
	if err != nil {
		return -1
	}
	return bytes.Count(out, []byte("\n"))
}

// countEnds counts the TIME_WAIT ends in tcptrace's output from offset on,
// up to its last whole line, and returns the offset after that line.
func countEnds(path string, offset int64) (int, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, offset, err
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return 0, offset, err
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return 0, offset, err
	}
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[:i+1]
	} else {
		b = nil
	}
	return bytes.Count(b, []byte(`"old":"TIME_WAIT","new":"CLOSE"`)), offset + int64(len(b)), nil
}
