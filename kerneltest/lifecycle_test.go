package kerneltest

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/filter"
	"github.com/tcptrace/tcptrace/timewait"
)

const port = 8080

// conn is one connection between a server and a client process.
type conn struct {
	srv, cli *proc
}

func newConn(t *testing.T, ns *netns, host, srvMode, cliMode string, pause time.Duration) *conn {
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	return &conn{
		srv: ns.start(t, serverComm, srvMode, addr, pause),
		cli: ns.start(t, clientComm, cliMode, addr, 0),
	}
}

// run lets the server listen, the client connect, and both finish.
func (c *conn) run() {
	c.srv.goAhead()
	c.srv.expect("listening")
	c.cli.goAhead()
	c.cli.expect("done")
	c.cli.wait()
	c.srv.expect("done")
	c.srv.wait()
}

var (
	clientClosesFirst = []string{"CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2", "FIN_WAIT2->TIME_WAIT"}
	serverPassive     = []string{"LISTEN->SYN_RECV", "SYN_RECV->ESTABLISHED", "ESTABLISHED->CLOSE_WAIT", "CLOSE_WAIT->LAST_ACK", "LAST_ACK->CLOSE"}
	listener          = []string{"CLOSE->LISTEN", "LISTEN->CLOSE"}
)

// The textbook: the client closes first and ends in TIME_WAIT; the server
// goes through CLOSE_WAIT and LAST_ACK. With the server pausing before its
// close, the client's dead FIN_WAIT2 waits in a timewait mini-socket, which
// the kernel reports as FIN_WAIT2 -> CLOSE at once; tcptrace must report
// FIN_WAIT2 -> TIME_WAIT when the server's FIN arrives, found from the
// server's close (peer match) or through sock_diag.
func TestClientClosesFirst(t *testing.T) {
	for _, tc := range []struct {
		name        string
		host        string
		pause       time.Duration
		noPeerMatch bool
	}{
		{"ipv4/server closes at once", "127.0.0.1", 0, false},
		{"ipv4/server waits 300ms", "127.0.0.1", 300 * time.Millisecond, false},
		{"ipv4/server waits 300ms/sock_diag", "127.0.0.1", 300 * time.Millisecond, true},
		{"ipv6/server closes at once", "::1", 0, false},
		{"ipv6/server waits 300ms", "::1", 300 * time.Millisecond, false},
		{"ipv6/server waits 300ms/sock_diag", "::1", 300 * time.Millisecond, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ns := newNetns(t)
			c := newConn(t, ns, tc.host, "wait-eof", "close-first", tc.pause)
			tr := startTracerFollow(t, filter.Filter{Netns: ns.ino}, timewait.Options{NoPeerMatch: tc.noPeerMatch})
			c.run()
			tr.waitFor("client TIME_WAIT and listener close", patience, func(evs []events.Event) bool {
				return has(evs, clientSocket(evs, port), events.FinWait2, events.TimeWait) &&
					has(evs, listenerSocket(evs, port), events.Listen, events.Close)
			})
			evs := tr.stop()

			cli := clientSocket(evs, port)
			checkSeq(t, "client", cli, c.cli, clientClosesFirst...)
			tw := find(t, "client", cli, events.FinWait2, events.TimeWait)
			// the server's FIN, which ends FIN_WAIT2, comes a pause after
			// it read the client's: FIN_WAIT1 and FIN_WAIT2 together
			// last at least the pause. (The ACK that ends FIN_WAIT1 may
			// be delayed: tens of ms here, hundreds under emulation.)
			// Through sock_diag alone the kernel's own answer decides:
			// under emulation (make test-kernels), in the first run
			// after boot, an exact lookup has answered TIME_WAIT, with
			// this connection's cookie, 17 to 45 ms after FIN_WAIT1 and
			// long before the server's FIN; that is not explained yet
			// (see README "Limits"), and is not held against tcptrace.
			fw1 := find(t, "client", cli, events.Established, events.FinWait1)
			lo := tc.pause * 9 / 10
			if tc.noPeerMatch {
				lo = 0
			}
			if d := time.Duration(tw.Mono - fw1.Mono); !tw.DwellKnown || d < lo || tw.Mono < fw1.Mono {
				t.Errorf("client FIN_WAIT1 to TIME_WAIT: %v (dwell known %v), want at least %v:\n%s", d, tw.DwellKnown, lo, dump(evs))
			}

			srv := childSocket(evs, port)
			checkSeq(t, "server", srv, c.srv, serverPassive...)
			checkDwellAtLeast(t, "server CLOSE_WAIT", find(t, "server", srv, events.CloseWait, events.LastAck), tc.pause)
			checkCause(t, "server LAST_ACK->CLOSE", find(t, "server", srv, events.LastAck, events.Close), events.CauseClosed)

			lis := listenerSocket(evs, port)
			checkSeq(t, "listener", lis, c.srv, listener...)
			checkCause(t, "listener close", lis[len(lis)-1], events.CauseClosed)

			// addresses: the client's local port is only known after SYN_SENT
			want := net.ParseIP(tc.host)
			for _, e := range append(cli, srv...) {
				if !net.IP(e.LAddr.AsSlice()).Equal(want) || !net.IP(e.RAddr.AsSlice()).Equal(want) {
					t.Errorf("%s: addresses %v -> %v, want %v", arrow(e), e.LAddr, e.RAddr, want)
				}
			}
			if cli[1].LPort == 0 || cli[1].LPort != srv[0].RPort || srv[0].LPort != port {
				t.Errorf("ports: client %d->%d, server child %d->%d", cli[1].LPort, cli[1].RPort, srv[0].LPort, srv[0].RPort)
			}
		})
	}
}

// The server closes first: TIME_WAIT lands on the server's socket, and
// the client goes through CLOSE_WAIT and LAST_ACK.
func TestServerClosesFirst(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	c := newConn(t, ns, "127.0.0.1", "close-first", "wait-eof", 0)
	tr := startTracer(t, filter.Filter{Netns: ns.ino})
	c.run()
	tr.waitFor("server TIME_WAIT and listener close", patience, func(evs []events.Event) bool {
		return has(evs, childSocket(evs, port), events.FinWait2, events.TimeWait) &&
			has(evs, listenerSocket(evs, port), events.Listen, events.Close)
	})
	evs := tr.stop()
	checkSeq(t, "server", childSocket(evs, port), c.srv,
		"LISTEN->SYN_RECV", "SYN_RECV->ESTABLISHED", "ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2", "FIN_WAIT2->TIME_WAIT")
	cli := clientSocket(evs, port)
	checkSeq(t, "client", cli, c.cli,
		"CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->CLOSE_WAIT", "CLOSE_WAIT->LAST_ACK", "LAST_ACK->CLOSE")
	checkCause(t, "client close", cli[len(cli)-1], events.CauseClosed)
}

// Connecting to a port nobody listens on: the RST answers the SYN.
func TestRefused(t *testing.T) {
	t.Parallel()
	for _, host := range []string{"127.0.0.1", "::1"} {
		t.Run(host, func(t *testing.T) {
			ns := newNetns(t)
			cli := ns.start(t, clientComm, "refused", net.JoinHostPort(host, strconv.Itoa(port)), 0)
			tr := startTracer(t, filter.Filter{Netns: ns.ino})
			cli.goAhead()
			cli.expect("done")
			cli.wait()
			tr.waitFor("refused close", patience, func(evs []events.Event) bool {
				return has(evs, clientSocket(evs, port), events.SynSent, events.Close)
			})
			evs := tr.stop()
			sock := clientSocket(evs, port)
			checkSeq(t, "client", sock, cli, "CLOSE->SYN_SENT", "SYN_SENT->CLOSE")
			checkCause(t, "client close", sock[1], events.CauseRefused)
			if len(evs) != 2 {
				t.Errorf("want exactly 2 events in the namespace, got\n%s", dump(evs))
			}
		})
	}
}

// SO_LINGER 0: the client aborts with a RST, the server receives it.
func TestAbortiveClose(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	c := newConn(t, ns, "127.0.0.1", "expect-rst", "linger0", 0)
	tr := startTracer(t, filter.Filter{Netns: ns.ino})
	c.run()
	tr.waitFor("both closes", patience, func(evs []events.Event) bool {
		return has(evs, clientSocket(evs, port), events.Established, events.Close) &&
			has(evs, childSocket(evs, port), events.Established, events.Close)
	})
	evs := tr.stop()
	cli := clientSocket(evs, port)
	checkSeq(t, "client", cli, c.cli, "CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->CLOSE")
	checkCause(t, "client close", cli[len(cli)-1], events.CauseResetSent)
	srv := childSocket(evs, port)
	checkSeq(t, "server", srv, c.srv, "LISTEN->SYN_RECV", "SYN_RECV->ESTABLISHED", "ESTABLISHED->CLOSE")
	checkCause(t, "server close", srv[len(srv)-1], events.CauseResetReceived)
}

// A CLOSE_WAIT leak seen from the other side: the server never closes, so
// the client's dead FIN_WAIT2 mini-socket runs out its tcp_fin_timeout
// (2 s here) and goes away, found through sock_diag.
func TestFinWait2Timeout(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	ns.sysctl(t, "net.ipv4.tcp_fin_timeout", "2")
	c := newConn(t, ns, "127.0.0.1", "hold", "close-first", 4*time.Second)
	tr := startTracer(t, filter.Filter{Netns: ns.ino})
	c.srv.goAhead()
	c.srv.expect("listening")
	c.cli.goAhead()
	c.cli.expect("done")
	c.cli.wait()
	tr.waitFor("client FIN_WAIT2 timeout", patience, func(evs []events.Event) bool {
		return has(evs, clientSocket(evs, port), events.FinWait2, events.Close)
	})
	evs := tr.stop()
	cli := clientSocket(evs, port)
	checkSeq(t, "client", cli, c.cli, "CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2", "FIN_WAIT2->CLOSE")
	end := cli[len(cli)-1]
	checkCause(t, "client FIN_WAIT2 end", end, events.CauseTimeout)
	// the kernel's 2 s timer: the mini-socket cannot end before it
	checkDwellAtLeast(t, "client FIN_WAIT2", end, 2*time.Second)
	srv := childSocket(evs, port)
	checkSeq(t, "server", srv, c.srv, "LISTEN->SYN_RECV", "SYN_RECV->ESTABLISHED", "ESTABLISHED->CLOSE_WAIT")
	c.srv.expect("done")
	c.srv.wait()
}

// An orphan that dies by a reset: the client closes first, and its
// socket, an orphan parked in FIN_WAIT2 (a timewait mini-socket), takes
// the data the server writes 300 ms later, answers with a reset and is
// freed. tcptrace ends it then, FIN_WAIT2 -> CLOSE reset_sent, when it
// sends that reset (tcp_send_reset), or where the kernel does not report
// a mini-socket's, when the server takes it (CLOSE_WAIT -> CLOSE
// reset_received): not at a later sock_diag poll.
func TestOrphanResetEnd(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	c := newConn(t, ns, "127.0.0.1", "write-after-eof", "close-first", 300*time.Millisecond)
	tr := startTracer(t, filter.Filter{Netns: ns.ino})
	c.run()
	tr.waitFor("the client's end", patience, func(evs []events.Event) bool {
		return has(evs, clientSocket(evs, port), events.FinWait2, events.Close)
	})
	evs := tr.stop()
	cli := clientSocket(evs, port)
	checkSeq(t, "client", cli, c.cli, "CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2", "FIN_WAIT2->CLOSE")
	end := cli[len(cli)-1]
	checkCause(t, "client end", end, events.CauseResetSent)
	// FIN_WAIT2 began with the server's ACK of the FIN, which may be
	// delayed (up to 40 ms) past the server's read of it, and its pause
	checkDwellAtLeast(t, "client FIN_WAIT2", end, 250*time.Millisecond)
	srv := childSocket(evs, port)
	checkSeq(t, "server", srv, c.srv, "LISTEN->SYN_RECV", "SYN_RECV->ESTABLISHED", "ESTABLISHED->CLOSE_WAIT", "CLOSE_WAIT->CLOSE")
	reset := srv[len(srv)-1]
	checkCause(t, "server end", reset, events.CauseResetReceived)
	// the client's mini-socket sends the reset and dies, then the
	// server takes it: microseconds apart on hardware, milliseconds under
	// emulation; a poll would have found the end a second later
	if d := time.Duration(int64(end.Mono) - int64(reset.Mono)); d > time.Millisecond || d < -50*time.Millisecond {
		t.Errorf("the client's end is %v from the reset the server took, want at most 1ms after it and 50ms before", d)
	}
}

// TIME_WAIT lasts 2·MSL, 60 s on Linux; its end fires no tracepoint and is
// found through sock_diag. Slow: runs in parallel with the rest.
func TestTimeWaitEnds(t *testing.T) {
	if testing.Short() {
		t.Skip("takes over 60 s")
	}
	t.Parallel()
	ns := newNetns(t)
	c := newConn(t, ns, "127.0.0.1", "wait-eof", "close-first", 0)
	tr := startTracer(t, filter.Filter{Netns: ns.ino})
	c.run()
	tr.waitFor("client TIME_WAIT end", 75*time.Second, func(evs []events.Event) bool {
		return has(evs, clientSocket(evs, port), events.TimeWait, events.Close)
	})
	evs := tr.stop()
	cli := clientSocket(evs, port)
	checkSeq(t, "client", cli, c.cli, append(clientClosesFirst, "TIME_WAIT->CLOSE")...)
	end := cli[len(cli)-1]
	checkCause(t, "TIME_WAIT end", end, events.CauseClosed)
	// the kernel's 60 s timer: it sits in a timer-wheel level whose
	// granularity is about 4 s, so it fires up to that late, and tcptrace
	// looks again every 100 ms once it is due (how late is a clock bound,
	// for make bench)
	checkDwellAtLeast(t, "client TIME_WAIT", end, 60*time.Second)
	if got := end.Time.Sub(find(t, "client", cli, events.FinWait2, events.TimeWait).Time); got < 60*time.Second {
		t.Errorf("TIME_WAIT -> CLOSE came %v after TIME_WAIT, want at least 60s", got)
	}
}

// Two processes listen on one port with SO_REUSEPORT, and the kernel picks
// one for each connection. A child belongs to the process whose listener it
// was cloned from, which is the one that accepts it: a table of listeners
// by port could not tell the two apart.
func TestReuseportOwners(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	srvs := []*proc{
		ns.start(t, serverComm, "reuseport", addr, 0),
		ns.start(t, serverComm, "reuseport", addr, 0),
	}
	tr := startTracer(t, filter.Filter{Netns: ns.ino})
	for _, s := range srvs {
		s.goAhead()
		s.expect("listening")
	}
	// 16 connections: all on one listener by chance is 1 in 32768
	const conns = 16
	for range conns {
		cli := ns.start(t, clientComm, "close-first", addr, 0)
		cli.goAhead()
		cli.expect("done")
		cli.wait()
	}
	accepted := make([][]uint16, len(srvs))
	for i, s := range srvs {
		s.goAhead()
		for line := range s.lines {
			if line == "done" {
				break
			}
			p, err := strconv.Atoi(strings.TrimPrefix(line, "peer "))
			if err != nil {
				t.Fatalf("server %d: unexpected line %q", i, line)
			}
			accepted[i] = append(accepted[i], uint16(p))
		}
		s.wait()
	}
	if len(accepted[0])+len(accepted[1]) != conns || len(accepted[0]) == 0 || len(accepted[1]) == 0 {
		t.Fatalf("want %d connections spread over both servers, got %v", conns, accepted)
	}
	closed := func(evs []events.Event) int {
		n := 0
		for _, e := range evs {
			if e.LPort == port && e.Old == events.LastAck && e.New == events.Close {
				n++
			}
		}
		return n
	}
	tr.waitFor("every child closed", patience, func(evs []events.Event) bool { return closed(evs) == conns })
	evs := tr.stop()
	for i, s := range srvs {
		for _, peer := range accepted[i] {
			child := socket(evs, func(e events.Event) bool {
				return e.Old == events.Listen && e.New == events.SynRecv && e.LPort == port && e.RPort == peer
			})
			checkSeq(t, "server "+strconv.Itoa(i)+" child of :"+strconv.Itoa(int(peer)), child, s, serverPassive...)
		}
	}
}
