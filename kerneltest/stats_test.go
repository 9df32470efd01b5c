package kerneltest

import (
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/aggregate"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/filter"
	"github.com/tcptrace/tcptrace/timewait"
)

// After n real connections in a test namespace, every cell of the
// transition matrix that they make holds exactly n, the handshake and
// CLOSE_WAIT histograms n each, the listener's port n new connections,
// and the sockets per state match what ss lists at the end.
func TestStatsCounts(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	const n = 20
	agg := aggregate.New(0, time.Now())
	tr := startTracerFollow(t, filter.Filter{Netns: ns.ino}, timewait.Options{}, agg)
	// the client writes and closes; the server reads to the EOF and
	// closes: CLOSE_WAIT, LAST_ACK on the server, TIME_WAIT on the client
	lport, _ := connectN(t, ns, n, func(c net.Conn) error {
		_, err := c.Write([]byte("x"))
		return err
	}, func(c net.Conn) error {
		_, err := io.ReadAll(c)
		return err
	})
	tr.waitFor("every connection's end and the listener's", patience, func(evs []events.Event) bool {
		tw, lastAck, listenerEnd := 0, 0, 0
		for _, e := range evs {
			switch {
			case e.Old == events.FinWait2 && e.New == events.TimeWait:
				tw++
			case e.Old == events.LastAck && e.New == events.Close:
				lastAck++
			case e.Old == events.Listen && e.New == events.Close:
				listenerEnd++
			}
		}
		return tw == n && lastAck == n && listenerEnd == 1
	})
	tr.stop()
	iv := agg.Take(time.Now())

	want := map[[2]events.State]uint64{
		{events.Close, events.Listen}:          1,
		{events.Listen, events.Close}:          1,
		{events.Close, events.SynSent}:         n,
		{events.SynSent, events.Established}:   n,
		{events.Established, events.FinWait1}:  n,
		{events.FinWait1, events.FinWait2}:     n,
		{events.FinWait2, events.TimeWait}:     n,
		{events.Listen, events.SynRecv}:        n,
		{events.SynRecv, events.Established}:   n,
		{events.Established, events.CloseWait}: n,
		{events.CloseWait, events.LastAck}:     n,
		{events.LastAck, events.Close}:         n,
	}
	for o := range aggregate.States {
		for nw := range aggregate.States {
			cell := [2]events.State{events.State(o), events.State(nw)}
			if got := iv.Matrix[o][nw]; got != want[cell] {
				t.Errorf("%v -> %v: %d, want %d", cell[0], cell[1], got, want[cell])
			}
		}
	}
	if iv.Closes[events.CauseClosed] != n+1 {
		t.Errorf("orderly closes %d, want %d", iv.Closes[events.CauseClosed], n+1)
	}
	for _, h := range []int{aggregate.ClientHandshake, aggregate.ServerHandshake, aggregate.CloseWait} {
		if c := iv.Histograms[h].Count; c != n {
			t.Errorf("%s: %d, want %d", aggregate.HistogramNames[h], c, n)
		}
	}
	if p := iv.Ports[uint16(lport)]; p == nil || p.New != n || len(iv.Ports) != 1 {
		t.Errorf("ports: %v", iv.Ports)
	}
	// the clients' TIME_WAITs remain, as ss sees them; nothing else
	out, err := exec.Command("ip", "netns", "exec", ns.name, "ss", "-Htan", "state", "time-wait").Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	ss := len(strings.Split(strings.TrimSpace(string(out)), "\n"))
	sockets := agg.Sockets()
	if sockets[events.TimeWait] != int64(ss) || ss != n {
		t.Errorf("TIME_WAIT sockets: tcptrace %d, ss %d, want %d", sockets[events.TimeWait], ss, n)
	}
	for st, c := range sockets {
		if events.State(st) != events.TimeWait && c != 0 {
			t.Errorf("%d sockets in %v, want 0", c, events.State(st))
		}
	}
}
