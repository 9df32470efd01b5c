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
	"github.com/tcptrace/tcptrace/order"
	"github.com/tcptrace/tcptrace/output"
	"github.com/tcptrace/tcptrace/sockdiag"
	"github.com/tcptrace/tcptrace/sockets"
	"github.com/tcptrace/tcptrace/timewait"
)

// Source is the kernel side: loader.Tracer.
type Source interface {
	ReadBatch(evs []events.Event, wait time.Duration) (int, error)
	Settle() (ok bool, err error)
	Wake()
	Detach() error
	Pending() int
	Counts() (loader.Counts, error)
	// Holders lists who holds which TCP socket now.
	Holders() ([]events.Holder, error)
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
	// Sockets configures the table of sockets whose owner and time in
	// state are followed; its Holders is the Source's.
	Sockets sockets.Options
	// Seed is who held which socket when tracing began (Source.Holders
	// taken just after the tracer attached): sockets older than the
	// tracer get their owners from it.
	Seed []events.Holder
}

// Stats is what the stream did.
type Stats struct {
	Events    uint64 // written
	Lost      uint64 // transitions the kernel could not deliver, or undecodable records
	Untracked uint64 // connections not followed: the follow table was full
	Unknown   uint64 // records whose owner and time in state are not known: their socket did not fit in the socket table
	Rescued   uint64 // transitions the kernel skipped the main program for, handled anyway
}

// batchSize is the records handed from the reader to the loop at once:
// each hand-off may wake the other goroutine's thread.
const batchSize = 1024

// maxBatches bounds the batches between the reader and the loop, about
// 180 KB each: room for 12,000 records more than the ring's while the
// loop is held up.
const maxBatches = 12

// maxDefer bounds how often a sock_diag poll waits for the ring to drain.
const maxDefer = 3

// The reader settles the tracer (loader.Tracer.Settle) every Latency, so
// that records staged on a quiet CPU come out, or sooner once it holds
// settleAt records and some CPU lags the others by lagAt, as when a CPU
// goes quiet under load: the order buffer can release no record newer
// than that CPU's last one. A settle runs a program on every CPU, by a
// cross-CPU call each: while every CPU is busy their batches move the
// order buffer on, and settling then would only interrupt the workload.
const (
	settleAt = 1024
	lagAt    = 2 * time.Millisecond
)

// slack is how much earlier than a CPU's latest record or mark a record
// of that CPU may be timed that was not read yet: TCP's own clock dates
// some transitions from when processing of their segment began,
// microseconds before (bpf/tcptrace.c).
const slack = time.Millisecond

// settleTries bounds how often the last settle, after Detach, retries a
// CPU whose staging was in use (no program runs then: none should be).
const settleTries = 8

// holdMax: past this many held records the reader releases what is older
// than slack even if the tracer could not settle, rather than grow.
const holdMax = 64 * settleAt

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
	full := make(chan *batch, maxBatches)
	free := make(chan *batch, maxBatches)
	var draining atomic.Bool
	rd := &reader{src: src, full: full, free: free, draining: &draining, wait: cfg.Latency}
	go rd.run()

	diag := sockdiag.NewProber()
	defer diag.Close()
	follow := timewait.New(diag, cfg.Follow)
	cfg.Sockets.Holders = src.Holders
	socks := sockets.New(cfg.Sockets)
	socks.Seed(cfg.Seed)
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
		if e.Kind == events.Transition && !follow.Wants(e) {
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
	// server connections held for their holder go out at their deadline
	expire := time.NewTimer(time.Hour)
	defer expire.Stop()
	expireArmed := false
	armExpire := func() {
		if expireArmed {
			return
		}
		if next := socks.NextDeadline(); next != 0 {
			expireArmed = true
			expire.Reset(max(time.Duration(int64(next)-int64(loader.Monotonic())), time.Millisecond))
		}
	}
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
		if err := rd.err.Load(); err != nil {
			warnOnce("settle", fmt.Sprintf("%v: records from different CPUs may be out of order", *err))
		}
		if socks.DumpErr != nil {
			warnOnce("dump", fmt.Sprintf("cannot list who holds which socket: %v", socks.DumpErr))
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
			armExpire()
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
			if (src.Pending() > 0 || rd.held.Load() > 0) && deferred < maxDefer {
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
		case <-expire.C:
			expireArmed = false
			if err := socks.Expire(loader.Monotonic(), deliver); err != nil && werr == nil {
				werr = err
			}
			armExpire()
		case <-housekeeping.C:
			clock.Sync()
			if m := rd.mark.Load(); m != nil {
				follow.SyncJiffies(m[0], m[1])
			}
			checkCounts()
		case <-done:
			done = nil
			startDrain()
		}
	}
}

// reader decodes records, puts them back in time order (package order)
// and hands them on in batches, until the ring is closed or, once
// draining, empty.
type reader struct {
	src      Source
	full     chan *batch
	free     chan *batch
	draining *atomic.Bool
	wait     time.Duration

	held atomic.Int64 // records in the order buffer
	// the newest mark's time and the kernel's jiffies then
	mark atomic.Pointer[[2]uint64]
	err  atomic.Pointer[error] // the last settle's error, for a warning

	buf  order.Buffer
	in   [batchSize]events.Event
	out  *batch
	made int // batches allocated
}

func (r *reader) run() {
	r.out = r.take()
	last := time.Now()
	settled := false
	for {
		wait := r.wait
		if settled {
			// the marks are in the ring, with no wakeup
			wait = 0
		}
		if !r.readInto(wait) {
			close(r.full)
			return
		}
		if r.draining.Load() {
			r.drain()
			return
		}
		if t := r.buf.Settled(); t > uint64(slack) {
			r.release(t - uint64(slack))
		}
		if r.buf.Len() > holdMax {
			// no settle gets through: release rather than grow
			r.release(loader.Monotonic() - uint64(slack+r.wait))
		}
		r.held.Store(int64(r.buf.Len()))
		since := time.Since(last)
		settled = false
		// a settle IPIs every CPU: at most one a millisecond
		lagging := r.buf.Len() >= settleAt && r.buf.Lag() >= uint64(lagAt)
		if since < time.Millisecond || !lagging && since < r.wait {
			continue
		}
		last = time.Now()
		// a CPU whose staging was in use wrote no mark: the next settle
		// tries again
		if _, err := r.src.Settle(); err != nil {
			r.err.Store(&err)
		}
		settled = true
	}
}

// drain, once the programs are detached: every CPU writes out what it has
// staged, the reader reads the ring to its end and hands on everything.
func (r *reader) drain() {
	for range settleTries {
		ok, err := r.src.Settle()
		if err != nil {
			// what the ring holds is all the stream will get
			r.err.Store(&err)
		}
		if err != nil || ok {
			break
		}
	}
	for r.src.Pending() > 0 && r.readInto(0) {
	}
	r.finish()
}

// readInto reads what the ring holds into the order buffer, waiting at
// most wait for it; false once the ring is closed.
func (r *reader) readInto(wait time.Duration) bool {
	n, err := r.src.ReadBatch(r.in[:], wait)
	if err != nil {
		return false
	}
	r.buf.Add(r.in[:n])
	if mono, jiffies := r.buf.Jiffies(); mono != 0 {
		if m := r.mark.Load(); m == nil || m[0] != mono {
			r.mark.Store(&[2]uint64{mono, jiffies})
		}
	}
	return true
}

// send copies a released record into the outgoing batch.
func (r *reader) send(e *events.Event) {
	r.out.ev[r.out.n] = *e
	r.out.n++
	if r.out.n == batchSize {
		r.full <- r.out
		r.out = r.take()
	}
}

// release hands on every held record timed before mark, in time order.
func (r *reader) release(mark uint64) {
	r.buf.Release(mark, r.send)
	r.push()
}

// finish hands on everything held and ends the stream of batches.
func (r *reader) finish() {
	r.release(^uint64(0))
	close(r.full)
}

// take returns a free batch: one the loop gave back, else a new one while
// fewer than maxBatches exist, else it waits for the loop. A loop held up
// (output to a slow disk) has up to maxBatches of records waiting for it
// before the reader stops reading the ring, and the ring fills.
func (r *reader) take() *batch {
	select {
	case b := <-r.free:
		return b
	default:
	}
	if r.made < maxBatches {
		r.made++
		return new(batch)
	}
	return <-r.free
}

// push hands on a partly filled batch.
func (r *reader) push() {
	if r.out.n > 0 {
		r.full <- r.out
		r.out = r.take()
	}
}
