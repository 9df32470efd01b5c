// Package stream runs the pipeline from the kernel's ring buffer to a
// writer: a reader goroutine decodes records into reused batches, and one
// loop completes each with its socket's owner and time in state, applies
// the filters, follows timewait connections, stamps wall-clock time and
// writes.
package stream

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/loader"
	"github.com/tcptrace/tcptrace/output"
	"github.com/tcptrace/tcptrace/sockdiag"
	"github.com/tcptrace/tcptrace/sockets"
	"github.com/tcptrace/tcptrace/timewait"
)

// Source is the kernel side: loader.Tracer.
type Source interface {
	ReadBatch(evs []events.Event, wait time.Duration) (int, error)
	Wake()
	Detach() error
	Pending() int
	Counts() (loader.Counts, error)
}

// Config says what to run.
type Config struct {
	Source Source
	Out    output.Writer
	// Count stops the stream after this many events; 0 means no limit.
	Count uint64
	// Latency bounds how long an event waits in the ring on a quiet
	// system: the reader looks at least this often.
	Latency time.Duration
	// Warn reports a condition worth a line on stderr, once each.
	Warn func(string)
	// Follow configures the timewait follower. Its Want is the filters
	// (loader.Options.Match): the kernel applies only those that hold
	// for a whole socket, so Want is applied to every record, once its
	// owner is known, and to what the follower makes.
	Follow timewait.Options
	// Sockets bounds the sockets whose owner and time in state are
	// followed (sockets.DefaultMax if 0).
	Sockets int
}

// Stats is what the stream did.
type Stats struct {
	Events    uint64 // written
	Lost      uint64 // transitions the kernel could not deliver, or undecodable records
	Untracked uint64 // connections not followed: the follow table was full
	Unknown   uint64 // records whose owner and time in state are not known: their socket did not fit in the socket table
	Rescued   uint64 // transitions the kernel skipped the main program for, handled anyway
}

const batchSize = 256

// maxDefer bounds how often a sock_diag poll waits for the ring to drain.
const maxDefer = 3

type batch struct {
	n  int
	ev [batchSize]events.Event
}

// Run streams until ctx ends or Count events are written, then drains what
// the kernel already produced, flushes and returns.
func Run(ctx context.Context, cfg Config) (Stats, error) {
	if cfg.Latency == 0 {
		cfg.Latency = 50 * time.Millisecond
	}
	if cfg.Warn == nil {
		cfg.Warn = func(string) {}
	}
	src := cfg.Source
	full := make(chan *batch, 8)
	free := make(chan *batch, 8)
	for range cap(free) {
		free <- new(batch)
	}
	var draining atomic.Bool
	go read(src, full, free, &draining, cfg.Latency)

	diag := sockdiag.NewProber()
	defer diag.Close()
	want := cfg.Follow.Want
	if want == nil {
		want = func(*events.Event) bool { return true }
	}
	follow := timewait.New(diag, cfg.Follow)
	socks := sockets.New(cfg.Sockets)
	clock := loader.NewWallClock()
	var st Stats
	var werr error
	stop, detached := false, false
	deferred := 0
	emit := func(e *events.Event) error {
		if stop || werr != nil {
			return nil
		}
		e.Time = clock.Time(e.Mono)
		if err := cfg.Out.Write(e); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
		st.Events++
		if cfg.Count > 0 && st.Events >= cfg.Count {
			stop = true
		}
		return nil
	}
	// a record with its owner known: filter it (a record the filters drop
	// still goes to the follower, as a hint), follow it, show it
	deliver := func(e *events.Event) error {
		if e.Kind == events.Transition && !want(e) {
			e.Kind = events.Hint
		}
		show, err := follow.Observe(e, emit)
		if err == nil && show {
			err = emit(e)
		}
		return err
	}
	startDrain := func() {
		if detached {
			return
		}
		detached = true
		// Detach waits for running programs; only then is the ring
		// final, and an empty ring means the reader has everything
		_ = src.Detach()
		draining.Store(true)
		src.Wake()
	}

	poll := time.NewTimer(time.Hour)
	defer poll.Stop()
	armPoll := func() {
		next := follow.Next()
		d := time.Hour
		if next != 0 {
			d = time.Duration(int64(next) - int64(loader.Monotonic()))
		}
		poll.Reset(max(d, time.Millisecond))
	}
	armPoll()
	housekeeping := time.NewTicker(time.Second)
	defer housekeeping.Stop()
	warned := map[string]bool{}
	warnOnce := func(key, msg string) {
		if !warned[key] {
			warned[key] = true
			cfg.Warn(msg)
		}
	}
	checkCounts := func() {
		c, err := src.Counts()
		if err != nil {
			warnOnce("counts", err.Error())
			return
		}
		st.Lost = c.Lost
		st.Untracked = follow.Untracked
		st.Unknown = socks.Full
		st.Rescued = c.Rescued
		if st.Untracked > 0 {
			warnOnce("untracked", "timewait follow limit reached (--tw-max): some connections' TIME_WAIT ends will not be shown")
		}
		if st.Unknown > 0 {
			warnOnce("unknown", "socket table full: owners and times in state of some sockets are not known")
		}
		if follow.Unfollowable > 0 {
			warnOnce("unfollowable", fmt.Sprintf("cannot follow some timewait connections: %v", follow.LastErr))
		}
	}

	// a done context is ready at every select: take it once, then wait
	// only for the drain
	done := ctx.Done()
	for {
		select {
		case b, ok := <-full:
			if !ok {
				if err := socks.Flush(deliver); err != nil && werr == nil {
					werr = err
				}
				checkCounts()
				if err := cfg.Out.Flush(); err != nil && werr == nil {
					werr = fmt.Errorf("write output: %w", err)
				}
				return st, werr
			}
			for i := range b.n {
				if err := socks.Observe(&b.ev[i], deliver); err != nil && werr == nil {
					werr = err
				}
			}
			b.n = 0
			free <- b
			if len(full) == 0 && werr == nil {
				if err := cfg.Out.Flush(); err != nil {
					werr = fmt.Errorf("write output: %w", err)
				}
			}
			if stop || werr != nil {
				startDrain()
			}
			armPoll()
		case <-poll.C:
			// the ring may hold what resolves the due connections more
			// precisely (a peer's close): read it first, unless it never
			// empties
			if src.Pending() > 0 && deferred < maxDefer {
				deferred++
				src.Wake()
				poll.Reset(time.Millisecond)
				continue
			}
			deferred = 0
			if err := follow.Poll(loader.Monotonic(), emit); err != nil && werr == nil {
				werr = err
			}
			if stop || werr != nil {
				startDrain()
			}
			armPoll()
		case <-housekeeping.C:
			clock.Sync()
			checkCounts()
		case <-done:
			done = nil
			startDrain()
		}
	}
}

// read decodes records into batches until the ring is closed or, once
// draining, empty.
func read(src Source, full, free chan *batch, draining *atomic.Bool, wait time.Duration) {
	b := <-free
	for {
		n, err := src.ReadBatch(b.ev[:], wait)
		if err != nil {
			close(full)
			return
		}
		if n > 0 {
			b.n = n
			full <- b
			b = <-free
			continue
		}
		// after Detach nothing new arrives: once the ring is empty the
		// stream has everything
		if draining.Load() && src.Pending() == 0 {
			close(full)
			return
		}
	}
}
