package kerneltest

import (
	"cmp"
	"fmt"
	"net"
	"slices"
	"strconv"
	"testing"

	cgnames "github.com/tcptrace/tcptrace/cgroups"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/filter"
)

// Every filter keeps exactly what it should: tracers with one filter each
// watch the same traffic as an unfiltered one, and each must report exactly
// the unfiltered events that pass its filter, in the same order.
func TestFilters(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	const port6 = 8443
	addr4 := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	addr6 := net.JoinHostPort("::1", strconv.Itoa(port6))
	srv4 := ns.start(t, serverComm, "wait-eof", addr4, 0)
	cli4 := ns.start(t, clientComm, "close-first", addr4, 0)
	srv6 := ns.start(t, serverComm, "close-first", addr6, 0)
	cli6 := ns.start(t, clientComm, "wait-eof", addr6, 0)
	refused := ns.start(t, clientComm, "refused", net.JoinHostPort("127.0.0.1", "9"), 0)

	type want struct {
		name string
		opts filter.Filter
		keep func(events.Event) bool
	}
	in := func(states ...events.State) func(events.Event) bool {
		return func(e events.Event) bool {
			return slices.Contains(states, e.Old) || slices.Contains(states, e.New)
		}
	}
	// srv4's cgroup, found as --cgroup finds it: by its path
	root := cgnames.NewAt(cgroupRoot(t))
	srv4Cgroup, err := root.Find(root.Name(srv4.cgroup))
	if err != nil {
		t.Fatal(err)
	}
	filters := []want{
		{"--netns", filter.Filter{Netns: ns.ino}, func(e events.Event) bool { return true }},
		{"-4", filter.Filter{Netns: ns.ino, Family: 4}, func(e events.Event) bool { return e.Family == 4 }},
		{"-6", filter.Filter{Netns: ns.ino, Family: 6}, func(e events.Event) bool { return e.Family == 6 }},
		{"--lport", filter.Filter{Netns: ns.ino, LPorts: []uint16{port}}, func(e events.Event) bool { return e.LPort == port }},
		{"--rport", filter.Filter{Netns: ns.ino, RPorts: []uint16{port6, 9}}, func(e events.Event) bool { return e.RPort == port6 || e.RPort == 9 }},
		{"--port", filter.Filter{Netns: ns.ino, Ports: []uint16{port6}}, func(e events.Event) bool { return e.LPort == port6 || e.RPort == port6 }},
		{"--cgroup", filter.Filter{Netns: ns.ino, Cgroups: srv4Cgroup}, func(e events.Event) bool { return e.Cgroup == srv4.cgroup }},
		{"--pid", filter.Filter{Netns: ns.ino, PIDs: []uint32{cli4.pid, srv6.pid}}, func(e events.Event) bool { return e.PID == cli4.pid || e.PID == srv6.pid }},
		{"--comm", filter.Filter{Netns: ns.ino, Comm: serverComm}, func(e events.Event) bool { return e.CommString() == serverComm }},
		{"--state", filter.Filter{Netns: ns.ino, States: []events.State{events.TimeWait, events.Listen}}, in(events.TimeWait, events.Listen)},
		{"--state CLOSE_WAIT", filter.Filter{Netns: ns.ino, States: []events.State{events.CloseWait}}, in(events.CloseWait)},
	}
	all := startTracer(t, filter.Filter{}) // no filter: the whole host
	tracers := make([]*tracer, len(filters))
	for i, f := range filters {
		tracers[i] = startTracer(t, f.opts)
	}

	srv4.goAhead()
	srv4.expect("listening")
	srv6.goAhead()
	srv6.expect("listening")
	cli4.goAhead()
	cli6.goAhead()
	refused.goAhead()
	for _, p := range []*proc{cli4, cli6, refused, srv4, srv6} {
		p.expect("done")
		p.wait()
	}
	inNS := func(evs []events.Event) []events.Event {
		var out []events.Event
		for _, e := range evs {
			if e.Netns == ns.ino {
				out = append(out, e)
			}
		}
		return out
	}
	done := func(evs []events.Event) bool {
		evs = inNS(evs)
		return has(evs, clientSocket(evs, port), events.FinWait2, events.TimeWait) &&
			has(evs, childSocket(evs, port6), events.FinWait2, events.TimeWait) &&
			has(evs, listenerSocket(evs, port), events.Listen, events.Close) &&
			has(evs, listenerSocket(evs, port6), events.Listen, events.Close) &&
			has(evs, clientSocket(evs, 9), events.SynSent, events.Close)
	}
	all.waitFor("every connection done", patience, done)
	tracers[0].waitFor("every connection done", patience, done)
	// stopping drains each tracer's ring, so each has all it was sent
	base := inNS(all.stop())
	for _, x := range tracers {
		x.stop()
	}

	type key struct {
		sock     string
		old, new events.State
		cause    events.Cause
		pid      uint32
	}
	// transitions on different CPUs at the same moment reach each ring in
	// either order: compare each socket's own sequence. A socket is
	// known by its connection as its last record has it: where the
	// kernel names sockets by address, each tracer numbers their lives
	// its own way (sockets.Lives).
	keys := func(evs []events.Event) []key {
		conn := map[uint64]string{}
		for _, e := range evs {
			conn[e.Sock] = fmt.Sprintf("%v:%d %v:%d", e.LAddr, e.LPort, e.RAddr, e.RPort)
		}
		var out []key
		for _, e := range evs {
			out = append(out, key{conn[e.Sock], e.Old, e.New, e.Cause, e.PID})
		}
		slices.SortStableFunc(out, func(a, b key) int { return cmp.Compare(a.sock, b.sock) })
		return out
	}
	for i, f := range filters {
		var want []events.Event
		for _, e := range base {
			if f.keep(e) {
				want = append(want, e)
			}
		}
		got := tracers[i].col.snapshot()
		if len(want) == 0 || (len(want) == len(base) && f.name != "--netns") {
			t.Errorf("%s: the scenario does not exercise the filter (%d of %d events pass)", f.name, len(want), len(base))
		}
		if !slices.Equal(keys(got), keys(want)) {
			t.Errorf("%s: got\n%s\nwant\n%s", f.name, dump(got), dump(want))
		}
	}
}
