// Package netconf reads a network namespace's TCP settings and counters:
// the sysctls that decide how TIME_WAIT and the local port range behave,
// and the TcpExt counters of /proc/net/netstat. Both are per namespace,
// and /proc/sys shows the namespace of the thread that opens it, so they
// are read on a thread that joins the namespace and is never reused.
package netconf

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/sockdiag"
)

// Settings are the sysctls that matter for TIME_WAIT and port use.
type Settings struct {
	TWReuse      int // net.ipv4.tcp_tw_reuse: 0 off, 1 on, 2 loopback only
	MaxTWBuckets int // net.ipv4.tcp_max_tw_buckets
	FinTimeout   int // net.ipv4.tcp_fin_timeout, seconds
	PortLow      int // net.ipv4.ip_local_port_range
	PortHigh     int
	// Reserved is net.ipv4.ip_local_reserved_ports, as the kernel
	// prints it ("8080,9000-9010")
	Reserved string
	// ReservedInRange is how many reserved ports lie in the range
	ReservedInRange int
}

// UsablePorts is how many local ports connect() may pick from: the
// range minus the reserved ports in it.
func (s *Settings) UsablePorts() int {
	return max(s.PortHigh-s.PortLow+1-s.ReservedInRange, 0)
}

// InRange says whether port is in the ephemeral range.
func (s *Settings) InRange(port uint16) bool {
	return int(port) >= s.PortLow && int(port) <= s.PortHigh
}

// Counters are TcpExt counters by name (TCPTimeWaitOverflow, TWRecycled,
// TWKilled, TW, ListenOverflows, ListenDrops, ...).
type Counters map[string]uint64

// Read reads the settings and counters of network namespace netns (its
// inode; 0: this thread's). pid, if not 0, is a process likely to be in
// it.
func Read(netns, pid uint32) (Settings, Counters, error) {
	ns, err := sockdiag.OpenNetns(netns, pid)
	if err != nil {
		return Settings{}, nil, err
	}
	defer ns.Close()
	type result struct {
		s   Settings
		c   Counters
		err error
	}
	done := make(chan result, 1)
	go func() {
		// this thread joins ns and is never given back: the goroutine
		// ends locked, and the runtime ends the thread with it
		runtime.LockOSThread()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- result{err: fmt.Errorf("enter network namespace: %w", err)}
			return
		}
		s, c, err := read()
		done <- result{s, c, err}
	}()
	r := <-done
	return r.s, r.c, r.err
}

func read() (Settings, Counters, error) {
	var s Settings
	var err error
	for _, v := range []struct {
		name string
		to   *int
	}{
		{"tcp_tw_reuse", &s.TWReuse},
		{"tcp_max_tw_buckets", &s.MaxTWBuckets},
		{"tcp_fin_timeout", &s.FinTimeout},
	} {
		if *v.to, err = readInt("/proc/sys/net/ipv4/" + v.name); err != nil {
			return s, nil, err
		}
	}
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return s, nil, fmt.Errorf("read the port range: %w", err)
	}
	if _, err := fmt.Sscan(string(b), &s.PortLow, &s.PortHigh); err != nil {
		return s, nil, fmt.Errorf("parse ip_local_port_range %q: %w", b, err)
	}
	if b, err = os.ReadFile("/proc/sys/net/ipv4/ip_local_reserved_ports"); err == nil {
		s.Reserved = strings.TrimSpace(string(b))
		s.ReservedInRange = reservedIn(s.Reserved, s.PortLow, s.PortHigh)
	}
	f, err := os.Open("/proc/thread-self/net/netstat")
	if err != nil {
		return s, nil, fmt.Errorf("read counters: %w", err)
	}
	defer f.Close()
	c, err := parseNetstat(f, "TcpExt:")
	return s, c, err
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return n, nil
}

// reservedIn counts the ports of a reserved list ("1000,2000-2005") that
// lie in [lo, hi].
func reservedIn(list string, lo, hi int) int {
	n := 0
	for _, part := range strings.Split(list, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		a, b, isRange := strings.Cut(part, "-")
		from, err1 := strconv.Atoi(a)
		to := from
		var err2 error
		if isRange {
			to, err2 = strconv.Atoi(b)
		}
		if err1 != nil || err2 != nil {
			continue
		}
		from, to = max(from, lo), min(to, hi)
		if to >= from {
			n += to - from + 1
		}
	}
	return n
}

// parseNetstat reads the counters of one prefix ("TcpExt:") from
// /proc/net/netstat: a line of names, then a line of values.
func parseNetstat(r io.Reader, prefix string) (Counters, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var names []string
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || f[0] != prefix {
			continue
		}
		if names == nil {
			names = f[1:]
			continue
		}
		c := Counters{}
		for i, v := range f[1:] {
			if i < len(names) {
				n, _ := strconv.ParseUint(v, 10, 64)
				c[names[i]] = n
			}
		}
		return c, nil
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read netstat: %w", err)
	}
	return nil, fmt.Errorf("netstat: no %s counters", prefix)
}

// Rate is a counter's value and its rate since an earlier reading.
type Rate struct {
	Total uint64  `json:"total"`
	PerS  float64 `json:"per_s"`
}

// Rates gives the named counters of c with their rates since prev, read
// elapsed seconds before; no rate where prev lacks one or it went back.
func Rates(c, prev Counters, names []string, elapsed float64) map[string]Rate {
	out := make(map[string]Rate, len(names))
	for _, name := range names {
		r := Rate{Total: c[name]}
		if p, ok := prev[name]; ok && r.Total >= p && elapsed > 0 {
			r.PerS = float64(r.Total-p) / elapsed
		}
		out[name] = r
	}
	return out
}
