// Package life turns transitions into one record per finished connection,
// as tcplife does, but from the state machine: the owner, the role, the
// handshake's time, how long it lived, how it ended and which side closed
// first.
package life

import (
	"net/netip"
	"time"

	"github.com/tcptrace/tcptrace/events"
)

// Role is which end of a connection a socket is.
type Role uint8

const (
	Unknown Role = iota // opened before the trace, and not seen to say
	Client              // it called connect()
	Server              // a listener's child
)

func (r Role) String() string {
	return [...]string{"-", "client", "server"}[r]
}

// Closer says which side closed first.
type Closer uint8

const (
	NotSeen Closer = iota // no orderly close was seen (a reset, or a close before the trace)
	Local                 // this side sent the first FIN: FIN_WAIT1
	Remote                // the peer did: CLOSE_WAIT
)

func (c Closer) String() string {
	return [...]string{"-", "local", "remote"}[c]
}

// Conn is one finished connection.
type Conn struct {
	Sock         uint64
	PID          uint32
	Comm         string
	Role         Role
	Family       events.Family
	LAddr, RAddr netip.Addr
	LPort, RPort uint16
	Start, End   time.Time // first transition seen, and its end
	// Handshake is the time in SYN_SENT or SYN_RECV; 0 if not seen.
	Handshake time.Duration
	// Duration is from the first transition seen to the end; Whole says
	// the first was the connection's start.
	Duration time.Duration
	Whole    bool
	// End is the CLOSE's cause, or "time_wait" when the connection
	// ended by entering TIME_WAIT (its port held for 60 s more).
	EndedBy    string
	ClosedBy   Closer
	TimeInWait bool
	// Sent is the data the peer acknowledged, Received the data
	// received, Retrans the segments retransmitted: read from the socket
	// in the kernel at its end, the SYN and FINs taken out (for a
	// connection seen only in part, those seen).
	Sent, Received uint64
	Retrans        uint32
}

type open struct {
	start     uint64 // CLOCK_MONOTONIC
	startTime time.Time
	role      Role
	whole     bool
	handshake time.Duration
	closer    Closer
	// the sequence numbers that are no data, in the kernel's counts:
	// our SYN, acked (a client's), our FIN, acked, and the peer's FIN
	synAcked, finAcked, peerFin bool
}

// DefaultMax bounds the connections followed at once.
const DefaultMax = 1 << 20

// Tracker follows sockets to their end and calls its function once per
// finished connection: a stream.Consumer. Listeners are not connections.
type Tracker struct {
	max   int
	open  map[uint64]*open
	emit  func(*Conn) error
	flush func() error
	c     Conn
	// Dropped counts connections not followed: Max was reached.
	Dropped uint64
}

// New returns a tracker of at most max open connections (DefaultMax if 0)
// that calls emit for each finished one (the *Conn is reused after emit
// returns), and flush when the stream has caught up.
func New(max int, emit func(*Conn) error, flush func() error) *Tracker {
	if max <= 0 {
		max = DefaultMax
	}
	return &Tracker{max: max, open: map[uint64]*open{}, emit: emit, flush: flush}
}

// Flush passes the stream's flush on.
func (t *Tracker) Flush() error { return t.flush() }

// Write follows one event.
func (t *Tracker) Write(e *events.Event) error {
	if e.New == events.Listen || e.Old == events.Listen && e.New == events.Close {
		return nil // a listener
	}
	if e.Old == events.TimeWait {
		return nil // its end was its entry into TIME_WAIT
	}
	o := t.open[e.Sock]
	if o == nil {
		if len(t.open) >= t.max {
			t.Dropped++
			return nil
		}
		o = &open{start: e.Mono, startTime: e.Time}
		// a connection seen from its first transition
		o.whole = e.Old == events.Close && e.New == events.SynSent || e.Old == events.Listen && e.New == events.SynRecv
		t.open[e.Sock] = o
	}
	switch {
	case e.New == events.SynSent:
		o.role = Client
	case e.New == events.SynRecv:
		o.role = Server
	case e.Old == events.SynSent && e.New == events.Established:
		o.role = Client
		o.handshake = e.Dwell
		o.synAcked = true
	case e.Old == events.SynRecv && e.New == events.Established:
		o.role = Server
		o.handshake = e.Dwell
	case e.Old == events.Established && e.New == events.FinWait1 && o.closer == NotSeen:
		o.closer = Local
	case e.Old == events.Established && e.New == events.CloseWait && o.closer == NotSeen:
		o.closer = Remote
	}
	switch {
	case e.New == events.CloseWait, e.New == events.Closing:
		o.peerFin = true
	case e.Old == events.FinWait1 && e.New == events.FinWait2:
		o.finAcked = true
	case e.Old == events.FinWait2 && e.New == events.TimeWait, e.Old == events.FinWait1 && e.New == events.TimeWait:
		o.finAcked, o.peerFin = true, true
	case e.Old == events.Closing && e.New == events.TimeWait:
		o.finAcked = true
	case e.Old == events.LastAck && e.New == events.Close && e.Cause == events.CauseClosed:
		o.finAcked = true
	}
	ended := ""
	switch {
	case e.New == events.TimeWait:
		ended = "time_wait"
	case e.New == events.Close && e.Old != events.TimeWait:
		ended = e.Cause.String()
	default:
		return nil
	}
	delete(t.open, e.Sock)
	t.c = Conn{Sock: e.Sock, PID: e.PID, Comm: e.CommString(), Role: o.role, Family: e.Family,
		LAddr: e.LAddr, RAddr: e.RAddr, LPort: e.LPort, RPort: e.RPort,
		Start: o.startTime, End: e.Time, Handshake: o.handshake, Duration: time.Duration(e.Mono - o.start),
		Whole: o.whole, EndedBy: ended, ClosedBy: o.closer, TimeInWait: ended == "time_wait",
		Sent:     data(e.BytesAcked, o.synAcked, o.finAcked),
		Received: data(e.BytesReceived, o.peerFin),
		Retrans:  e.Retrans}
	return t.emit(&t.c)
}

// data is a kernel count of sequence space less the SYN and FINs in it.
func data(n uint64, control ...bool) uint64 {
	for _, c := range control {
		if c && n > 0 {
			n--
		}
	}
	return n
}
