// Package sockets keeps what tcptrace knows of each live socket between
// its transitions: the process that holds it, that process's cgroup and
// when the socket entered its state.
//
// The owner of a socket is a process that holds it: one with an open file
// for it, as `ss -p` shows. The kernel names it where it can (a system
// call on the socket runs in that process); the transitions that arriving
// packets make run in whatever task a softirq interrupted. A server's
// connection is a harder case: it is made from a listener, in softirq,
// before anyone has accepted it, and the process that accepts it (a
// worker), or is handed it later (fork, SCM_RIGHTS), is often not the one
// that called listen() (a master, a supervisor, a parent that exited when
// it daemonized). So a server connection's records are held here until a
// process is seen to hold it: the kernel reports the first receive or send
// of each new holder (events.Holding), and a close names its caller. If
// none comes within HoldFor, the records go out with the best owner known
// then: a process that the holders dump (loader.Tracer.Holders) shows
// holding the connection itself, else one holding its listener.
//
// Keeping this here rather than in per-socket BPF storage saves the BPF
// program about 100 ns per transition (see the README's overhead section).
package sockets

import (
	"cmp"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/tcptrace/tcptrace/events"
)

// DefaultMax bounds the sockets followed at once: about 80 bytes each.
const DefaultMax = 1 << 18

// DefaultHoldFor bounds how long a server connection's records wait for
// the process that accepts it.
const DefaultHoldFor = 100 * time.Millisecond

// maxHeld bounds the records held for one connection: past it, they go
// out with the best owner known.
const maxHeld = 6

// maxWait bounds, in HoldFor, how long a connection's records wait for a
// holders dump that the dumps' spacing puts off.
const maxWait = 10

// Options configure a Table.
type Options struct {
	// Max bounds the sockets followed (DefaultMax if 0).
	Max int
	// HoldFor bounds how long a server connection's records wait for
	// their holder (DefaultHoldFor if 0).
	HoldFor time.Duration
	// Holders lists who holds which TCP socket now
	// (loader.Tracer.Holders). Nil means only the records tell.
	Holders func() ([]events.Holder, error)
	// NoNotes says the kernel writes no Holding records (no
	// sock:sock_send_length, before Linux 6.3): a server connection
	// handed to another process after the handshake shows only in a
	// holders dump, so its ESTABLISHED -> CLOSE_WAIT, the record that
	// names who leaks a CLOSE_WAIT, waits for one too.
	NoNotes bool
}

// owner is a process that holds a socket.
type owner struct {
	cgroup uint64
	pid    uint32
	comm   [events.CommLen]byte
}

func ownerOf(e *events.Event) owner { return owner{cgroup: e.Cgroup, pid: e.PID, comm: e.Comm} }

func holderOwner(h *events.Holder) owner { return owner{cgroup: h.Cgroup, pid: h.PID, comm: h.Comm} }

func (o owner) set(e *events.Event) { e.Cgroup, e.PID, e.Comm = o.cgroup, o.pid, o.comm }

type entry struct {
	since uint64 // when the socket entered its state, CLOCK_MONOTONIC
	owner
	listener   uint64 // a server connection's listener, by cookie
	sinceKnown bool   // false for a socket older than the tracer
}

// takers says who takes a listener's connections, as learnt from them.
type takers uint8

const (
	// takersUnknown: each connection waits for its holder
	takersUnknown takers = iota
	// takersMaker: the process that made the listener takes its
	// connections (a single-process server). The kernel notes no holder
	// for it, so its connections go out at once, named for it, and a
	// connection another process takes is renamed from then on.
	takersMaker
	// takersOthers: other processes take them (prefork workers, a
	// daemon's, a service handed the listener): each waits for its holder
	takersOthers
)

// listener is what is known of a listening socket.
type listener struct {
	netns   uint32
	lport   uint16
	takers  takers
	creator owner // who called listen(), or held it when the tracer began
	// acceptor is the last process seen to take a connection from it
	acceptor owner
	// holders, from the last holders dump: nil if none was made since
	// the listener appeared
	holders []events.Holder
}

type portKey struct {
	netns uint32
	lport uint16
}

// tuple identifies a connection by its addresses, for a socket older
// than the tracer that the holders dump could give no cookie
type tuple struct {
	netns        uint32
	laddr, raddr netip.Addr
	lport, rport uint16
}

// pending is a server connection waiting for its holder, or only for its
// addresses (the child's next transition) when its owner is known.
type pending struct {
	recs     []*events.Event
	deadline uint64 // CLOCK_MONOTONIC
	addrOnly bool
	// seen is a process seen holding it whose records wait for a dump
	// to tell whether it accepted the connection or was handed it
	seen owner
}

// Table follows sockets by cookie. It is not safe for concurrent use.
type Table struct {
	max     int
	holdFor uint64
	noNotes bool
	dump    func() ([]events.Holder, error)

	live      map[uint64]entry
	listeners map[uint64]*listener
	// listeners by port, for the children of a listener older than the
	// tracer, which carry no listener cookie
	byPort map[portKey]uint64
	pend   map[uint64]*pending
	// records and pendings are recycled: a record is too big for a map to
	// hold inline, so storing values would allocate one per child
	spare     []*events.Event
	sparePend []*pending
	lastDump  uint64
	// self is the tracer's own pid (see Observe)
	self uint32
	// processes the last dump saw holding any socket
	alive map[uint32]bool
	// sockets older than the tracer with no cookie, until their first
	// record
	byTuple  map[tuple]owner
	dumpTook uint64 // how long the last dump took, ns

	// Full counts the records of sockets not followed because max were:
	// their owner and times in state stay unknown. A socket counts once
	// per record, not once.
	Full uint64
	// Dumps counts the holders dumps made; DumpErr is the last one's
	// error, if it failed.
	Dumps   uint64
	DumpErr error
}

// New returns a table configured by opts.
func New(opts Options) *Table {
	if opts.Max <= 0 {
		opts.Max = DefaultMax
	}
	if opts.HoldFor <= 0 {
		opts.HoldFor = DefaultHoldFor
	}
	return &Table{
		max:       opts.Max,
		holdFor:   uint64(opts.HoldFor),
		noNotes:   opts.NoNotes,
		dump:      opts.Holders,
		live:      make(map[uint64]entry),
		listeners: make(map[uint64]*listener),
		byPort:    make(map[portKey]uint64),
		pend:      make(map[uint64]*pending),
		self:      uint32(os.Getpid()),
	}
}

// Len is the number of sockets followed.
func (t *Table) Len() int { return len(t.live) }

// Pending is the number of server connections whose records wait for
// their holder.
func (t *Table) Pending() int { return len(t.pend) }

// Seed takes the sockets that exist when tracing begins, from a holders
// dump: their owners are known from their first transition on, their
// times in state are not. Of several holders of one socket, the youngest
// process is taken (a forked worker rather than its master).
func (t *Table) Seed(hs []events.Holder) {
	t.takeDump(hs)
	for _, h := range YoungestPerSocket(hs) {
		if h.State == events.Listen {
			continue
		}
		if h.Sock == 0 {
			if t.byTuple == nil {
				t.byTuple = make(map[tuple]owner)
			}
			t.byTuple[tuple{h.Netns, h.LAddr, h.RAddr, h.LPort, h.RPort}] = holderOwner(&h)
			continue
		}
		if _, ok := t.live[h.Sock]; ok || !t.room(h.Sock) {
			continue
		}
		t.live[h.Sock] = entry{owner: holderOwner(&h)}
	}
}

// YoungestPerSocket keeps, of each socket's holders, the youngest: a
// worker forked from its master holds what it was handed. Holders of a
// socket without a cookie are kept one each, under keys no cookie takes
// (the top bit set).
func YoungestPerSocket(hs []events.Holder) map[uint64]events.Holder {
	out := make(map[uint64]events.Holder)
	var anon []events.Holder
	for _, h := range hs {
		if h.Sock == 0 {
			anon = append(anon, h)
			continue
		}
		if o, ok := out[h.Sock]; !ok || h.Start > o.Start {
			out[h.Sock] = h
		}
	}
	// without a cookie, one holder each: keyed apart from the rest, as
	// Seed wants them
	for i, h := range anon {
		out[uint64(i)<<32|1<<63] = h
	}
	return out
}

// takeDump records every listener's holders from a dump; a listener
// older than the tracer is learnt here.
func (t *Table) takeDump(hs []events.Holder) {
	for _, l := range t.listeners {
		l.holders = l.holders[:0]
	}
	clear(t.alive)
	if t.alive == nil {
		t.alive = make(map[uint32]bool)
	}
	for _, h := range hs {
		t.alive[h.PID] = true
		if h.State != events.Listen {
			continue
		}
		key := portKey{h.Netns, h.LPort}
		id := h.Sock
		if id == 0 {
			// never given a cookie: known by its port only
			id = t.byPort[key]
		}
		l := t.listeners[id]
		if l == nil {
			if id == 0 {
				id = uint64(1)<<63 | uint64(h.Netns)<<16 | uint64(h.LPort)
			}
			l = &listener{netns: h.Netns, lport: h.LPort, creator: holderOwner(&h)}
			t.listeners[id] = l
		}
		if _, ok := t.byPort[key]; !ok {
			t.byPort[key] = id
		}
		l.holders = append(l.holders, h)
	}
}

// Observe completes e, a record from the kernel in ring order, with its
// socket's owner, cgroup and time in the old state, and passes it to
// next. A server connection's records wait until its holder is known
// (see the package comment), or until Expire.
func (t *Table) Observe(e *events.Event, next func(*events.Event) error) error {
	if e.Kind == events.Holding {
		return t.holding(e, next)
	}
	if e.Old == events.Listen && e.New == events.SynRecv {
		if !t.room(e.Sock) {
			return next(e)
		}
		id := e.Listener
		if id == 0 && e.LPort != 0 {
			id = t.listenerOnPort(e.Netns, e.LPort)
		}
		en := entry{since: e.Mono, sinceKnown: true, owner: ownerOf(e), listener: id}
		l := t.listeners[id]
		settled := id != 0 && l != nil && l.takers == takersMaker
		if settled {
			en.owner = l.creator
		}
		t.live[e.Sock] = en
		t.hold(e).addrOnly = settled
		return nil
	}
	en, known := t.live[e.Sock]
	if !known && len(t.byTuple) > 0 {
		key := tuple{e.Netns, e.LAddr, e.RAddr, e.LPort, e.RPort}
		if o, ok := t.byTuple[key]; ok && t.room(e.Sock) {
			delete(t.byTuple, key)
			en, known = entry{owner: o}, true
		}
	}
	if known && en.sinceKnown && e.Mono >= en.since {
		e.Dwell, e.DwellKnown = time.Duration(e.Mono-en.since), true
	}
	p := t.pend[e.Sock]
	if p != nil {
		// the kernel sets a child's addresses only after its first
		// transition: take them from this one
		if h := p.recs[0]; h.Old == events.Listen && h.New == events.SynRecv && h.RPort == 0 {
			h.Family, h.LAddr, h.RAddr, h.LPort, h.RPort = e.Family, e.LAddr, e.RAddr, e.LPort, e.RPort
		}
		if en.listener == 0 {
			en.listener = t.listenerOnPort(e.Netns, e.LPort)
		}
	}
	if p != nil && p.addrOnly {
		// its owner is known: only the addresses were missing
		t.live[e.Sock] = en
		if err := t.release(e.Sock, en.owner, en.owner, next); err != nil {
			return err
		}
		p = nil
	}
	final := e.New == events.Close || e.New == events.TimeWait || e.Kind == events.Parked
	kept := false
	if e.PID == t.self && en.pid != 0 && en.pid != t.self {
		// the tracer's holders dump held a reference to the socket's
		// file when its holder closed it, and so made the last close
		// (iter/task_file takes one per file it visits): the close is
		// the holder's
		e.PID = 0
	}
	switch {
	case e.PID != 0:
		// a system call on the socket: its caller holds it
		en.owner = ownerOf(e)
		if p != nil {
			t.live[e.Sock] = en
			hs, rest := t.owners(e.Sock, en.owner, e.Mono)
			if err := t.release(e.Sock, hs, rest, next); err != nil {
				return err
			}
		}
	case p != nil && !final && len(p.recs) < maxHeld:
		t.keep(p, e)
		kept = true
	case p == nil && t.noNotes && e.Old == events.Established && e.New == events.CloseWait &&
		t.listenerOf(e.Sock, en) != nil:
		t.hold(e)
		kept = true
	case p != nil:
		// the connection ends with no holder seen (a reset before
		// accept), or holds too much: the best owner known now
		t.live[e.Sock] = en
		hs, rest := t.owners(e.Sock, owner{}, e.Mono)
		if err := t.release(e.Sock, hs, rest, next); err != nil {
			return err
		}
		en.owner = rest
		en.owner.set(e)
	case en.pid != 0:
		en.owner.set(e)
	}
	// apart from the owner: a child of a listener that predates the
	// tracer has a cgroup but no owner
	if e.Cgroup == 0 {
		e.Cgroup = en.cgroup
	} else if en.cgroup == 0 {
		en.cgroup = e.Cgroup
	}
	t.track(e, en, known)
	if e.New == events.Listen {
		t.listen(e)
	} else if e.Old == events.Listen && e.New == events.Close {
		t.unlisten(e.Sock)
	}
	if kept {
		return nil
	}
	return next(e)
}

// track updates the socket's entry after e: the kernel is done with it
// at CLOSE, or when a timewait mini-socket takes over (package timewait's).
func (t *Table) track(e *events.Event, en entry, known bool) {
	if e.New == events.Close || e.New == events.TimeWait || e.Kind == events.Parked {
		delete(t.live, e.Sock)
		return
	}
	if known || t.room(e.Sock) {
		en.since, en.sinceKnown = e.Mono, true
		t.live[e.Sock] = en
	}
}

// listen learns a listener from its CLOSE -> LISTEN, made by the process
// that called listen().
func (t *Table) listen(e *events.Event) {
	l := &listener{netns: e.Netns, lport: e.LPort, creator: ownerOf(e)}
	t.listeners[e.Sock] = l
	t.byPort[portKey{e.Netns, e.LPort}] = e.Sock
}

func (t *Table) unlisten(sock uint64) {
	l := t.listeners[sock]
	if l == nil {
		return
	}
	delete(t.listeners, sock)
	if key := (portKey{l.netns, l.lport}); t.byPort[key] == sock {
		delete(t.byPort, key)
	}
}

// holding takes a Holding record: e.PID received or sent on a server
// connection, so it holds it; the connection's held records go out named
// for it (see owners).
func (t *Table) holding(e *events.Event, next func(*events.Event) error) error {
	en, known := t.live[e.Sock]
	if !known {
		return nil
	}
	en.owner = ownerOf(e)
	t.live[e.Sock] = en
	if l := t.listenerOf(e.Sock, en); l != nil && e.PID != l.creator.pid {
		l.takers = takersOthers
	}
	p := t.pend[e.Sock]
	if p == nil || p.addrOnly {
		return nil
	}
	if l := t.listenerOf(e.Sock, en); l != nil && !l.heldBy(e.PID) {
		// did it take the connection from the listener, or was it
		// handed it? Only a dump tells: when the dumps' spacing allows
		// none now, the records wait for the next one
		if _, later := t.dumpNow(e.Mono, false); later != 0 {
			p.deadline, p.seen = t.waitUntil(p, later), en.owner
			return nil
		}
	}
	hs, rest := t.owners(e.Sock, en.owner, e.Mono)
	return t.release(e.Sock, hs, rest, next)
}

// owners names a held server connection's records, given o, a process
// seen holding the connection (pid 0 if none was). The handshake
// (LISTEN -> SYN_RECV, SYN_RECV -> ESTABLISHED) happens before anyone has
// accepted the connection: it is named for a holder of the listener,
// preferring o when o holds the listener too (o accepted it, as a
// prefork worker does), which a holders dump may be taken to learn. A
// process handed the connection after the accept (fork, SCM_RIGHTS) does
// not hold the listener: when a dump shows o alive without it, the
// handshake is named for the listener's holder (fallback), and only the
// later records for o. A dump is of the present, records are of a few
// milliseconds before: an o that had already exited is taken to have
// accepted the connection.
func (t *Table) owners(sock uint64, o owner, now uint64) (handshake, rest owner) {
	l := t.listenerOf(sock, t.live[sock])
	if l == nil {
		if o.pid == 0 {
			o = t.live[sock].owner
		}
		return o, o
	}
	if o.pid != 0 && !l.heldBy(o.pid) {
		t.dumpNow(now, false)
	}
	// o took the connection from the listener (it holds the listener),
	// or, where no dump could tell (o was gone by then, or nobody held
	// the listener any more), most likely did: handing a connection on
	// is the rarer design
	if o.pid != 0 && (l.heldBy(o.pid) || !t.alive[o.pid] || len(l.holders) == 0) {
		l.acceptor = o
		if l.takers == takersUnknown && o.pid == l.creator.pid {
			l.takers = takersMaker
		}
		return o, o
	}
	if o.pid == 0 && t.contended(sock) {
		// still not taken, and any of several processes may take it:
		// not known, rather than a guess that names the wrong worker
		return owner{}, owner{}
	}
	handshake = t.fallback(l)
	if o.pid == 0 {
		o = handshake
	}
	return handshake, o
}

// contended says whether more than one process holds the listener of
// server connection sock, by the last holders dump: a prefork server's
// workers, any of which may accept it.
func (t *Table) contended(sock uint64) bool {
	l := t.listenerOf(sock, t.live[sock])
	if l == nil {
		return false
	}
	for _, h := range l.holders {
		if h.PID != l.holders[0].PID {
			return true
		}
	}
	return false
}

// nobodyHolds says whether the last holders dump showed nobody holding
// server connection sock's listener, which is still open: a holder in
// transit, or a dump that missed it (seen on the 5.10 guest under load:
// a dump listing no holder at all while a worker held the listener). Its
// maker, the guess then, may have handed it on: the connection waits.
func (t *Table) nobodyHolds(sock uint64) bool {
	l := t.listenerOf(sock, t.live[sock])
	return l != nil && len(l.holders) == 0
}

// heldBy says whether pid is known to hold the listener: from the last
// holders dump, or with none, as the one that made it or took a
// connection from it.
func (l *listener) heldBy(pid uint32) bool {
	if l.holders == nil {
		return pid == l.creator.pid || pid == l.acceptor.pid
	}
	for _, h := range l.holders {
		if h.PID == pid {
			return true
		}
	}
	return false
}

// hold starts holding a server connection's first record.
func (t *Table) hold(e *events.Event) *pending {
	var p *pending
	if n := len(t.sparePend); n > 0 {
		p, t.sparePend = t.sparePend[n-1], t.sparePend[:n-1]
	} else {
		p = &pending{}
	}
	p.deadline = e.Mono + t.holdFor
	p.addrOnly, p.seen = false, owner{}
	t.keep(p, e)
	t.pend[e.Sock] = p
	return p
}

// keep adds a copy of e to the records p holds.
func (t *Table) keep(p *pending, e *events.Event) {
	var h *events.Event
	if n := len(t.spare); n > 0 {
		h, t.spare = t.spare[n-1], t.spare[:n-1]
	} else {
		h = new(events.Event)
	}
	*h = *e
	p.recs = append(p.recs, h)
}

// release passes on a connection's held records: its handshake named
// for hs, the rest for rest.
func (t *Table) release(sock uint64, hs, rest owner, next func(*events.Event) error) error {
	p := t.pend[sock]
	delete(t.pend, sock)
	if en, ok := t.live[sock]; ok {
		en.owner = rest
		t.live[sock] = en
	}
	var err error
	for i, h := range p.recs {
		if h.New == events.SynRecv || h.Old == events.SynRecv && h.New == events.Established {
			hs.set(h)
		} else {
			rest.set(h)
		}
		if err == nil {
			err = next(h)
		}
		t.spare = append(t.spare, h)
		p.recs[i] = nil
	}
	p.recs = p.recs[:0]
	t.sparePend = append(t.sparePend, p)
	return err
}

// waitUntil is when p, put off until later by the dumps' spacing, is due:
// then, or once it has waited maxWait HoldFor, when it gets its dump
// anyway.
func (t *Table) waitUntil(p *pending, later uint64) uint64 {
	return min(later, p.recs[0].Mono+maxWait*t.holdFor)
}

// NextDeadline is when the earliest held connection is due for Expire
// (CLOCK_MONOTONIC), or 0 if none is held.
func (t *Table) NextDeadline() uint64 {
	var d uint64
	for _, p := range t.pend {
		if d == 0 || p.deadline < d {
			d = p.deadline
		}
	}
	return d
}

// Expire passes on the records of every connection held past its
// deadline at now, named for the best owner known: one holders dump
// serves them all.
func (t *Table) Expire(now uint64, next func(*events.Event) error) error {
	var due []uint64
	for sock, p := range t.pend {
		if p.deadline <= now {
			due = append(due, sock)
		}
	}
	return t.releaseAll(due, now, next)
}

// Flush passes on every connection still held, at the end of the trace.
func (t *Table) Flush(next func(*events.Event) error) error {
	due := make([]uint64, 0, len(t.pend))
	for sock := range t.pend {
		due = append(due, sock)
	}
	return t.releaseAll(due, ^uint64(0), next)
}

func (t *Table) releaseAll(due []uint64, now uint64, next func(*events.Event) error) error {
	if len(due) == 0 {
		return nil
	}
	// in the order they happened
	slices.SortFunc(due, func(a, b uint64) int { return cmp.Compare(t.pend[a].recs[0].Mono, t.pend[b].recs[0].Mono) })
	var held map[uint64]events.Holder
	var later uint64
	dumped := false
	for _, sock := range due {
		p := t.pend[sock]
		if p.addrOnly {
			// its owner is known: only its addresses never came
			o := t.live[sock].owner
			if err := t.release(sock, o, o, next); err != nil {
				return err
			}
			continue
		}
		waited := now-p.recs[0].Mono >= maxWait*t.holdFor
		if !dumped {
			// the oldest first: when it waited maxWait, it gets its
			// dump, spacing or not (one per Expire at most). A guess
			// from the listener would name its maker, which may have
			// handed it on (socket activation), or another worker of a
			// prefork server
			held, later = t.dumpNow(now, waited)
			dumped = true
		}
		if later != 0 {
			// the dumps' spacing put this one off
			p.deadline = t.waitUntil(p, later)
			continue
		}
		var o owner
		if h, ok := held[sock]; ok {
			o = holderOwner(&h)
		} else if p.seen.pid != 0 {
			// seen holding it, and gone from it since: it most likely
			// accepted it (see owners)
			o = p.seen
		} else if !waited && (t.contended(sock) || held != nil && t.nobodyHolds(sock)) {
			// nobody holds it yet (it waits in the accept queue) and
			// several processes could take it, or the dump shows no
			// holder of its listener: wait for the one that takes
			// it, rather than guess
			p.deadline = now + t.holdFor
			continue
		}
		hs, rest := t.owners(sock, o, now)
		if err := t.release(sock, hs, rest, next); err != nil {
			return err
		}
	}
	return nil
}

// dumpNow takes a holders dump and returns the youngest holder of each
// socket in it. A dump walks every open file on the host, so they are
// spaced: at least HoldFor apart, and 20 times as long as the last one
// took, so that dumps cost at most a twentieth of a core; but a server
// connection that waited maxWait HoldFor forces one (force): where a dump
// takes over 50 ms (a host with very many open files, or emulation),
// that is up to one dump every maxWait HoldFor while server connections
// come. When the spacing puts the dump off, later says when it may run.
func (t *Table) dumpNow(now uint64, force bool) (held map[uint64]events.Holder, later uint64) {
	if t.dump == nil {
		return nil, 0
	}
	if gap := max(t.holdFor, 20*t.dumpTook); !force && t.lastDump != 0 && now != ^uint64(0) && now-t.lastDump < gap {
		return nil, t.lastDump + gap
	}
	t.lastDump = now
	began := time.Now()
	hs, err := t.dump()
	if err == nil && len(hs) == 0 {
		// nobody holding any TCP socket is not a state a host with
		// server connections is in, and the 5.10 guests' iterator gave
		// such dumps under load: once more, which costs little then
		hs, err = t.dump()
	}
	t.dumpTook = uint64(time.Since(began))
	t.Dumps++
	if err != nil {
		t.DumpErr = err
		return nil, 0
	}
	t.takeDump(hs)
	return YoungestPerSocket(hs), 0
}

// fallback names a server connection's handshake when no process that
// holds its listener was seen taking it: of the listener's holders in the
// last dump, the last one seen accepting from it, else the youngest; with
// no dump since the listener appeared, its last acceptor, else whoever
// called listen().
func (t *Table) fallback(l *listener) owner {
	if len(l.holders) == 0 {
		if l.acceptor.pid != 0 {
			return l.acceptor
		}
		return l.creator
	}
	var young *events.Holder
	for i := range l.holders {
		h := &l.holders[i]
		if l.acceptor.pid != 0 && h.PID == l.acceptor.pid {
			return l.acceptor
		}
		if young == nil || h.Start > young.Start {
			young = h
		}
	}
	return holderOwner(young)
}

// listenerOf finds a server connection's listener: by the cookie the
// kernel gave its first record, or for a listener older than the tracer,
// by the connection's local port.
func (t *Table) listenerOf(sock uint64, en entry) *listener {
	if l := t.listeners[en.listener]; en.listener != 0 && l != nil {
		return l
	}
	var lport uint16
	var netns uint32
	if p := t.pend[sock]; p != nil {
		lport, netns = p.recs[0].LPort, p.recs[0].Netns
	}
	if lport == 0 {
		return nil
	}
	return t.listeners[t.listenerOnPort(netns, lport)]
}

// listenerOnPort finds the listener on a port, for a connection whose
// record names none (its listener is older than the tracer, or the
// kernel's tracing programs have no socket storage): 0 if several listen
// on the port (SO_REUSEPORT, or on several addresses), which only the
// connection's holder tells apart.
func (t *Table) listenerOnPort(netns uint32, lport uint16) uint64 {
	id := t.byPort[portKey{netns, lport}]
	if id == 0 {
		return 0
	}
	for other, l := range t.listeners {
		if other != id && l.netns == netns && l.lport == lport {
			return 0
		}
	}
	return id
}

// room says whether a socket not yet followed can be.
func (t *Table) room(sock uint64) bool {
	if _, ok := t.live[sock]; ok || len(t.live) < t.max {
		return true
	}
	t.Full++
	return false
}
