package kerneltest

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/filter"
	"github.com/tcptrace/tcptrace/netconf"
)

// exhaustPort is exhaust's listener: outside the two-port range, apart
// from the servers of the tests that use it too.
const exhaustPort = 9090

// exhaust fills a two-port range: in ns (ip_local_port_range 40000-40001,
// tcp_tw_reuse 0) two connections to a listener, closed first by the
// client, leave both ports in TIME_WAIT; then failures more connects to
// the same listener fail with EADDRNOTAVAIL. It returns the listener's
// port.
func exhaust(t *testing.T, ns *netns, failures int) uint16 {
	t.Helper()
	ns.sysctl(t, "net.ipv4.ip_local_port_range", "40000 40001")
	ns.sysctl(t, "net.ipv4.tcp_tw_reuse", "0")
	var lport uint16
	inNetns(t, ns, func() {
		// a port outside the range: port 0 would take one of the two
		ln, err := net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(exhaustPort))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		lport = uint16(ln.Addr().(*net.TCPAddr).Port)
		// the server closes each connection once its client has: the
		// client's TIME_WAIT then holds the port. The listener closes
		// only after both are accepted: closing it with a connection
		// still in its accept queue resets that connection, and frees
		// its client's port (seen on the 6.12 guest, where 100 ms was
		// not enough for the accept under emulation)
		served := make(chan error, 2)
		go func() {
			for range 2 {
				c, err := ln.Accept()
				if err != nil {
					served <- err
					return
				}
				go func() { io.Copy(io.Discard, c); served <- c.Close() }()
			}
		}()
		d := net.Dialer{Timeout: 2 * time.Second}
		d.SetMultipathTCP(false)
		for range 2 {
			c, err := d.Dial("tcp4", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
		}
		for range 2 {
			select {
			case err := <-served:
				if err != nil {
					t.Fatalf("server: %v", err)
				}
			case <-time.After(patience):
				t.Fatal("the server did not close both connections")
			}
		}
	})
	// the clients' TIME_WAITs follow the servers' FINs
	for deadline := time.Now().Add(patience); timeWaitsTo(t, ns, "dport", exhaustPort) < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			out, _ := exec.Command("ip", "netns", "exec", ns.name, "ss", "-tanoi").CombinedOutput()
			t.Fatalf("%d TIME_WAIT toward port %d, want 2 (%s); the namespace's sockets:\n%s", timeWaitsTo(t, ns, "dport", exhaustPort), exhaustPort, twCounters(t, ns), out)
		}
	}
	failConnects(t, ns, exhaustPort, failures)
	return lport
}

// A connect() that finds no free local port ends SYN_SENT -> CLOSE with
// cause no_port, in the connecting process, with local port 0; the
// connections that did connect end orderly.
func TestNoPortCause(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	x := startTracer(t, filter.Filter{Netns: ns.ino})
	lport := exhaust(t, ns, 2)
	noPort := func(evs []events.Event) (n int) {
		for _, e := range evs {
			if e.Old == events.SynSent && e.New == events.Close && e.Cause == events.CauseNoPort {
				n++
			}
		}
		return n
	}
	evs := x.waitFor("two no_port closes", patience, func(evs []events.Event) bool { return noPort(evs) == 2 })
	evs = x.stop()
	if n := noPort(evs); n != 2 {
		t.Fatalf("%d no_port closes, want 2:\n%s", n, dump(evs))
	}
	for _, e := range evs {
		if e.Old != events.SynSent || e.New != events.Close {
			continue
		}
		if e.Cause != events.CauseNoPort || e.LPort != 0 || e.RPort != lport || e.PID != uint32(os.Getpid()) {
			t.Errorf("failed connect: cause %s lport %d rport %d pid %d, want no_port 0 %d %d",
				e.Cause, e.LPort, e.RPort, e.PID, lport, os.Getpid())
		}
	}
	established := 0
	for _, e := range evs {
		if e.Old == events.SynSent && e.New == events.Established {
			established++
			if e.LPort < 40000 || e.LPort > 40001 {
				t.Errorf("client port %d outside the range", e.LPort)
			}
		}
	}
	if established != 2 {
		t.Errorf("%d connects succeeded, want 2 ", established)
	}
}

// twCounters are ns's TcpExt counters of timewait sockets, for a failure
// to say whether the kernel made, recycled, killed or could not make one.
func twCounters(t *testing.T, ns *netns) string {
	t.Helper()
	_, c, err := netconf.Read(ns.ino, 0)
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("TW %d, TWRecycled %d, TWKilled %d, TCPTimeWaitOverflow %d, TCPAbortOnData %d",
		c["TW"], c["TWRecycled"], c["TWKilled"], c["TCPTimeWaitOverflow"], c["TCPAbortOnData"])
}
