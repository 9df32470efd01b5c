// Package timewait follows connections after the kernel handed them to a
// timewait mini-socket, where no tracepoint fires: a dead FIN_WAIT2 until
// the peer's FIN moves it to TIME_WAIT (or its timer ends it), and TIME_WAIT
// until the mini-socket goes away. The stream of transitions resolves what
// it can: a local peer's orderly close means the peer got the ACK of its
// FIN, so our side took that FIN and is in TIME_WAIT; a new connection on
// the same addresses means the kernel removed our mini-socket to make room.
// sock_diag is asked about the rest.
//
// The BPF program used to do this with a hash map keyed by the connection's
// addresses, at about 95 ns per transition under churn. Here it costs the
// kernel nothing, and the table's size no longer limits how many
// connections are seen to enter TIME_WAIT, only how many are followed to
// its end.
package timewait

import (
	"cmp"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/sockdiag"
)

// Diag looks up a connection's mini-socket, or many, or lists a
// namespace's.
type Diag interface {
	Lookup(e *events.Event, pid uint32) (sockdiag.Socket, bool, error)
	MiniSockets(netns, pid uint32, family uint8, fn func(sockdiag.MiniSocket)) error
	LookupMany(netns, pid uint32, n int, ev func(i int) *events.Event, fn func(i int, s sockdiag.Socket, found bool)) error
	Release(netns uint32)
}

// Timing of the checks.
const (
	// TimeWaitLen is the kernel's TCP_TIMEWAIT_LEN: 2·MSL on Linux.
	TimeWaitLen = 60 * time.Second
	// firstCheck: a peer's close follows within microseconds; only a
	// parked FIN_WAIT2 still waiting after this is asked about.
	firstCheck = 10 * time.Millisecond
	// loopbackCheck replaces firstCheck where the peer is on loopback, in
	// the same namespace: its close is in the stream (the BPF program
	// sends it even where the filters drop it) and resolves the wait.
	// Asking sooner costs a lookup per connection whose server is slow
	// to close (a quarter of tcptrace's user time under a loopback churn
	// whose servers fall behind), for nothing.
	loopbackCheck = time.Second
	// maxCheck bounds the back-off of a long wait.
	maxCheck = time.Second
	// expirySlack: a mini-socket is asked about this long after its timer
	// should have fired.
	expirySlack = 100 * time.Millisecond
	// Tick is how often the TIME_WAIT connections due are checked, all
	// at once, with one dump of their namespace's mini-sockets: the
	// kernel's timer wheel fires a 60 s timer up to 4 s late anyway
	// (at HZ 1000), and one dump costs about as much as a few dozen
	// lookups of one socket.
	Tick = 500 * time.Millisecond
)

// wheelSlack is how long after the timer wheel should have ended a
// mini-socket it is checked: a jiffy of doubt either way, and the timer
// softirq's delay.
const wheelSlack = 20 * time.Millisecond

// alignUp rounds a time up to the next Tick, so that the connections due
// in one Tick are checked together.
func alignUp(t uint64) uint64 {
	return (t + uint64(Tick) - 1) / uint64(Tick) * uint64(Tick)
}

// DefaultMax bounds the TIME_WAIT connections followed, and separately
// the parked FIN_WAIT2 ones.
const DefaultMax = 65536

// Options configure a Follower.
type Options struct {
	// Max bounds the TIME_WAIT connections followed to their end, and
	// separately the parked FIN_WAIT2 ones; 0 means DefaultMax.
	Max int
	// NoPeerMatch leaves every parked FIN_WAIT2 to sock_diag, even when
	// its peer is local. For tests of that path.
	NoPeerMatch bool
}

// conn is what a followed connection keeps of the record that began its
// wait: what its next transitions show. A whole record is half as big
// again, and a storm follows tens of thousands.
type conn struct {
	Sock, Cgroup uint64
	LAddr, RAddr netip.Addr
	PID, Netns   uint32
	LPort, RPort uint16
	New          events.State // the record's: TIME_WAIT, or CLOSE for a parked FIN_WAIT2
	Family       events.Family
	V4Mapped     bool
	Comm         [events.CommLen]byte
	// what it carried, for the TIME_WAIT entry made of a parked one
	BytesAcked, BytesReceived uint64
	Retrans                   uint32
}

func connOf(e *events.Event) conn {
	return conn{Sock: e.Sock, Cgroup: e.Cgroup, LAddr: e.LAddr, RAddr: e.RAddr, PID: e.PID, Netns: e.Netns,
		LPort: e.LPort, RPort: e.RPort, New: e.New, Family: e.Family, V4Mapped: e.V4Mapped, Comm: e.Comm,
		BytesAcked: e.BytesAcked, BytesReceived: e.BytesReceived, Retrans: e.Retrans}
}

// event makes the record back into e, as a transition of the
// connection.
func (c *conn) event(e *events.Event) {
	*e = events.Event{Kind: events.Transition, Sock: c.Sock, Cgroup: c.Cgroup, LAddr: c.LAddr, RAddr: c.RAddr,
		PID: c.PID, Netns: c.Netns, LPort: c.LPort, RPort: c.RPort, New: c.New, Family: c.Family,
		V4Mapped: c.V4Mapped, Comm: c.Comm, BytesAcked: c.BytesAcked, BytesReceived: c.BytesReceived, Retrans: c.Retrans}
}

func (c *conn) tuple() tuple { return tuple{c.Netns, c.LPort, c.RPort, c.LAddr.As16(), c.RAddr.As16()} }

type entry struct {
	ev    conn   // the transition that started the wait
	since uint64 // entry into the current substate, CLOCK_MONOTONIC
	next  uint64 // when to ask sock_diag
	ends  uint64 // when its timer should fire, as last known
	// its place in the queue
	slot        *slot
	prev, after *entry
	// found in this tick's dump, with its timer's time left
	found bool
	left  time.Duration
	// failed counts the sock_diag failures in a row while asking about
	// it: given up at maxFailed
	failed uint8
}

// maxFailed bounds the sock_diag failures in a row (a lookup that timed
// out on a loaded host, a namespace being torn down) a followed
// connection is asked again after, a second apart.
const maxFailed = 3

// tuple names a connection in its namespace, from our side. Its
// addresses are plain bytes (IPv4 mapped into IPv6): a key without
// pointers, 40 bytes instead of 56, hashes as one block of memory.
type tuple struct {
	netns        uint32
	lport, rport uint16
	laddr, raddr [16]byte
}

func tupleOf(e *events.Event) tuple {
	return tuple{e.Netns, e.LPort, e.RPort, e.LAddr.As16(), e.RAddr.As16()}
}

// peerOf is the tuple of e's peer, if it is local.
func peerOf(e *events.Event) tuple {
	return tuple{e.Netns, e.RPort, e.LPort, e.RAddr.As16(), e.LAddr.As16()}
}

// Follower tracks parked FIN_WAIT2 and TIME_WAIT connections.
type Follower struct {
	diag       Diag
	opts       Options
	finTimeout time.Duration
	byTuple    map[tuple]*entry
	due        queue
	perNetns   map[uint32]int
	parked     int // entries waiting in FIN_WAIT2; the rest are in TIME_WAIT
	// made is the transition being emitted, and spare the entries of
	// ended connections, for reuse: at a connection churn's rate, a new
	// one each time keeps the collector busy
	made  events.Event
	spare []*entry
	// the TIME_WAIT connections due in this tick, reused from tick to
	// tick
	batch []*entry
	// the parked FIN_WAIT2 connections due in this tick
	parkedDue []*entry
	wheel     wheel
	// Untracked counts connections not followed because Max was reached.
	Untracked uint64
	// Unfollowable counts connections given up because their namespace
	// could not be entered or sock_diag failed.
	Unfollowable uint64
	// LastErr is the last such failure, for a warning.
	LastErr error
}

// New returns a follower.
func New(d Diag, o Options) *Follower {
	if o.Max <= 0 {
		o.Max = DefaultMax
	}
	return &Follower{
		diag:       d,
		opts:       o,
		finTimeout: finTimeout(),
		byTuple:    make(map[tuple]*entry),
		perNetns:   make(map[uint32]int),
	}
}

// finTimeout reads net.ipv4.tcp_fin_timeout, the life of a parked FIN_WAIT2.
func finTimeout() time.Duration {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_fin_timeout")
	if err != nil {
		return TimeWaitLen
	}
	s, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return TimeWaitLen
	}
	return time.Duration(s) * time.Second
}

// life is how long a mini-socket waits in the state e entered, unless its
// timer is seen to say otherwise.
func (f *Follower) life(e *events.Event) time.Duration {
	if e.New == events.TimeWait {
		return TimeWaitLen
	}
	return f.finTimeout
}

// Len is the number of connections followed.
func (f *Follower) Len() int { return len(f.byTuple) }

// add follows e's connection, replacing what was followed of it. It says
// false, and counts the connection untracked, when Max is reached.
func (f *Follower) add(e *events.Event, since, next uint64) bool {
	t := tupleOf(e)
	old, replaced := f.byTuple[t]
	waitingFIN := e.New != events.TimeWait
	n := len(f.byTuple) - f.parked
	if waitingFIN {
		n = f.parked
	}
	if replaced && (old.ev.New != events.TimeWait) == waitingFIN {
		n-- // it takes the place of its own entry
	}
	if n >= f.opts.Max {
		f.Untracked++
		if replaced {
			f.remove(old)
		}
		return false
	}
	// count it first, so replacing an entry keeps the namespace's
	// sock_diag connection open
	f.perNetns[e.Netns]++
	if replaced {
		f.remove(old)
	}
	en := f.newEntry()
	*en = entry{ev: connOf(e), since: since, next: next, ends: since + uint64(f.life(e))}
	f.byTuple[t] = en
	if waitingFIN {
		f.parked++
	}
	f.due.push(en)
	return true
}

// maxSpare bounds the ended entries kept for reuse (about 200 bytes each).
const maxSpare = 1024

func (f *Follower) newEntry() *entry {
	if n := len(f.spare); n > 0 {
		en := f.spare[n-1]
		f.spare = f.spare[:n-1]
		return en
	}
	return new(entry)
}

// remove stops following en; en may be reused at once.
func (f *Follower) remove(en *entry) {
	delete(f.byTuple, en.ev.tuple())
	if en.ev.New != events.TimeWait {
		f.parked--
	}
	f.due.remove(en)
	if len(f.spare) < maxSpare {
		f.spare = append(f.spare, en)
	}
	ns := en.ev.Netns
	if f.perNetns[ns]--; f.perNetns[ns] <= 0 {
		delete(f.perNetns, ns)
		f.diag.Release(ns)
	}
}

// Observe sees every record in order, emits the transitions of followed
// connections that e reveals, and says whether to show e itself. The
// caller filters what it shows, and what emit gets: the follower sees
// every record, wanted or not.
func (f *Follower) Observe(e *events.Event, emit func(*events.Event) error) (bool, error) {
	// a new connection on a followed tuple: the kernel removed the
	// mini-socket to make room for it
	if e.Old == events.SynSent || e.Old == events.SynRecv {
		if en, ok := f.byTuple[tupleOf(e)]; ok && en.ev.Sock != e.Sock {
			// past its timer, the timer wheel ended it and the port
			// was taken again before the check that would have said so
			cause := events.CauseReused
			if en.ev.New == events.TimeWait && e.Mono >= en.ends {
				cause = events.CauseClosed
			}
			ev := f.transition(en, e.Mono, events.Close, cause)
			f.remove(en)
			if err := emit(ev); err != nil {
				return false, err
			}
		}
	}
	// a local peer finished its orderly close: it got the ACK of its FIN
	// from our mini-socket, which therefore took the FIN, in TIME_WAIT
	if !f.opts.NoPeerMatch && ((e.Old == events.LastAck && e.New == events.Close && e.Cause == events.CauseClosed) ||
		(e.Old == events.Closing && e.New == events.TimeWait)) {
		if en, ok := f.byTuple[peerOf(e)]; ok && en.ev.New != events.TimeWait {
			if err := f.enterTimeWait(en, e.Mono, emit); err != nil {
				return false, err
			}
		}
	}
	// a local peer took a reset from our parked FIN_WAIT2, which sent it
	// for data it took, and is gone: where the kernel reports no reset
	// of a mini-socket (before 6.10, tcp_v4_send_reset traces full
	// sockets only), this is when it ended
	if !f.opts.NoPeerMatch && e.New == events.Close && e.Cause == events.CauseResetReceived {
		if err := f.resetSent(peerOf(e), e.Mono, emit); err != nil {
			return false, err
		}
	}
	switch {
	case e.Kind == events.MiniReset:
		// a parked FIN_WAIT2 took data and answered with a reset: it
		// ends now, by the reset it sent
		return false, f.resetSent(tupleOf(e), e.Mono, emit)
	case e.Kind == events.Parked:
		first := firstCheck
		if e.RAddr.IsLoopback() && !f.opts.NoPeerMatch {
			first = loopbackCheck
		}
		if !f.add(e, e.Mono-uint64(e.Dwell), e.Mono+uint64(first)) {
			// cannot follow it: say what the kernel said
			ev := *e
			ev.Kind, ev.Cause = events.Transition, events.CauseClosed
			return false, emit(&ev)
		}
		return false, nil
	case e.New == events.TimeWait:
		f.add(e, e.Mono, f.timeWaitCheck(e.Mono))
	}
	return e.Kind == events.Transition, nil
}

// resetSent ends the parked FIN_WAIT2 followed on tuple k, if there is
// one, at now: it sent a reset and is gone.
func (f *Follower) resetSent(k tuple, now uint64, emit func(*events.Event) error) error {
	en, ok := f.byTuple[k]
	if !ok || en.ev.New == events.TimeWait {
		return nil
	}
	ev := f.transition(en, now, events.Close, events.CauseResetSent)
	f.remove(en)
	return emit(ev)
}

// failedAsk counts a sock_diag failure in asking about en at now: it is
// asked again a second later, until maxFailed in a row give it up.
func (f *Follower) failedAsk(en *entry, now uint64) {
	if en.failed++; en.failed < maxFailed {
		en.next = now + uint64(time.Second)
		f.due.push(en)
		return
	}
	f.Unfollowable++
	f.remove(en)
}

// enterTimeWait moves a parked FIN_WAIT2 to TIME_WAIT at now.
func (f *Follower) enterTimeWait(en *entry, now uint64, emit func(*events.Event) error) error {
	ev := f.transition(en, now, events.TimeWait, events.CauseNone)
	// the peer's FIN, which the mini-socket took: the socket counted it
	// in bytes_received where it came before the hand-off
	ev.BytesReceived++
	f.add(ev, now, f.timeWaitCheck(now))
	return emit(ev)
}

// SyncJiffies tells the follower the kernel's jiffies at mono, from the
// marks: with HZ, learnt from two of them a second apart, it checks each
// TIME_WAIT just after the kernel's timer wheel ends it (see wheel).
func (f *Follower) SyncJiffies(mono, jiffies uint64) {
	f.wheel.sync(mono, jiffies)
}

// timeWaitCheck is when to check a TIME_WAIT that began at since: just
// after the timer wheel fires its 60 s timer, or, before HZ is known, at
// the Tick after the timer's own time.
func (f *Follower) timeWaitCheck(since uint64) uint64 {
	if at, ok := f.wheel.fires(since, TimeWaitLen); ok {
		return at + uint64(wheelSlack)
	}
	return alignUp(since + uint64(TimeWaitLen+expirySlack))
}

// Next is when Poll has something to check, or 0 when nothing is followed.
func (f *Follower) Next() uint64 {
	return f.due.next()
}

// Poll asks sock_diag about every connection due by now and emits the
// transitions it finds: a parked FIN_WAIT2 by a lookup of its own, the
// TIME_WAIT connections due by one dump of each namespace's mini-sockets.
func (f *Follower) Poll(now uint64, emit func(*events.Event) error) error {
	f.batch = f.batch[:0]
	f.parkedDue = f.parkedDue[:0]
	f.due.popDue(now, func(en *entry) {
		if en.ev.New == events.TimeWait {
			f.batch = append(f.batch, en)
		} else {
			f.parkedDue = append(f.parkedDue, en)
		}
	})
	for i, en := range f.parkedDue {
		if err := f.checkParked(en, now, emit); err != nil {
			// the rest are checked at the next poll
			for _, en := range f.parkedDue[i+1:] {
				f.due.push(en)
			}
			for _, en := range f.batch {
				f.due.push(en)
			}
			clear(f.parkedDue)
			return err
		}
	}
	clear(f.parkedDue)
	return f.checkTimeWaits(now, emit)
}

// checkParked asks about one parked FIN_WAIT2, taken off the queue.
func (f *Follower) checkParked(en *entry, now uint64, emit func(*events.Event) error) error {
	en.ev.event(&f.made)
	s, found, err := f.diag.Lookup(&f.made, en.ev.PID)
	if err != nil {
		f.LastErr = err
		f.failedAsk(en, now)
		return nil
	}
	en.failed = 0
	switch {
	case found && s.State == events.TimeWait:
		// the peer's FIN arrived
		return f.enterTimeWait(en, now, emit)
	case found:
		// still waiting: asked again after a back-off in proportion to
		// its wait
		en.ends = now + uint64(s.Expires)
		en.next = now + uint64(min(max(time.Duration(now-en.since)/16, firstCheck), maxCheck))
		f.due.push(en)
		return nil
	}
	// gone: its timer ran out
	return f.gone(en, now, events.CauseTimeout, emit)
}

// checkTimeWaits checks the TIME_WAIT connections of f.batch, taken off
// the queue: one dump per namespace and address family.
func (f *Follower) checkTimeWaits(now uint64, emit func(*events.Event) error) error {
	slices.SortFunc(f.batch, func(a, b *entry) int {
		return cmp.Or(cmp.Compare(a.ev.Netns, b.ev.Netns), cmp.Compare(dumpFamily(a), dumpFamily(b)))
	})
	for group := f.batch; len(group) > 0; {
		n := 1
		for n < len(group) && group[n].ev.Netns == group[0].ev.Netns && dumpFamily(group[n]) == dumpFamily(group[0]) {
			n++
		}
		if err := f.checkGroup(group[:n], now, emit); err != nil {
			return err
		}
		group = group[n:]
	}
	clear(f.batch)
	f.batch = f.batch[:0]
	// a storm's first TIME_WAITs end together: do not keep room for them
	if cap(f.batch) > 4096 {
		f.batch = nil
	}
	return nil
}

// dumpFamily is the family the kernel lists en's mini-socket under.
func dumpFamily(en *entry) uint8 {
	if en.ev.Family == 6 || en.ev.V4Mapped {
		return 6
	}
	return 4
}

// checkGroup checks TIME_WAIT connections of one namespace and family.
func (f *Follower) checkGroup(group []*entry, now uint64, emit func(*events.Event) error) error {
	for _, en := range group {
		en.found = false
	}
	var err error
	if len(group)*dumpCost < f.perNetns[group[0].ev.Netns] {
		err = f.lookUp(group)
	} else {
		err = f.dump(group)
	}
	if err != nil {
		f.LastErr = err
		for _, en := range group {
			f.failedAsk(en, now)
		}
		return nil
	}
	for _, en := range group {
		en.failed = 0
		if en.found {
			// still there: checked again once its timer says, or at
			// the next tick when the timer wheel is late
			en.ends = now + uint64(en.left)
			en.next = alignUp(max(en.ends+uint64(expirySlack), now+1))
			f.due.push(en)
			continue
		}
		// gone: its timer ran out
		if err := f.gone(en, now, events.CauseClosed, emit); err != nil {
			return err
		}
	}
	return nil
}

// dumpCost is what a dump costs for each mini-socket it lists, in
// lookups of one socket in a batch (sockdiag.LookupMany): the
// connections due are looked up one by one while they are fewer than
// the namespace's followed connections over dumpCost, else the namespace
// is dumped. A storm's TIME_WAITs end a few hundred at a time, each wheel
// tick, out of tens of thousands: a dump each time would list them all.
const dumpCost = 4

// lookUp finds which of group's mini-sockets are still there, one lookup
// each.
func (f *Follower) lookUp(group []*entry) error {
	return f.diag.LookupMany(group[0].ev.Netns, group[0].ev.PID, len(group),
		func(i int) *events.Event {
			group[i].ev.event(&f.made)
			return &f.made
		},
		func(i int, s sockdiag.Socket, found bool) {
			group[i].found, group[i].left = found, s.Expires
		})
}

// dump finds which of group's mini-sockets are still there, with one
// dump of their namespace's.
func (f *Follower) dump(group []*entry) error {
	netns := group[0].ev.Netns
	if events.ByAddress(group[0].ev.Sock) {
		// records name sockets by address, which sock_diag does not
		// show: by connection (a newer connection on the same
		// addresses is taken for the one followed, which only a cookie
		// tells apart)
		return f.diag.MiniSockets(netns, group[0].ev.PID, dumpFamily(group[0]), func(m sockdiag.MiniSocket) {
			if en, ok := f.byTuple[tuple{netns, m.LPort, m.RPort, m.LAddr, m.RAddr}]; ok {
				en.found, en.left = true, m.Expires
			}
		})
	}
	// by cookie, searched for each socket the dump lists: a map of them
	// would keep the size of the largest group ever due, tens of
	// thousands when a storm's first TIME_WAITs end together
	slices.SortFunc(group, func(a, b *entry) int { return cmp.Compare(a.ev.Sock, b.ev.Sock) })
	return f.diag.MiniSockets(group[0].ev.Netns, group[0].ev.PID, dumpFamily(group[0]), func(m sockdiag.MiniSocket) {
		i, ok := slices.BinarySearchFunc(group, m.Cookie, func(en *entry, c uint64) int { return cmp.Compare(en.ev.Sock, c) })
		if ok {
			group[i].found, group[i].left = true, m.Expires
		}
	})
}

// gone emits the end of a followed connection whose mini-socket is no
// longer there, and stops following it. Gone at its timer, it ended as
// its state does (onTime); gone well before, a RST killed it.
func (f *Follower) gone(en *entry, now uint64, onTime events.Cause, emit func(*events.Event) error) error {
	cause := onTime
	if now+uint64(time.Second) < en.ends {
		cause = events.CauseResetReceived
	}
	ev := f.transition(en, now, events.Close, cause)
	f.remove(en)
	return emit(ev)
}

// transition builds the event for a followed connection's next state, in
// f.made: it is valid until the next call.
func (f *Follower) transition(en *entry, now uint64, to events.State, cause events.Cause) *events.Event {
	en.ev.event(&f.made)
	ev := &f.made
	ev.Kind = events.Transition
	ev.Old = events.FinWait2
	if en.ev.New == events.TimeWait {
		ev.Old = events.TimeWait
	}
	ev.New = to
	ev.Cause = cause
	ev.Mono = now
	ev.Dwell = time.Duration(now - en.since)
	ev.DwellKnown = true
	return ev
}
