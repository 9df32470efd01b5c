package kerneltest

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/report"
	"github.com/tcptrace/tcptrace/stuck"
)

// A CLOSE_WAIT leak older than tcptrace, as the engineer paged for it
// meets it: a worker holds 2 connections its clients closed, unread, and
// only then is tcptrace started. top (in tmux, --sort close-wait), stats and the agent name the
// worker for both from their start, and the agent's two CLOSE_WAIT series
// agree; 31 s into the leak, closewait --once with the default threshold
// (30 s) lists both, held by the worker, with an age of at least the
// leak's (from tcp_info's last ACK, the clients' FINs) and no more than it
// plus the run, and 5 unread bytes each.
func TestLeakOlderThanTracer(t *testing.T) {
	t.Parallel()
	requireBPF(t)
	ns := newNetns(t)
	const k = 2
	w := ns.start(t, workerComm, "", serverAddr(), 0, "TT_OWN=1", "TT_LEAK=1", "TT_CONNS=2")
	w.goAhead()
	w.expect("listening")
	before := time.Now()
	leakTo(t, ns, k)
	for range k {
		w.await("conn ")
	}
	w.await("held")
	began := time.Now()

	x := startTop(t, ns, "--sort", "close-wait", "--rows", "3")
	x.screen("the worker holding 2 CLOSE_WAITs, sorted by them", func(s string) bool {
		return holding(s, w.pid, workerComm, k) && strings.Contains(s, "sort (by CLOSE_WAIT held)")
	})

	out := startBinary(t, "stats", "--netns", ns.path, "--json", "--duration", "1s").wait(t)
	if st := decodeLast[report.JSON](t, out); len(st.CloseWaitHeld) != 1 ||
		st.CloseWaitHeld[0] != (report.Held{PID: w.pid, Comm: workerComm, Count: k}) {
		t.Errorf("stats close_wait_held %+v, want the worker's %d", st.CloseWaitHeld, k)
	}

	addr, _ := startAgentArgs(t, ns, tcptraceBinary(t), []string{"--closewait-threshold", "1s", "--diagnose-every", "1s"})
	want := map[string]float64{
		"tcptrace_process_close_wait_sockets,comm=" + workerComm: k,
		"tcptrace_close_wait_stuck_sockets,comm=" + workerComm:   k,
	}
	var m map[string]float64
	for deadline := time.Now().Add(patience); ; time.Sleep(200 * time.Millisecond) {
		m = scrape(t, addr)
		if m["tcptrace_process_close_wait_sockets,comm="+workerComm] == k && m["tcptrace_close_wait_stuck_sockets,comm="+workerComm] == k {
			break
		}
		if time.Now().After(deadline) {
			for key, v := range want {
				t.Errorf("%s = %v, want %v; the family's series: %v", key, m[key], v, family(m, key))
			}
			break
		}
	}

	time.Sleep(time.Until(began.Add(stuck.DefaultThreshold + time.Second)))
	r := startBinary(t, "closewait", "--netns", ns.path, "--json", "--once", "--duration", "2s")
	rep := decodeLast[stuck.Report](t, r.wait(t))
	var leaks []stuck.Socket
	for _, s := range rep.Sockets {
		if s.State == "CLOSE_WAIT" {
			leaks = append(leaks, s)
		}
	}
	if len(leaks) != k {
		t.Fatalf("%d CLOSE_WAIT sockets, want %d: %+v", len(leaks), k, rep.Sockets)
	}
	// the age is jiffies, in whole milliseconds: up to one jiffy (10 ms
	// at HZ=100) off either way; and the dump follows the report's time
	least, most := rep.Time.Sub(began)-10*time.Millisecond, rep.Time.Sub(before)+time.Second
	for _, s := range leaks {
		age := time.Duration(s.Age * float64(time.Second))
		if s.PID != w.pid || s.Comm != workerComm || s.AgeKnown || age < least || age > most || s.Unread != 5 {
			t.Errorf("leak %+v: want pid %d %s, an age of at least %v and at most %v, 5 unread bytes", s, w.pid, workerComm, least, most)
		}
	}
	if rep.Sockets[0].State != "CLOSE_WAIT" {
		t.Errorf("first row %+v, want a CLOSE_WAIT", rep.Sockets[0])
	}
	found := false
	for _, v := range rep.Verdicts {
		found = found || strings.Contains(v, "pid "+strconv.Itoa(int(w.pid))+" "+workerComm) && strings.Contains(v, " holds 2 connections in CLOSE_WAIT, the oldest for ≥ ")
	}
	if !found {
		t.Errorf("verdicts %q", rep.Verdicts)
	}
}
