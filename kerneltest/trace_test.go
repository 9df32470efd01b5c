package kerneltest

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/filter"
	"github.com/tcptrace/tcptrace/loader"
	"github.com/tcptrace/tcptrace/sockets"
	"github.com/tcptrace/tcptrace/stream"
	"github.com/tcptrace/tcptrace/timewait"
)

// requireBPF skips a test that cannot load the program, or fails it when
// TCPTRACE_REQUIRE_BPF=1 (CI) so a broken machine is never a pass.
func requireBPF(t *testing.T) {
	t.Helper()
	if err := loader.Check(); err != nil {
		if os.Getenv("TCPTRACE_REQUIRE_BPF") == "1" {
			t.Fatalf("BPF required: %v", err)
		}
		t.Skipf("needs BPF: %v", err)
	}
}

// collector is an output.Writer that keeps events for the test.
type collector struct {
	mu      sync.Mutex
	evs     []events.Event
	arrived []uint64 // CLOCK_MONOTONIC when each event reached the writer
}

func (c *collector) Write(e *events.Event) error {
	c.mu.Lock()
	c.evs = append(c.evs, *e)
	c.arrived = append(c.arrived, loader.Monotonic())
	c.mu.Unlock()
	return nil
}
func (c *collector) Flush() error { return nil }
func (c *collector) Close() error { return nil }

func (c *collector) snapshot() []events.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.evs)
}

// tracer is the whole pipeline, from the kernel to a collector.
type tracer struct {
	t      *testing.T
	col    *collector
	cancel context.CancelFunc
	done   chan struct{}
	stats  stream.Stats
	err    error
}

func startTracer(t *testing.T, f filter.Filter) *tracer {
	t.Helper()
	return startTracerFollow(t, f, timewait.Options{})
}

// startTracerFollow is startTracer with the timewait follower configured.
func startTracerFollow(t *testing.T, f filter.Filter, follow timewait.Options, more ...stream.Consumer) *tracer {
	t.Helper()
	col := &collector{}
	x := startTracerTo(t, loader.Options{}, f, follow, append([]stream.Consumer{col}, more...)...)
	x.col = col
	return x
}

// startTracerTo runs the pipeline into out, filtering what the follower
// makes with the kernel's filters, as tcptrace does.
func startTracerTo(t *testing.T, opts loader.Options, f filter.Filter, follow timewait.Options, out ...stream.Consumer) *tracer {
	t.Helper()
	requireBPF(t)
	opts.Filter = f.Kernel()
	if opts.RingSize == 0 {
		opts.RingSize = 1 << 20
	}
	tr, err := loader.Load(opts)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if err := tr.Attach(); err != nil {
		tr.Close()
		t.Fatalf("attach: %v", err)
	}
	seed, err := tr.Holders()
	if err != nil {
		tr.Close()
		t.Fatalf("holders: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	x := &tracer{t: t, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(x.done)
		defer tr.Close()
		x.stats, x.err = stream.Run(ctx, stream.Config{Source: tr, Consumers: out, Filter: f, Follow: follow, Seed: seed,
			Sockets: sockets.Options{NoNotes: !tr.SendNotes()},
			// what a user would see on stderr, for a failure to show
			Warn: func(msg string) { t.Logf("tracer warning: %s", msg) }})
	}()
	t.Cleanup(func() { x.cancel(); <-x.done })
	return x
}

// waitFor polls the events until cond holds, or fails after timeout.
func (x *tracer) waitFor(what string, timeout time.Duration, cond func([]events.Event) bool) []events.Event {
	x.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		evs := x.col.snapshot()
		if cond(evs) {
			return evs
		}
		if time.Now().After(deadline) {
			x.t.Fatalf("timed out after %v waiting for %s; events:\n%s", timeout, what, dump(evs))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop ends the stream and checks that nothing was lost.
func (x *tracer) stop() []events.Event {
	x.t.Helper()
	x.cancel()
	<-x.done
	if x.err != nil {
		x.t.Fatalf("stream: %v", x.err)
	}
	if x.stats.Lost != 0 {
		x.t.Errorf("lost %d events", x.stats.Lost)
	}
	if x.col == nil {
		return nil
	}
	if got := uint64(len(x.col.snapshot())); got != x.stats.Events {
		x.t.Errorf("stream counted %d events, wrote %d", x.stats.Events, got)
	}
	return x.col.snapshot()
}

func arrow(e events.Event) string { return e.Old.String() + "->" + e.New.String() }

func dump(evs []events.Event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "  sock=%x pid=%d comm=%s %s:%d %s:%d %s dwell=%v cause=%s\n",
			e.Sock, e.PID, e.CommString(), e.LAddr, e.LPort, e.RAddr, e.RPort, arrow(e), e.Dwell, e.Cause)
	}
	return b.String()
}

// socket returns the events of the socket whose first event matches first.
func socket(evs []events.Event, first func(events.Event) bool) []events.Event {
	for _, e := range evs {
		if first(e) {
			var out []events.Event
			for _, f := range evs {
				if f.Sock == e.Sock {
					out = append(out, f)
				}
			}
			return out
		}
	}
	return nil
}

func clientSocket(evs []events.Event, port uint16) []events.Event {
	return socket(evs, func(e events.Event) bool {
		return e.Old == events.Close && e.New == events.SynSent && e.RPort == port
	})
}

func childSocket(evs []events.Event, port uint16) []events.Event {
	return socket(evs, func(e events.Event) bool {
		return e.Old == events.Listen && e.New == events.SynRecv && e.LPort == port
	})
}

func listenerSocket(evs []events.Event, port uint16) []events.Event {
	return socket(evs, func(e events.Event) bool {
		return e.New == events.Listen && e.LPort == port
	})
}

func has(evs []events.Event, sock []events.Event, old, new events.State) bool {
	for _, e := range sock {
		if e.Old == old && e.New == new {
			return true
		}
	}
	return false
}

// checkSeq asserts a socket's exact transitions, each owned by p and in
// p's cgroup.
func checkSeq(t *testing.T, name string, sock []events.Event, p *proc, want ...string) {
	t.Helper()
	var got []string
	for _, e := range sock {
		got = append(got, arrow(e))
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s: transitions\n got  %v\n want %v\nevents:\n%s", name, got, want, dump(sock))
		return
	}
	for _, e := range sock {
		if e.PID != p.pid || e.CommString() != p.role {
			t.Errorf("%s: %s owned by pid %d %q, want %d %q", name, arrow(e), e.PID, e.CommString(), p.pid, p.role)
		}
		if e.Cgroup != p.cgroup {
			t.Errorf("%s: %s in cgroup %d, want %d", name, arrow(e), e.Cgroup, p.cgroup)
		}
	}
}

// find returns the socket's transition old -> new.
func find(t *testing.T, name string, sock []events.Event, old, new events.State) events.Event {
	t.Helper()
	for _, e := range sock {
		if e.Old == old && e.New == new {
			return e
		}
	}
	t.Fatalf("%s: no %s->%s in\n%s", name, old, new, dump(sock))
	return events.Event{}
}

// checkDwellAtLeast checks that e's time in its old state is known and
// at least lo: what the kernel's timers or the test's pauses make it.
func checkDwellAtLeast(t *testing.T, what string, e events.Event, lo time.Duration) {
	t.Helper()
	if !e.DwellKnown || e.Dwell < lo {
		t.Errorf("%s: dwell %v (known %v), want at least %v", what, e.Dwell, e.DwellKnown, lo)
	}
}

func checkCause(t *testing.T, what string, e events.Event, want events.Cause) {
	t.Helper()
	if e.Cause != want {
		t.Errorf("%s: cause %q, want %q", what, e.Cause, want)
	}
}
