package stream

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/loader"
)

// fakeSource serves queued records in batches.
type fakeSource struct {
	mu       sync.Mutex
	recs     []events.Event
	detached bool
}

func newFake(n int) *fakeSource {
	s := &fakeSource{}
	for i := range n {
		s.recs = append(s.recs, events.Event{
			Kind: events.Transition, Sock: uint64(i + 1), Family: 4, Mono: uint64(i),
			LAddr: netip.MustParseAddr("127.0.0.1"), RAddr: netip.MustParseAddr("127.0.0.1"),
			Old: events.SynSent, New: events.Established,
		})
	}
	return s
}

func (s *fakeSource) ReadBatch(evs []events.Event, wait time.Duration) (int, error) {
	s.mu.Lock()
	n := copy(evs, s.recs)
	s.recs = s.recs[n:]
	s.mu.Unlock()
	if n == 0 {
		time.Sleep(time.Millisecond)
	}
	return n, nil
}

func (s *fakeSource) Wake()         {}
func (s *fakeSource) Detach() error { s.mu.Lock(); s.detached = true; s.mu.Unlock(); return nil }
func (s *fakeSource) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.recs) * events.RecordSize
}
func (s *fakeSource) Counts() (loader.Counts, error)      { return loader.Counts{}, nil }
func (s *fakeSource) Forget(*events.Event) error          { return nil }
func (s *fakeSource) Promote(*events.Event, uint64) error { return nil }

type sink struct{ n, flushes int }

func (w *sink) Write(*events.Event) error { w.n++; return nil }
func (w *sink) Flush() error              { w.flushes++; return nil }
func (w *sink) Close() error              { return nil }

// Stopping drains what the kernel produced: nothing captured is lost.
func TestStopDrains(t *testing.T) {
	src := newFake(5000)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	out := &sink{}
	st, err := Run(ctx, Config{Source: src, Out: out})
	if err != nil {
		t.Fatal(err)
	}
	if out.n != 5000 || st.Events != 5000 || !src.detached {
		t.Errorf("wrote %d, counted %d, detached %v; want all 5000", out.n, st.Events, src.detached)
	}
	if out.flushes == 0 {
		t.Error("output never flushed")
	}
}

func TestCount(t *testing.T) {
	out := &sink{}
	st, err := Run(context.Background(), Config{Source: newFake(1000), Out: out, Count: 10})
	if err != nil {
		t.Fatal(err)
	}
	if out.n != 10 || st.Events != 10 {
		t.Errorf("wrote %d, counted %d; want 10", out.n, st.Events)
	}
}
