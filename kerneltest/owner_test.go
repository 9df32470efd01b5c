package kerneltest

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/filter"
	"github.com/tcptrace/tcptrace/loader"
)

// The owner is the process that holds the socket, also when servers hand
// sockets between processes: a daemon's listener outlives the process
// that made it, prefork workers accept from their master's listener, a
// supervisor hands its listener to a service, a connection is served by a
// process it was handed to after the accept.

var (
	handshake = []string{"LISTEN->SYN_RECV", "SYN_RECV->ESTABLISHED"}
	afterFIN  = []string{"ESTABLISHED->CLOSE_WAIT", "CLOSE_WAIT->LAST_ACK", "LAST_ACK->CLOSE"}
)

// spawned reads the pid a role printed on starting another ("tt-worker
// 1234").
func spawned(p *proc, role string) *proc {
	p.t.Helper()
	f := strings.Fields(p.await(role + " "))
	pid, err := strconv.Atoi(f[1])
	if err != nil {
		p.t.Fatalf("%s: bad line %q", p.role, f)
	}
	// a started process stays in its parent's cgroup
	return &proc{t: p.t, role: role, pid: uint32(pid), cgroup: p.cgroup}
}

// served reads which worker took the connection from client port
// cport ("conn <port> <pid>" lines).
func served(p *proc, conns int) map[int]uint32 {
	p.t.Helper()
	out := map[int]uint32{}
	for range conns {
		f := strings.Fields(p.await("conn "))
		port, _ := strconv.Atoi(f[1])
		pid, _ := strconv.Atoi(f[2])
		out[port] = uint32(pid)
	}
	return out
}

// serverOf returns the server side of the connection from client port
// cport.
func serverOf(evs []events.Event, cport uint16) []events.Event {
	return socket(evs, func(e events.Event) bool {
		return e.Old == events.Listen && e.New == events.SynRecv && e.RPort == cport
	})
}

// clientPort is the local port of the client socket p made.
func clientPort(t *testing.T, evs []events.Event, p *proc) uint16 {
	t.Helper()
	for _, e := range evs {
		if e.Old == events.SynSent && e.New == events.Established && e.PID == p.pid {
			return e.LPort
		}
	}
	t.Fatalf("no connection from %s (pid %d) in\n%s", p.role, p.pid, dump(evs))
	return 0
}

// named fails for every transition after the given time that names pid.
func neverNamed(t *testing.T, evs []events.Event, pid uint32, after uint64, why string) {
	t.Helper()
	for _, e := range evs {
		if e.PID == pid && e.Mono > after {
			t.Errorf("%s named pid %d, which %s", arrow(e), pid, why)
		}
	}
}

// exitedAt waits until pid has exited (a zombie, or gone) and returns
// CLOCK_MONOTONIC then.
func exitedAt(t *testing.T, pid uint32) uint64 {
	t.Helper()
	for deadline := time.Now().Add(patience); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(int(pid)) + "/stat")
		if err != nil {
			return loader.Monotonic()
		}
		if f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:])); len(f) > 0 && f[0] == "Z" {
			return loader.Monotonic()
		}
	}
	t.Fatalf("pid %d did not exit", pid)
	return 0
}

// timeWaits counts the clients' entries into TIME_WAIT.
func timeWaits(evs []events.Event) int {
	n := 0
	for _, e := range evs {
		if e.Old == events.FinWait2 && e.New == events.TimeWait {
			n++
		}
	}
	return n
}

// stopAfterOne waits for the end of one connection to serverAddr (the
// client's TIME_WAIT) and of its listener, then stops the tracer.
func (x *tracer) stopAfterOne() []events.Event {
	x.t.Helper()
	x.waitFor("the connection and the listener's end", patience, func(evs []events.Event) bool {
		return has(evs, listenerSocket(evs, port), events.Listen, events.Close) &&
			has(evs, clientSocket(evs, port), events.FinWait2, events.TimeWait)
	})
	return x.stop()
}

func serverAddr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// A daemonizing server: the process that calls listen() starts the one
// that serves and exits. Nothing after its exit may name it.
func TestOwnerDaemon(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	d := ns.start(t, daemonComm, "", serverAddr(), 300*time.Millisecond)
	cli := ns.start(t, clientComm, "request", serverAddr(), 0)
	tr := startTracer(t, filter.Filter{Netns: ns.ino})
	d.goAhead()
	w := spawned(d, workerComm)
	d.await("listening")
	gone := exitedAt(t, d.pid)
	cli.goAhead()
	cli.await("done")
	d.await("done")
	evs := tr.stopAfterOne()
	checkSeq(t, "server", serverOf(evs, clientPort(t, evs, cli)), w, append(handshake, afterFIN...)...)
	lst := listenerSocket(evs, port)
	checkSeq(t, "listen", lst[:1], d, "CLOSE->LISTEN")
	checkSeq(t, "listener close", lst[1:], w, "LISTEN->CLOSE")
	neverNamed(t, evs, d.pid, gone, "had exited")
}

// Prefork: a master listens and starts two workers, which accept; each
// holds its connection in CLOSE_WAIT for 300 ms. Every transition of a
// connection names the worker that took it.
func TestOwnerPrefork(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	m := ns.start(t, masterComm, "", serverAddr(), 300*time.Millisecond, "TT_WORKERS=2")
	clis := []*proc{ns.start(t, clientComm, "request", serverAddr(), 0), ns.start(t, clientComm, "request", serverAddr(), 0)}
	tr := startTracer(t, filter.Filter{Netns: ns.ino})
	m.goAhead()
	workers := map[uint32]*proc{}
	for range 2 {
		w := spawned(m, workerComm)
		workers[w.pid] = w
	}
	m.await("listening")
	for _, c := range clis {
		c.goAhead()
	}
	took := served(m, 2)
	for _, c := range clis {
		c.await("done")
	}
	m.await("done")
	tr.waitFor("both connections and the listener's end", patience, func(evs []events.Event) bool {
		return timeWaits(evs) == 2 && has(evs, listenerSocket(evs, port), events.Listen, events.Close)
	})
	evs := tr.stop()
	if len(took) != 2 {
		t.Fatalf("workers took %v, want two connections", took)
	}
	for _, c := range clis {
		cport := clientPort(t, evs, c)
		w := workers[took[int(cport)]]
		if w == nil {
			t.Fatalf("client port %d: no worker took it (%v)", cport, took)
		}
		checkSeq(t, "server of "+strconv.Itoa(int(cport)), serverOf(evs, cport), w, append(handshake, afterFIN...)...)
	}
	checkSeq(t, "listener", listenerSocket(evs, port), m, listener...)
}

// Socket activation: a supervisor makes the listener, starts the service
// with it and closes its own copy. Nothing after its listen() names it.
func TestOwnerSocketActivation(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	s := ns.start(t, superComm, "", serverAddr(), 0)
	cli := ns.start(t, clientComm, "request", serverAddr(), 0)
	tr := startTracer(t, filter.Filter{Netns: ns.ino})
	s.goAhead()
	w := spawned(s, workerComm)
	s.await("listening")
	cli.goAhead()
	cli.await("done")
	s.await("done")
	evs := tr.stopAfterOne()
	lst := listenerSocket(evs, port)
	checkSeq(t, "listen", lst[:1], s, "CLOSE->LISTEN")
	checkSeq(t, "listener close", lst[1:], w, "LISTEN->CLOSE")
	checkSeq(t, "server", serverOf(evs, clientPort(t, evs, cli)), w, append(handshake, afterFIN...)...)
	neverNamed(t, evs, s.pid, lst[0].Mono, "handed its listener on")
}

// A connection accepted in one process and served by another: started
// with it (fork after accept) or sent it over a unix socket (SCM_RIGHTS).
// The acceptor closes its copy at once; the handler holds CLOSE_WAIT for
// 300 ms. The handshake names the acceptor, which held the listener;
// everything after the accept, the handler.
func TestOwnerHandedOn(t *testing.T) {
	for _, mode := range []string{"fork", "scm"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			ns := newNetns(t)
			a := ns.start(t, acceptorComm, mode, serverAddr(), 300*time.Millisecond)
			cli := ns.start(t, clientComm, "request", serverAddr(), 0)
			tr := startTracer(t, filter.Filter{Netns: ns.ino})
			a.goAhead()
			var h *proc
			if mode == "scm" {
				h = spawned(a, handlerComm)
			}
			a.await("listening")
			cli.goAhead()
			if mode == "fork" {
				h = spawned(a, handlerComm)
			}
			cli.await("done")
			a.await("done")
			evs := tr.stopAfterOne()
			srv := serverOf(evs, clientPort(t, evs, cli))
			if len(srv) != 5 {
				t.Fatalf("server: %d transitions, want 5:\n%s", len(srv), dump(srv))
			}
			checkSeq(t, "handshake", srv[:2], a, handshake...)
			checkSeq(t, "after the accept", srv[2:], h, afterFIN...)
			checkSeq(t, "listener", listenerSocket(evs, port), a, listener...)
		})
	}
}

// A connection and a listener opened before the tracer starts: their
// first transitions after the start name the process that holds them, and
// the connection's time in its state is unknown. Go listens with MPTCP by
// default, which hides the TCP listener behind an MPTCP socket: both
// kinds are tried.
func TestOwnerBeforeStart(t *testing.T) {
	for _, mptcp := range []string{"0", "1"} {
		t.Run("mptcp="+mptcp, func(t *testing.T) {
			t.Parallel()
			ns := newNetns(t)
			srv := ns.start(t, workerComm, "", serverAddr(), 0, "TT_OWN=1", "TT_CONNS=2", "TT_MPTCP="+mptcp)
			early := ns.start(t, clientComm, "request-hold", serverAddr(), 0)
			late := ns.start(t, clientComm, "request", serverAddr(), 0)
			srv.goAhead()
			srv.await("listening")
			early.goAhead()
			early.await("connected")
			w := &proc{t: t, role: workerComm, pid: srv.pid, cgroup: srv.cgroup}

			tr := startTracer(t, filter.Filter{Netns: ns.ino})
			// the early connection ends after the start; a second one
			// comes through the early listener
			early.goAhead()
			early.await("done")
			late.goAhead()
			late.await("done")
			srv.await("done")
			tr.waitFor("both connections and the listener's end", patience, func(evs []events.Event) bool {
				return timeWaits(evs) == 2 && len(socket(evs, func(e events.Event) bool {
					return e.Old == events.Listen && e.New == events.Close && e.LPort == port
				})) == 1
			})
			evs := tr.stop()

			var old []events.Event
			for _, e := range evs {
				if e.Old == events.Established && e.New == events.CloseWait && e.LPort == port {
					old = socket(evs, func(f events.Event) bool { return f.Sock == e.Sock })
					break
				}
			}
			// the late connection has a handshake; the early one's first
			// transition is its CLOSE_WAIT
			if len(old) == 0 || old[0].Old != events.Established {
				t.Fatalf("no server connection from before the start:\n%s", dump(evs))
			}
			if old[0].DwellKnown {
				t.Errorf("early connection: dwell %v known, from before the start", old[0].Dwell)
			}
			checkSeq(t, "early connection", old, w, afterFIN...)
			checkSeq(t, "late connection", serverOf(evs, clientPort(t, evs, late)), w, append(handshake, afterFIN...)...)
			lst := socket(evs, func(e events.Event) bool { return e.Old == events.Listen && e.New == events.Close && e.LPort == port })
			checkSeq(t, "early listener", lst, w, "LISTEN->CLOSE")
		})
	}
}

// The owner's name is the process's, as ps and ss -p show it, not the
// name of the thread that made the call.
func TestOwnerCommIsTheProcess(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	c := newConn(t, ns, "127.0.0.1", "wait-eof", "renamed", 0)
	tr := startTracer(t, filter.Filter{Netns: ns.ino})
	c.run()
	tr.waitFor("client TIME_WAIT", patience, func(evs []events.Event) bool {
		return has(evs, clientSocket(evs, port), events.FinWait2, events.TimeWait)
	})
	evs := tr.stop()
	checkSeq(t, "client", clientSocket(evs, port), c.cli, clientClosesFirst...)
}
