package kerneltest

import (
	"context"
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
	clients := map[uint16]bool{}
	var lport uint16
	inNetns(t, ns, func() {
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(false)
		ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lport = uint16(ln.Addr().(*net.TCPAddr).Port)
		done := make(chan error, n)
		go func() {
			for range n {
				c, err := ln.Accept()
				if err != nil {
					done <- err
					return
				}
				got, err := io.ReadAll(c)
				if err == nil && len(got) != up {
					err = fmt.Errorf("server read %d bytes, want %d", len(got), up)
				}
				if err == nil {
					_, err = c.Write(make([]byte, down))
				}
				c.Close()
				done <- err
			}
		}()
		d := net.Dialer{}
		d.SetMultipathTCP(false)
		for range n {
			c, err := d.Dial("tcp4", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			clients[uint16(c.LocalAddr().(*net.TCPAddr).Port)] = true
			c.Write(make([]byte, up))
			c.(*net.TCPConn).CloseWrite()
			if got, err := io.ReadAll(c); err != nil || len(got) != down {
				t.Fatalf("client read %d bytes, %v", len(got), err)
			}
			c.Close()
		}
		for range n {
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		}
		ln.Close()
	})
	tr.waitFor("every end", 5*time.Second, func(evs []events.Event) bool {
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
