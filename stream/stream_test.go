package stream

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/filter"
	"github.com/tcptrace/tcptrace/loader"
)

// fakeSource serves queued records in batches of at most chunk (if set),
// as staged on CPU 0 unless they say otherwise. The ring starts with a
// mark for each of cpus, as loader.Tracer.Attach leaves it. Records in
// staged are still on their CPU: Settle moves them to the ring, followed
// by a mark at now for each CPU.
type fakeSource struct {
	mu       sync.Mutex
	recs     []events.Event
	staged   []events.Event
	now      uint64
	cpus     int
	chunk    int
	detached bool
}

func newFake(n int) *fakeSource {
	s := &fakeSource{now: 1 << 62, cpus: 2}
	for c := range s.cpus {
		s.recs = append(s.recs, events.Event{Kind: events.Mark, Mono: 1, Src: uint32(c + 1)})
	}
	for i := range n {
		s.recs = append(s.recs, events.Event{
			Kind: events.Transition, Sock: uint64(i + 1), Family: 4, Mono: uint64(i), Src: 1,
			LAddr: netip.MustParseAddr("127.0.0.1"), RAddr: netip.MustParseAddr("127.0.0.1"),
			Old: events.SynSent, New: events.Established,
		})
	}
	return s
}

func (s *fakeSource) ReadBatch(evs []events.Event, wait time.Duration) (int, error) {
	s.mu.Lock()
	if s.chunk > 0 && len(evs) > s.chunk {
		evs = evs[:s.chunk]
	}
	n := copy(evs, s.recs)
	s.recs = s.recs[n:]
	s.mu.Unlock()
	if n == 0 {
		time.Sleep(time.Millisecond)
	}
	return n, nil
}

func (s *fakeSource) Settle() (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recs = append(s.recs, s.staged...)
	s.staged = nil
	for c := range s.cpus {
		s.recs = append(s.recs, events.Event{Kind: events.Mark, Mono: s.now, Src: uint32(c + 1)})
	}
	return true, nil
}

func (s *fakeSource) Wake()         {}
func (s *fakeSource) Detach() error { s.mu.Lock(); s.detached = true; s.mu.Unlock(); return nil }
func (s *fakeSource) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.recs) * events.RecordSize
}
func (s *fakeSource) Holders() ([]events.Holder, error) { return nil, nil }

func (s *fakeSource) Counts() (loader.Counts, error)      { return loader.Counts{}, nil }
func (s *fakeSource) Forget(*events.Event) error          { return nil }
func (s *fakeSource) Promote(*events.Event, uint64) error { return nil }

type sink struct {
	n, flushes int
	monos      []uint64
	after      int    // call stop after this many writes, if set
	stop       func() // ...
}

func (w *sink) Write(e *events.Event) error {
	w.n++
	w.monos = append(w.monos, e.Mono)
	if w.n == w.after {
		w.stop()
	}
	return nil
}

func (w *sink) Flush() error { w.flushes++; return nil }
func (w *sink) Close() error { return nil }

// Stopping drains what the kernel produced: nothing captured is lost.
func TestStopDrains(t *testing.T) {
	src := newFake(5000)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	out := &sink{}
	st, err := Run(ctx, Config{Source: src, Consumers: []Consumer{out}})
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
	st, err := Run(context.Background(), Config{Source: newFake(1000), Consumers: []Consumer{out}, Count: 10})
	if err != nil {
		t.Fatal(err)
	}
	if out.n != 10 || st.Events != 10 {
		t.Errorf("wrote %d, counted %d; want 10", out.n, st.Events)
	}
}

// Two CPUs' batches reach the ring out of time order, and a record is
// still staged on CPU 0: the stream writes all of them in time order.
// Before any settle, it writes what both CPUs have passed (10 and 20 ms,
// before CPU 0's 30 less slack); the rest once a settle marks both CPUs
// at 35 ms (30) or the stream stops (40 and the staged 50).
func TestOrderAcrossCPUs(t *testing.T) {
	ms := uint64(time.Millisecond)
	src := newFake(0)
	rec := func(m uint64, cpu uint32) events.Event {
		return events.Event{Kind: events.Transition, Sock: m, Mono: m * ms, Src: cpu + 1,
			Family: 4, LAddr: netip.MustParseAddr("127.0.0.1"), RAddr: netip.MustParseAddr("127.0.0.1"),
			Old: events.SynSent, New: events.Established}
	}
	// CPU 1's batch, then CPU 0's, read one batch at a time
	src.recs = append(src.recs, rec(20, 1), rec(40, 1), rec(10, 0), rec(30, 0))
	src.chunk = 2
	src.staged = []events.Event{rec(50, 0)}
	src.now = 35*ms + uint64(slack)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &sink{after: 3, stop: cancel}
	st, err := Run(ctx, Config{Source: src, Consumers: []Consumer{out}, Latency: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	want := []uint64{10 * ms, 20 * ms, 30 * ms, 40 * ms, 50 * ms}
	if st.Events != 5 || !slices.Equal(out.monos, want) {
		t.Errorf("wrote %d events at %v, want %v", st.Events, out.monos, want)
	}
}

// Every consumer gets every event the filter keeps, in the same order;
// the last stats callback comes at the end with the final counts.
func TestConsumersFilterStats(t *testing.T) {
	src := newFake(3000)
	for i := range src.recs {
		if src.recs[i].Kind == events.Transition && i%3 == 0 {
			src.recs[i].PID = 7
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	a, b := &sink{}, &sink{}
	var last Stats
	calls := 0
	st, err := Run(ctx, Config{Source: src, Consumers: []Consumer{a, b}, Filter: filter.Filter{PIDs: []uint32{7}},
		OnStats: func(s Stats) { last = s; calls++ }})
	if err != nil {
		t.Fatal(err)
	}
	want := 0
	for i := range 3000 + 2 {
		if i >= 2 && i%3 == 0 {
			want++
		}
	}
	if a.n != want || b.n != want || st.Events != uint64(want) {
		t.Errorf("consumers got %d and %d, stream counted %d; want %d", a.n, b.n, st.Events, want)
	}
	if calls == 0 || last != st {
		t.Errorf("%d stats calls, last %+v, want %+v", calls, last, st)
	}
}
