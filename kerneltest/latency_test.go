package kerneltest

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/filter"
)

// On an idle system the program does not wake the reader for each event,
// and each CPU keeps its records staged until it has 16; the reader
// settles every 50 ms instead (flushes every CPU's staged records and
// its mark, reads the ring, releases what every CPU's mark has passed).
// Every event must still reach the output, with no traffic after it to
// fill a batch or wake the reader.
func TestLatencyWhenIdle(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	c := newConn(t, ns, "127.0.0.1", "wait-eof", "close-first", 0)
	refused := ns.start(t, clientComm, "refused", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+1)), 0)
	tr := startTracer(t, filter.Filter{Netns: ns.ino})
	c.run()
	refused.goAhead()
	refused.expect("done")
	refused.wait()
	tr.waitFor("every event", patience, func(evs []events.Event) bool {
		return has(evs, clientSocket(evs, port), events.FinWait2, events.TimeWait) &&
			has(evs, listenerSocket(evs, port), events.Listen, events.Close) &&
			has(evs, clientSocket(evs, port+1), events.SynSent, events.Close)
	})
	tr.stop()
	tr.col.mu.Lock()
	defer tr.col.mu.Unlock()
	if len(tr.col.evs) != 14 {
		t.Fatalf("want 14 events, got %d:\n%s", len(tr.col.evs), dump(tr.col.evs))
	}
	var worst time.Duration
	for i, e := range tr.col.evs {
		worst = max(worst, time.Duration(tr.col.arrived[i]-e.Mono))
	}
	// how soon is a clock bound, for make bench: here, that nothing
	// stayed staged with no more traffic to push it out
	t.Logf("worst latency %v over %d events", worst, len(tr.col.evs))
}
