package kerneltest

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/loader"
)

// Under full loopback churn, interrupts land while the program runs and
// the kernel skips it for the transitions they bring; tcptrace must still
// report every transition of every connection, nothing lost. The churn
// generator counts its connections; each must show its whole lifecycle.
//
// It runs alone (not in parallel), with a large ring and a recorder that
// keeps 16 bytes per event: the churn takes both cores, and a reader slowed
// by the test's own bookkeeping would lose records to a full ring, which is
// not what this test is about (the ring is sized in the benchmark).
func TestChurnLosesNothing(t *testing.T) {
	requireBPF(t)
	bin := filepath.Join(t.TempDir(), "churn")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/tcptrace/tcptrace/bench/churn").CombinedOutput(); err != nil {
		t.Fatalf("build churn: %v: %s", err, out)
	}
	ns := newNetns(t)
	rec := &recorder{evs: make([]compact, 0, 1<<20)}
	tr := startTracerTo(t, loader.Options{Netns: ns.ino, RingSize: 32 << 20}, rec)
	out, err := exec.Command("ip", "netns", "exec", ns.name, bin, "-d", "2s").CombinedOutput()
	if err != nil {
		t.Fatalf("churn: %v: %s", err, out)
	}
	var rate float64
	var conns int
	var secs float64
	if _, err := fmt.Sscanf(string(out), "connections/s: %f (%d in %fs", &rate, &conns, &secs); err != nil || conns < 1000 {
		t.Fatalf("churn output %q: %v", out, err)
	}

	// the last connections finish in softirq after the churn exits (the
	// final ACKs are in flight): wait until every connection is complete,
	// or give up after 10 s and report what is missing
	deadline := time.Now().Add(10 * time.Second)
	for {
		clients, children, bad := tally(t, rec.snapshot(), false)
		if clients == conns && children == conns && bad == 0 {
			break
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	tr.stop()
	clients, children, bad := tally(t, rec.evs, true)
	if clients != conns || children != conns || bad != 0 {
		t.Errorf("churn made %d connections; tcptrace saw %d clients and %d server sockets, %d incomplete", conns, clients, children, bad)
	}
	t.Logf("%d connections at %.0f/s, %d events, %d rescued from skipped runs", conns, rate, len(rec.evs), tr.stats.Rescued)
}

// tally checks every socket's transitions: clients must show the textbook
// close-first lifecycle, server sockets the passive one. With report, the
// first few incomplete ones are logged as errors.
func tally(t *testing.T, evs []compact, report bool) (clients, children, bad int) {
	seqs := map[uint64][]string{}
	var order []uint64
	for _, e := range evs {
		if _, ok := seqs[e.sock]; !ok {
			order = append(order, e.sock)
		}
		seqs[e.sock] = append(seqs[e.sock], e.old.String()+"->"+e.new.String())
	}
	fail := func(format string, a ...any) {
		bad++
		if report && bad < 5 {
			t.Errorf(format, a...)
		}
	}
	for _, sock := range order {
		seq := seqs[sock]
		switch seq[0] {
		case "CLOSE->SYN_SENT":
			clients++
			// a TIME_WAIT may already have been ended by a newer
			// connection on the same port
			if len(seq) == len(clientClosesFirst)+1 && seq[len(seq)-1] == "TIME_WAIT->CLOSE" {
				seq = seq[:len(seq)-1]
			}
			if !slices.Equal(seq, clientClosesFirst) {
				fail("client %x: %v", sock, seqs[sock])
			}
		case "LISTEN->SYN_RECV":
			children++
			if !slices.Equal(seq, serverPassive) {
				fail("server child %x: %v", sock, seq)
			}
		case "CLOSE->LISTEN":
		default:
			fail("socket %x starts with %v", sock, seq)
		}
	}
	return clients, children, bad
}

// compact is what the churn test keeps of an event.
type compact struct {
	sock     uint64
	old, new events.State
}

// recorder is an output.Writer keeping compact events in a preallocated
// slice; the stream calls it from one goroutine.
type recorder struct {
	mu  sync.Mutex
	evs []compact
}

func (r *recorder) Write(e *events.Event) error {
	r.mu.Lock()
	r.evs = append(r.evs, compact{e.Sock, e.Old, e.New})
	r.mu.Unlock()
	return nil
}
func (r *recorder) Flush() error { return nil }
func (r *recorder) Close() error { return nil }

func (r *recorder) snapshot() []compact {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.evs)
}
