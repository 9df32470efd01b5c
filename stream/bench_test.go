package stream

import (
	"context"
	"io"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/loader"
	"github.com/tcptrace/tcptrace/output"
)

// churnSource makes the records of a loopback client-close churn as fast
// as the pipeline takes them: per connection, both sides' eleven
// transitions and the server's holder note, staged on two CPUs in
// batches of 16, with client ports reused as the kernel reuses TIME_WAIT
// tuples. It drives the pipeline harder than a kernel churn can.
type churnSource struct {
	mono     uint64
	conn     uint64
	conn11   [11]events.Event // the current connection's records
	next     int              // the next of them to read
	staged   int              // records into the current CPU's batch
	cpu      uint32
	detached atomic.Bool
}

var lo = netip.MustParseAddr("127.0.0.1")

func (s *churnSource) connection() {
	s.conn++
	cli, srv := 2*s.conn, 2*s.conn+1
	cport := uint16(32768 + s.conn%28000)
	rec := func(sock uint64, old, new events.State, pid uint32, lport, rport uint16) events.Event {
		e := events.Event{Kind: events.Transition, Sock: sock, Family: 4, LAddr: lo, RAddr: lo,
			LPort: lport, RPort: rport, Old: old, New: new, PID: pid, Netns: 1}
		if pid != 0 {
			copy(e.Comm[:], "churn")
		}
		return e
	}
	child := rec(srv, events.Listen, events.SynRecv, 7, 0, 0)
	child.Listener = 1
	holding := events.Event{Kind: events.Holding, Sock: srv, PID: 7}
	closed := rec(srv, events.LastAck, events.Close, 0, 8080, cport)
	closed.Cause = events.CauseClosed
	s.next = 0
	s.conn11 = [11]events.Event{
		rec(cli, events.Close, events.SynSent, 7, 0, 8080),
		rec(cli, events.SynSent, events.Established, 0, cport, 8080),
		child,
		rec(srv, events.SynRecv, events.Established, 0, 8080, cport),
		holding,
		rec(cli, events.Established, events.FinWait1, 7, cport, 8080),
		rec(srv, events.Established, events.CloseWait, 0, 8080, cport),
		rec(cli, events.FinWait1, events.FinWait2, 0, cport, 8080),
		rec(srv, events.CloseWait, events.LastAck, 7, 8080, cport),
		rec(cli, events.FinWait2, events.TimeWait, 0, cport, 8080),
		closed,
	}
}

func (s *churnSource) ReadBatch(evs []events.Event, wait time.Duration) (int, error) {
	if s.detached.Load() {
		return 0, nil
	}
	for i := range evs {
		if s.conn == 0 || s.next == len(s.conn11) {
			s.connection()
		}
		s.mono += 700 // ns: about 1.4M records/s of kernel time
		evs[i] = s.conn11[s.next]
		s.next++
		evs[i].Mono = s.mono
		// each CPU's records come in batches of 16, in time order
		if s.staged++; s.staged == 16 {
			s.staged, s.cpu = 0, 1-s.cpu
		}
		evs[i].Src = s.cpu + 1
	}
	return len(evs), nil
}

func (s *churnSource) Settle() (bool, error) { return true, nil }
func (s *churnSource) Wake()                 {}
func (s *churnSource) Detach() error         { s.detached.Store(true); return nil }
func (s *churnSource) Pending() int          { return 0 }
func (s *churnSource) Counts() (loader.Counts, error) {
	return loader.Counts{}, nil
}
func (s *churnSource) Holders() ([]events.Holder, error) { return nil, nil }

// BenchmarkPipeline is the user-space pipeline's ceiling: every record
// from the ring to JSON on io.Discard (decoding aside: see events'
// benchmarks), one goroutine for the reader and one for the rest, as
// tcptrace runs. ns/op is per record shown.
func BenchmarkPipeline(b *testing.B) {
	src := &churnSource{}
	b.ReportAllocs()
	b.ResetTimer()
	st, err := Run(context.Background(), Config{Source: src, Consumers: []Consumer{output.NewJSON(io.Discard)}, Count: uint64(b.N)})
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	if st.Events < uint64(b.N) {
		b.Fatalf("wrote %d of %d", st.Events, b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
