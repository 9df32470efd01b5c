// Package stream runs the pipeline from the kernel's ring buffer to its
// consumers: a reader goroutine decodes records into reused batches and
// puts them in time order, and one loop completes each with its socket's
// owner and time in state, follows timewait connections, applies the
// filter, stamps wall-clock time and hands each event to every consumer
// (an output writer, an aggregate).
package stream

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/filter"
	"github.com/tcptrace/tcptrace/loader"
	"github.com/tcptrace/tcptrace/order"
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

// Consumer takes completed events: owner known, time in state set,
// TIME_WAIT and FIN_WAIT2 ends resolved, the filter passed, wall time
// stamped. output.Writer is one; an aggregate is another.
//
// The stream calls a consumer from one goroutine, with events in time
// order. The *Event belongs to the stream and is reused as soon as Write
// returns: a consumer copies what it keeps, and never modifies it. Flush
// is called whenever the stream has caught up with the kernel (a consumer
// that buffers writes out then), and once at the end. An error from
// either ends the stream: it drains what the kernel already produced to
// the other consumers, and Run returns the error.
type Consumer interface {
	Write(e *events.Event) error
	Flush() error
}

// Config says what to run.
type Config struct {
	Source Source
	// Consumers get every event, each in turn, in the order given.
	Consumers []Consumer
	// Filter keeps the events consumers get. The kernel applies its
	// Kernel part already (loader.Options); the stream applies the whole
	// of it to every record once its owner is known, and to the
	// transitions the timewait follower makes.
	Filter filter.Filter
	// Count stops the stream after this many events; 0 means no limit.
	Count uint64
	// Latency bounds how long an event waits in the ring on a quiet
	// system: the reader looks at least this often.
	Latency time.Duration
	// Warn reports a condition worth a line on stderr, once each.
	Warn func(string)
	// Follow configures the timewait follower.
	Follow timewait.Options
	// Sockets configures the table of sockets whose owner and time in
	// state are followed; its Holders is the Source's.
	Sockets sockets.Options
	// Seed is who held which socket when tracing began (Source.Holders
	// taken just after the tracer attached): sockets older than the
	// tracer get their owners from it.
	Seed []events.Holder
	// OnSeed, if set, gets Seed before the stream starts, its sockets
	// named as the records will name them (sockets.Lives).
	OnSeed func([]events.Holder)
	// OnStats, if set, gets the stream's counts so far every StatsEvery
	// (default 1 s), from the stream's goroutine: a long-running
	// consumer sees losses as they happen, not only when Run returns.
	OnStats    func(Stats)
	StatsEvery time.Duration
}

// Stats is what the stream did.
type Stats struct {
	Events    uint64 // handed to the consumers
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
	p := newPipeline(cfg)
	defer p.diag.Close()
	return p.run(ctx)
}

// pipeline is one run of the stream after the reader: it completes each
// record with its owner (sockets), resolves what the timewait follower
// knows, filters, stamps wall time and hands the events to the consumers;
// and it keeps the follower's and the socket table's timers.
type pipeline struct {
	cfg    Config
	src    Source
	rd     *reader
	diag   *sockdiag.Prober
	follow *timewait.Follower
	socks  *sockets.Table
	// each life of a socket named apart, where records name sockets by
	// address
	lives sockets.Lives
	clock *loader.WallClock

	st  Stats
	err error // the first consumer error: the stream drains, then returns it
	// stop: Count reached; detached: the programs are detached and the
	// reader drains the ring
	stop, detached bool
	draining       atomic.Bool
	deferred       int // polls put off for the ring to drain (maxDefer)

	poll        *time.Timer // the follower's next check
	expire      *time.Timer // the socket table's next held record's deadline
	expireArmed bool
	warned      map[string]bool

	// method values, made once: taking one at each call would allocate
	emitFn, emitMadeFn, deliverFn func(*events.Event) error
}

func newPipeline(cfg Config) *pipeline {
	if cfg.Latency == 0 {
		cfg.Latency = 50 * time.Millisecond
	}
	if cfg.StatsEvery == 0 {
		cfg.StatsEvery = time.Second
	}
	if cfg.Warn == nil {
		cfg.Warn = func(string) {}
	}
	p := &pipeline{cfg: cfg, src: cfg.Source, diag: sockdiag.NewProber(), clock: loader.NewWallClock(), warned: map[string]bool{}}
	p.follow = timewait.New(p.diag, cfg.Follow)
	cfg.Sockets.Holders = p.holders
	p.socks = sockets.New(cfg.Sockets)
	p.lives.Holders(cfg.Seed)
	if cfg.OnSeed != nil {
		cfg.OnSeed(cfg.Seed)
	}
	p.socks.Seed(cfg.Seed)
	p.emitFn, p.emitMadeFn, p.deliverFn = p.emit, p.emitMade, p.deliver
	return p
}

func (p *pipeline) run(ctx context.Context) (Stats, error) {
	full := make(chan *batch, maxBatches)
	p.rd = &reader{src: p.src, full: full, free: make(chan *batch, maxBatches), draining: &p.draining, wait: p.cfg.Latency}
	go p.rd.run()

	p.poll = time.NewTimer(time.Hour)
	defer p.poll.Stop()
	p.armPoll()
	p.expire = time.NewTimer(time.Hour)
	defer p.expire.Stop()
	housekeeping := time.NewTicker(time.Second)
	defer housekeeping.Stop()
	// no ticker at all without a callback: nothing to wake for
	var statsC <-chan time.Time
	if p.cfg.OnStats != nil {
		stats := time.NewTicker(p.cfg.StatsEvery)
		defer stats.Stop()
		statsC = stats.C
	}

	// a done context is ready at every select: take it once, then wait
	// only for the drain
	done := ctx.Done()
	for {
		select {
		case b, ok := <-full:
			if !ok {
				return p.finish()
			}
			p.take(b)
			if len(full) == 0 {
				p.flush()
			}
			if p.stop || p.err != nil {
				p.startDrain()
			}
			p.armPoll()
		case <-p.poll.C:
			p.onPoll()
		case <-p.expire.C:
			p.expireArmed = false
			p.fail(p.socks.Expire(loader.Monotonic(), p.deliverFn))
			p.armExpire()
		case <-housekeeping.C:
			p.clock.Sync()
			if m := p.rd.mark.Load(); m != nil {
				p.follow.SyncJiffies(m[0], m[1])
			}
			p.checkCounts()
		case <-statsC:
			p.checkCounts()
			p.cfg.OnStats(p.st)
		case <-done:
			done = nil
			p.startDrain()
		}
	}
}

// holders is a holders dump, its sockets named as records are.
func (p *pipeline) holders() ([]events.Holder, error) {
	hs, err := p.src.Holders()
	p.lives.Holders(hs)
	return hs, err
}

// take completes and hands on a batch from the reader, then gives it back.
func (p *pipeline) take(b *batch) {
	for i := range b.n {
		if b.ev[i].Kind == events.MiniReset {
			// of no socket the table follows: for the follower
			p.fail(p.deliver(&b.ev[i]))
			continue
		}
		p.lives.Record(&b.ev[i])
		p.fail(p.socks.Observe(&b.ev[i], p.deliverFn))
	}
	b.n = 0
	p.rd.free <- b
	p.armExpire()
}

// finish runs once the reader has handed on everything.
func (p *pipeline) finish() (Stats, error) {
	p.fail(p.socks.Flush(p.deliverFn))
	p.checkCounts()
	p.flush()
	if p.cfg.OnStats != nil {
		p.cfg.OnStats(p.st)
	}
	return p.st, p.err
}

// fail keeps the first error.
func (p *pipeline) fail(err error) {
	if err != nil && p.err == nil {
		p.err = err
	}
}

func (p *pipeline) flush() {
	if p.err != nil {
		return
	}
	for _, c := range p.cfg.Consumers {
		if err := c.Flush(); err != nil {
			p.fail(fmt.Errorf("write output: %w", err))
			return
		}
	}
}

// emit hands a completed event to every consumer.
func (p *pipeline) emit(e *events.Event) error {
	if p.stop || p.err != nil {
		return nil
	}
	e.Time = p.clock.Time(e.Mono)
	for _, c := range p.cfg.Consumers {
		if err := c.Write(e); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
	}
	p.st.Events++
	if p.cfg.Count > 0 && p.st.Events >= p.cfg.Count {
		p.stop = true
	}
	return nil
}

// emitMade emits a transition the follower made, if the filter keeps it.
func (p *pipeline) emitMade(e *events.Event) error {
	if !p.cfg.Filter.Match(e) {
		return nil
	}
	return p.emit(e)
}

// deliver takes a record with its owner known: the follower sees it (a
// record the filter drops still tells it something), and it goes out if
// it is a transition the filter keeps.
func (p *pipeline) deliver(e *events.Event) error {
	keep := e.Kind == events.Transition && p.cfg.Filter.Match(e)
	show, err := p.follow.Observe(e, p.emitMadeFn)
	if err == nil && show && keep {
		err = p.emit(e)
	}
	return err
}

// onPoll asks sock_diag about the followed connections due.
func (p *pipeline) onPoll() {
	// the ring may hold what resolves the due connections more
	// precisely (a peer's close): read it first, unless it never empties
	if (p.src.Pending() > 0 || p.rd.held.Load() > 0) && p.deferred < maxDefer {
		p.deferred++
		p.src.Wake()
		p.poll.Reset(time.Millisecond)
		return
	}
	p.deferred = 0
	p.fail(p.follow.Poll(loader.Monotonic(), p.emitMadeFn))
	if p.stop || p.err != nil {
		p.startDrain()
	}
	p.armPoll()
}

// startDrain stops new events and lets the reader drain the ring.
func (p *pipeline) startDrain() {
	if p.detached {
		return
	}
	p.detached = true
	// Detach waits for running programs; only then is the ring final,
	// and an empty ring means the reader has everything
	_ = p.src.Detach()
	p.draining.Store(true)
	p.src.Wake()
}

func (p *pipeline) armPoll() {
	next := p.follow.Next()
	d := time.Hour
	if next != 0 {
		d = time.Duration(int64(next) - int64(loader.Monotonic()))
	}
	p.poll.Reset(max(d, time.Millisecond))
}

// armExpire sets the timer for the socket table's next deadline: server
// connections held for their holder go out at it.
func (p *pipeline) armExpire() {
	if p.expireArmed {
		return
	}
	if next := p.socks.NextDeadline(); next != 0 {
		p.expireArmed = true
		p.expire.Reset(max(time.Duration(int64(next)-int64(loader.Monotonic())), time.Millisecond))
	}
}

func (p *pipeline) warnOnce(key, msg string) {
	if !p.warned[key] {
		p.warned[key] = true
		p.cfg.Warn(msg)
	}
}

// checkCounts brings the stats up to date and warns of what they show.
func (p *pipeline) checkCounts() {
	c, err := p.src.Counts()
	if err != nil {
		p.warnOnce("counts", err.Error())
		return
	}
	p.st.Lost = c.Lost
	p.st.Untracked = p.follow.Untracked
	p.st.Unknown = p.socks.Full
	p.st.Rescued = c.Rescued
	if p.st.Untracked > 0 {
		p.warnOnce("untracked", "timewait follow limit reached (--tw-max): some connections' TIME_WAIT ends will not be shown")
	}
	if p.st.Unknown > 0 {
		p.warnOnce("unknown", "socket table full: owners and times in state of some sockets are not known")
	}
	if err := p.rd.err.Load(); err != nil {
		p.warnOnce("settle", fmt.Sprintf("%v: records from different CPUs may be out of order", *err))
	}
	if p.socks.DumpErr != nil {
		p.warnOnce("dump", fmt.Sprintf("cannot list who holds which socket: %v", p.socks.DumpErr))
	}
	if p.follow.Unfollowable > 0 {
		p.warnOnce("unfollowable", fmt.Sprintf("cannot follow some timewait connections: %v", p.follow.LastErr))
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
