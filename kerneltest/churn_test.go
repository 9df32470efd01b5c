package kerneltest

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/loader"
)

// Under full loopback churn, interrupts land while the program runs and
// the kernel skips it for the transitions they bring; tcptrace must still
// report every transition of every connection, nothing lost. The churn
// generator counts its connections; each must show its whole lifecycle.
func TestChurnLosesNothing(t *testing.T) {
	t.Parallel()
	requireBPF(t)
	bin := filepath.Join(t.TempDir(), "churn")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/tcptrace/tcptrace/bench/churn").CombinedOutput(); err != nil {
		t.Fatalf("build churn: %v: %s", err, out)
	}
	ns := newNetns(t)
	tr := startTracer(t, loader.Options{Netns: ns.ino, RingSize: 8 << 20})
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

	// every client's TIME_WAIT comes when its server closes, before the
	// churn exits; the listener closes last
	evs := tr.waitFor("the listener's close", 10*time.Second, func(evs []events.Event) bool {
		for _, e := range evs {
			if e.Old == events.Listen && e.New == events.Close {
				return true
			}
		}
		return false
	})
	evs = tr.stop()

	seqs := map[uint64][]string{}
	var order []uint64
	for _, e := range evs {
		if _, ok := seqs[e.Sock]; !ok {
			order = append(order, e.Sock)
		}
		seqs[e.Sock] = append(seqs[e.Sock], arrow(e))
	}
	var clients, children, bad int
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
				bad++
				if bad < 5 {
					t.Errorf("client %x: %v", sock, seqs[sock])
				}
			}
		case "LISTEN->SYN_RECV":
			children++
			if !slices.Equal(seq, serverPassive) {
				bad++
				if bad < 5 {
					t.Errorf("server child %x: %v", sock, seq)
				}
			}
		case "CLOSE->LISTEN":
		default:
			bad++
			t.Errorf("socket %x starts with %v", sock, seq)
		}
	}
	if clients != conns || children != conns || bad != 0 {
		t.Errorf("churn made %d connections; tcptrace saw %d clients and %d server sockets, %d incomplete", conns, clients, children, bad)
	}
	t.Logf("%d connections at %.0f/s, %d events, %d rescued from skipped runs", conns, rate, len(evs), tr.stats.Rescued)
}
