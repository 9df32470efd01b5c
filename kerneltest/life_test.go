package kerneltest

import (
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/filter"
	"github.com/tcptrace/tcptrace/life"
	"github.com/tcptrace/tcptrace/timewait"
)

// n real connections give exactly 2n records, one per end: each client
// ends entering TIME_WAIT having closed first (a half-close: it shuts its
// side, then reads the answer), each server at CLOSE, the peer having
// closed first; every record with its handshake and the bytes each side
// really sent and received (100 up, 1000 down); the listener gives none.
func TestLifeRecords(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	const n, up, down = 10, 100, 1000
	var mu sync.Mutex
	var conns []life.Conn
	tracker := life.New(0, func(c *life.Conn) error {
		mu.Lock()
		conns = append(conns, *c)
		mu.Unlock()
		return nil
	}, func() error { return nil })
	tr := startTracerFollow(t, filter.Filter{Netns: ns.ino}, timewait.Options{}, tracker)
	lport, ports := connectN(t, ns, n, func(c net.Conn) error {
		c.Write(make([]byte, up))
		c.(*net.TCPConn).CloseWrite()
		if got, err := io.ReadAll(c); err != nil || len(got) != down {
			return fmt.Errorf("client read %d bytes, %v", len(got), err)
		}
		return nil
	}, func(c net.Conn) error {
		got, err := io.ReadAll(c)
		if err == nil && len(got) != up {
			err = fmt.Errorf("server read %d bytes, want %d", len(got), up)
		}
		if err == nil {
			_, err = c.Write(make([]byte, down))
		}
		return err
	})
	clients := map[uint16]bool{}
	for _, p := range ports {
		clients[p] = true
	}
	tr.waitFor("every end", patience, func(evs []events.Event) bool {
		ends := 0
		for _, e := range evs {
			if e.New == events.TimeWait || e.Old == events.LastAck && e.New == events.Close {
				ends++
			}
		}
		return ends == 2*n
	})
	tr.stop()
	mu.Lock()
	defer mu.Unlock()
	if len(conns) != 2*n {
		t.Fatalf("%d records, want %d: %+v", len(conns), 2*n, conns)
	}
	seenClient, seenServer := map[uint16]int{}, map[uint16]int{}
	for _, c := range conns {
		ok := c.Whole && c.Handshake > 0 && c.Handshake < time.Second && c.Duration > 0
		switch c.Role {
		case life.Client:
			seenClient[c.LPort]++
			ok = ok && c.EndedBy == "time_wait" && c.ClosedBy == life.Local && c.RPort == lport &&
				c.Sent == up && c.Received == down
		case life.Server:
			seenServer[c.RPort]++
			ok = ok && c.EndedBy == "closed" && c.ClosedBy == life.Remote && c.LPort == lport &&
				c.Sent == down && c.Received == up
		default:
			ok = false
		}
		if !ok {
			t.Errorf("record %+v", c)
		}
	}
	for p := range clients {
		if seenClient[p] != 1 || seenServer[p] != 1 {
			t.Errorf("client port %d: %d client records, %d server records", p, seenClient[p], seenServer[p])
		}
	}
}
