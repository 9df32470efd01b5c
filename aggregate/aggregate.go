// Package aggregate counts a stream of completed events into what
// `tcptrace stats` shows: the transition matrix, closes by cause, sockets
// per state, histograms of the times that matter, and the top processes,
// peers and local ports. It is a stream.Consumer: it sees every event the
// stream completes (owner, time in state, TIME_WAIT ends resolved), and it
// keeps no event.
//
// The counts live in user space, from the stream tcptrace completes
// anyway: the owner, the time in state and the TIME_WAIT end are known
// only there (see the README's "Aggregates"), and counting an event costs
// tens of nanoseconds next to the hundreds its record costs the kernel.
//
// An Aggregate is used from one goroutine: Write from the stream, Take
// from its OnStats callback, which runs on the stream's goroutine.
package aggregate

import (
	"math/bits"
	"net/netip"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/sockets"
)

// States is the number of TCP states plus one: events.State values index
// arrays of it.
const States = 13

// Causes is the number of close causes: events.Cause values index arrays
// of it.
const Causes = 9

// Buckets is the histograms' size: bucket k counts times from 2^k to
// 2^(k+1) microseconds, bucket 0 everything under 2 us, the last
// everything from 2^(Buckets-1) us (about 9 days) on.
const Buckets = 40

// Histogram counts durations in log2 buckets of microseconds.
type Histogram struct {
	Count   uint64
	Sum     time.Duration
	Buckets [Buckets]uint64
}

// Bucket is the bucket d falls in.
func Bucket(d time.Duration) int {
	us := uint64(max(d, 0) / time.Microsecond)
	if us < 2 {
		return 0
	}
	return min(bits.Len64(us)-1, Buckets-1)
}

// BucketStart is the shortest duration bucket k counts.
func BucketStart(k int) time.Duration {
	if k == 0 {
		return 0
	}
	return time.Duration(uint64(1)<<k) * time.Microsecond
}

// Add counts d.
func (h *Histogram) Add(d time.Duration) {
	h.Count++
	h.Sum += d
	h.Buckets[Bucket(d)]++
}

// Quantile is an estimate of the q-quantile (0 < q <= 1): the start of
// the bucket it falls in, doubled halfway (the bucket's geometric
// middle). 0 if the histogram is empty.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.Count == 0 {
		return 0
	}
	rank := uint64(q*float64(h.Count) + 0.5)
	rank = max(rank, 1)
	var seen uint64
	for k, n := range h.Buckets {
		seen += n
		if seen >= rank {
			if k == 0 {
				return time.Microsecond
			}
			return BucketStart(k) * 1414 / 1000
		}
	}
	return BucketStart(Buckets - 1)
}

// The histograms an interval keeps.
const (
	ClientHandshake = iota // SYN_SENT dwell, to ESTABLISHED
	ServerHandshake        // SYN_RECV dwell, to ESTABLISHED
	Lifetime               // from the handshake's end to CLOSE or TIME_WAIT
	CloseWait              // CLOSE_WAIT dwell: how long the owner took to close
	FinWait2               // FIN_WAIT2 dwell
	TimeWait               // TIME_WAIT length, to its end
	Histograms
)

// HistogramNames are the histograms' names in text and JSON.
var HistogramNames = [Histograms]string{"client_handshake", "server_handshake", "lifetime", "close_wait", "fin_wait2", "time_wait"}

// Counts is what a top entry counts.
type Counts struct {
	New       uint64 // connections begun: connect() or a SYN taken by a listener
	Resets    uint64 // connections ended by a reset, sent or received
	Refused   uint64 // connects refused
	TimeWaits uint64 // TIME_WAITs entered
	CloseWait uint64 // CLOSE_WAITs entered: the peer closed first
}

// Interval is what happened between two Takes.
type Interval struct {
	Start, End time.Time
	Events     uint64
	// Matrix counts transitions by old and new state.
	Matrix [States][States]uint64
	// Closes counts transitions to CLOSE by cause.
	Closes     [Causes]uint64
	Histograms [Histograms]Histogram
	// Processes, Peers and Ports are the tracked keys' counts: by owning
	// process, by remote address, and new server connections by the
	// listener's port.
	Processes map[Process]*Counts
	Peers     map[netip.Addr]*Counts
	Ports     map[uint16]*Counts
	// Dropped counts events whose key found its table full (MaxKeys):
	// they are in every count but the top tables.
	Dropped uint64
}

// Process keys the top processes.
type Process struct {
	PID  uint32
	Comm string
}

// DefaultMaxKeys bounds each top table per interval.
const DefaultMaxKeys = 4096

// Aggregate counts events. Make it with New.
type Aggregate struct {
	maxKeys int
	cur     Interval
	// Census is how many sockets are in each state now, per namespace:
	// kept by the transitions, set from a dump of each (Census.Set)
	Census *Census
	// CloseWaits is how many sockets each process holds in CLOSE_WAIT
	// now, the peer having closed and the process not yet: kept by the
	// transitions seen (at most maxKeys processes).
	CloseWaits map[Process]int64
	// the histograms' source, with the live connections' ESTABLISHED
	// entry (16 times maxKeys of them)
	durations *Durations
	// comms interned: a process's name as a string once, not per event
	comms map[[events.CommLen]byte]string
}

// New returns an aggregate whose top tables hold at most maxKeys keys
// each per interval (DefaultMaxKeys if 0), and whose lifetime table
// holds at most 16 times that.
func New(maxKeys int, now time.Time) *Aggregate {
	if maxKeys <= 0 {
		maxKeys = DefaultMaxKeys
	}
	a := &Aggregate{maxKeys: maxKeys, durations: NewDurations(16 * maxKeys), comms: map[[events.CommLen]byte]string{},
		CloseWaits: map[Process]int64{}, Census: NewCensus()}
	a.reset(now)
	return a
}

func (a *Aggregate) reset(now time.Time) {
	a.cur = Interval{Start: now, Processes: map[Process]*Counts{}, Peers: map[netip.Addr]*Counts{}, Ports: map[uint16]*Counts{}}
}

// Sockets is how many sockets are in each state now, every namespace
// counted.
func (a *Aggregate) Sockets() [States]int64 { return a.Census.Total() }

// HeldCloseWaits are the sockets in CLOSE_WAIT of a holders dump
// (loader.Tracer.Holders) that keep passes, each as a record of its
// youngest holder's (sockets.YoungestPerSocket), in its state: the
// CLOSE_WAITs held when tracing began.
func HeldCloseWaits(hs []events.Holder, keep func(*events.Event) bool) []events.Event {
	var out []events.Event
	for _, h := range sockets.YoungestPerSocket(hs) {
		if h.State != events.CloseWait {
			continue
		}
		if e := h.InState(); keep(&e) {
			out = append(out, e)
		}
	}
	return out
}

// SeedHolders counts the CLOSE_WAITs each process held when tracing
// began (HeldCloseWaits): a leak older than tcptrace is named from the
// start, and its sockets' later transitions, named for the same holder
// (package sockets), take it down again.
func (a *Aggregate) SeedHolders(hs []events.Holder, keep func(*events.Event) bool) {
	for _, e := range HeldCloseWaits(hs, keep) {
		a.closeWaits(&e)
	}
}

// Peek is the current interval so far, not ended: the caller must not
// keep its maps past the next Write.
func (a *Aggregate) Peek() *Interval { return &a.cur }

// Take ends the current interval at now and returns it.
func (a *Aggregate) Take(now time.Time) Interval {
	iv := a.cur
	iv.End = now
	a.reset(now)
	return iv
}

// Flush does nothing: an aggregate has nothing buffered.
func (a *Aggregate) Flush() error { return nil }

// Move counts e's socket out of its old state and into its new one in
// per, sockets per state; CLOSE is not counted, and a count never goes
// below 0 (a socket older than the count).
func Move(per *[States]int64, e *events.Event) {
	// a listener's child starts as a copy of it in LISTEN: the listener
	// stays there
	child := e.Old == events.Listen && e.New == events.SynRecv
	if e.Old != events.Close && e.Old < States && !child && per[e.Old] > 0 {
		per[e.Old]--
	}
	if e.New != events.Close && e.New < States {
		per[e.New]++
	}
}

// Write counts one completed event.
func (a *Aggregate) Write(e *events.Event) error {
	iv := &a.cur
	iv.Events++
	if e.Old < States && e.New < States {
		iv.Matrix[e.Old][e.New]++
	}
	a.Census.Move(e)
	if e.New == events.Close && e.Cause < Causes {
		iv.Closes[e.Cause]++
	}
	a.durations.Write(e, &iv.Histograms)
	a.closeWaits(e)

	var c Counts
	switch {
	case e.Old == events.Close && e.New == events.SynSent, e.Old == events.Listen && e.New == events.SynRecv:
		c.New = 1
	case e.New == events.TimeWait:
		c.TimeWaits = 1
	case e.New == events.CloseWait:
		c.CloseWait = 1
	case e.New == events.Close && e.Cause == events.CauseRefused:
		c.Refused = 1
	case e.New == events.Close && (e.Cause == events.CauseResetReceived || e.Cause == events.CauseResetSent):
		c.Resets = 1
	default:
		return nil
	}
	dropped := false
	dropped = !add(iv.Processes, Process{e.PID, a.comm(e)}, c, a.maxKeys) || dropped
	dropped = !add(iv.Peers, e.RAddr, c, a.maxKeys) || dropped
	if e.Old == events.Listen && e.New == events.SynRecv {
		// a listener's port; any other record's local port may be an
		// ephemeral one, which says nothing
		dropped = !add(iv.Ports, e.LPort, c, a.maxKeys) || dropped
	}
	if dropped {
		iv.Dropped++
	}
	return nil
}

// closeWaits keeps the CLOSE_WAITs each process holds.
func (a *Aggregate) closeWaits(e *events.Event) {
	switch {
	case e.New == events.CloseWait:
		p := Process{e.PID, a.comm(e)}
		if _, ok := a.CloseWaits[p]; ok || len(a.CloseWaits) < a.maxKeys {
			a.CloseWaits[p]++
		}
	case e.Old == events.CloseWait:
		p := Process{e.PID, a.comm(e)}
		if n, ok := a.CloseWaits[p]; ok {
			if n <= 1 {
				delete(a.CloseWaits, p)
			} else {
				a.CloseWaits[p] = n - 1
			}
		}
	}
}

// Durations times states into histograms: the handshakes, CLOSE_WAIT,
// FIN_WAIT2 and TIME_WAIT from each event's dwell, and a connection's
// lifetime from its ESTABLISHED to its CLOSE or TIME_WAIT, for which it
// keeps the live connections' entry (at most maxLive).
type Durations struct {
	born    map[uint64]time.Duration
	maxLive int
}

// NewDurations returns durations following at most maxLive connections'
// lifetimes.
func NewDurations(maxLive int) *Durations {
	return &Durations{born: map[uint64]time.Duration{}, maxLive: maxLive}
}

// Write adds e's time in state to h.
func (d *Durations) Write(e *events.Event, h *[Histograms]Histogram) {
	if e.DwellKnown {
		switch {
		case e.Old == events.SynSent && e.New == events.Established:
			h[ClientHandshake].Add(e.Dwell)
		case e.Old == events.SynRecv && e.New == events.Established:
			h[ServerHandshake].Add(e.Dwell)
		case e.Old == events.CloseWait:
			h[CloseWait].Add(e.Dwell)
		case e.Old == events.FinWait2:
			h[FinWait2].Add(e.Dwell)
		case e.Old == events.TimeWait:
			h[TimeWait].Add(e.Dwell)
		}
	}
	switch {
	case e.New == events.Established:
		if len(d.born) < d.maxLive {
			d.born[e.Sock] = time.Duration(e.Mono)
		}
	case e.New == events.Close || e.New == events.TimeWait:
		if at, ok := d.born[e.Sock]; ok {
			delete(d.born, e.Sock)
			h[Lifetime].Add(time.Duration(e.Mono) - at)
		}
	}
}

func (a *Aggregate) comm(e *events.Event) string {
	if s, ok := a.comms[e.Comm]; ok {
		return s
	}
	s := e.CommString()
	if len(a.comms) < a.maxKeys {
		a.comms[e.Comm] = s
	}
	return s
}

// add adds c to key's counts; false if key is new and the table is full.
func add[K comparable](m map[K]*Counts, key K, c Counts, maxKeys int) bool {
	p, ok := m[key]
	if !ok {
		if len(m) >= maxKeys {
			return false
		}
		p = &Counts{}
		m[key] = p
	}
	p.New += c.New
	p.Resets += c.Resets
	p.Refused += c.Refused
	p.TimeWaits += c.TimeWaits
	p.CloseWait += c.CloseWait
	return true
}
