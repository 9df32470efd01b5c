// Package events holds tcptrace's domain: a TCP state transition with its
// owner, its addresses and why it closed, decoded from the kernel's record.
// It does no I/O.
package events

import (
	"net/netip"
	"strconv"
	"time"
)

// State is a TCP state as numbered by the kernel (include/net/tcp_states.h).
type State uint8

// The kernel's TCP states.
const (
	Established   State = 1
	SynSent       State = 2
	SynRecv       State = 3
	FinWait1      State = 4
	FinWait2      State = 5
	TimeWait      State = 6
	Close         State = 7
	CloseWait     State = 8
	LastAck       State = 9
	Listen        State = 10
	Closing       State = 11
	NewSynRecv    State = 12
	BoundInactive State = 13
)

var stateNames = [...]string{
	Established:   "ESTABLISHED",
	SynSent:       "SYN_SENT",
	SynRecv:       "SYN_RECV",
	FinWait1:      "FIN_WAIT1",
	FinWait2:      "FIN_WAIT2",
	TimeWait:      "TIME_WAIT",
	Close:         "CLOSE",
	CloseWait:     "CLOSE_WAIT",
	LastAck:       "LAST_ACK",
	Listen:        "LISTEN",
	Closing:       "CLOSING",
	NewSynRecv:    "NEW_SYN_RECV",
	BoundInactive: "BOUND_INACTIVE",
}

// String gives the kernel's name without TCP_, or UNKNOWN(n).
func (s State) String() string {
	if int(s) < len(stateNames) && stateNames[s] != "" {
		return stateNames[s]
	}
	return "UNKNOWN(" + strconv.Itoa(int(s)) + ")"
}

// ParseState reads a state name as String prints it, or as ss spells it
// (close-wait, fin-wait-1, listening, closed); case does not matter and a
// TCP_ prefix is allowed.
func ParseState(name string) (State, bool) {
	n := []byte(name)
	for i, c := range n {
		switch {
		case 'a' <= c && c <= 'z':
			n[i] = c - 'a' + 'A'
		case c == '-':
			n[i] = '_'
		}
	}
	u := string(n)
	if len(u) > 4 && u[:4] == "TCP_" {
		u = u[4:]
	}
	if a, ok := ssNames[u]; ok {
		u = a
	}
	for s, sn := range stateNames {
		if sn != "" && sn == u {
			return State(s), true
		}
	}
	return 0, false
}

// ssNames are ss's state names that differ from the kernel's by more than
// case and dashes.
var ssNames = map[string]string{"FIN_WAIT_1": "FIN_WAIT1", "FIN_WAIT_2": "FIN_WAIT2", "LISTENING": "LISTEN", "CLOSED": "CLOSE"}

// StateNames lists the names ParseState accepts, in kernel order.
func StateNames() []string {
	var names []string
	for _, n := range stateNames {
		if n != "" {
			names = append(names, n)
		}
	}
	return names
}

// Cause says why a connection reached CLOSE.
type Cause uint8

// Causes, numbered as in bpf/tcptrace.h.
const (
	CauseNone          Cause = 0
	CauseClosed        Cause = 1 // an orderly end
	CauseRefused       Cause = 2 // a RST answered our SYN
	CauseResetReceived Cause = 3 // the peer reset the connection
	CauseResetSent     Cause = 4 // we aborted: SO_LINGER 0, unread data, a timeout that sends a RST
	CauseTimeout       Cause = 5 // SYN or data retransmissions, or a FIN_WAIT2 timer, ran out
	CauseUnreachable   Cause = 6 // an ICMP error ended the handshake
	CauseReused        Cause = 7 // a TIME_WAIT socket taken over by a new connection
	CauseNoPort        Cause = 8 // connect() found no free local port (EADDRNOTAVAIL, "Cannot assign requested address")
)

var causeNames = [...]string{
	CauseNone:          "",
	CauseClosed:        "closed",
	CauseRefused:       "refused",
	CauseResetReceived: "reset_received",
	CauseResetSent:     "reset_sent",
	CauseTimeout:       "timeout",
	CauseUnreachable:   "unreachable",
	CauseReused:        "reused",
	CauseNoPort:        "no_port",
}

// String gives the cause's name, empty for none.
func (c Cause) String() string {
	if int(c) < len(causeNames) {
		return causeNames[c]
	}
	return "unknown(" + strconv.Itoa(int(c)) + ")"
}

// Kind tells a transition from the kernel's notes to user space.
type Kind uint8

const (
	// Transition is a state change to show.
	Transition Kind = 1
	// Parked says a dead FIN_WAIT2 went to a timewait mini-socket: the
	// connection is not over, and user space follows it (package timewait).
	Parked Kind = 2
	// Hint is a transition the filters drop, sent because the timewait
	// follower needs it: not shown.
	Hint Kind = 3
	// Mark says every record of CPU Src-1 timed before Mono is in the
	// ring before it; only Mono, Src and Sock, the kernel's jiffies at
	// Mono, are set. Package order uses it.
	Mark Kind = 4
	// Holding says process PID received or sent on server connection
	// Sock: it holds it now (it accepted it, or was handed it). Only
	// Mono, Sock, PID, Comm, Cgroup and Src are set. Package sockets
	// takes it; it is never shown.
	Holding Kind = 5
	// MiniReset says a timewait mini-socket in FIN_WAIT2 (a parked
	// FIN_WAIT2: an orphan's) answered a segment with a reset, and is
	// gone: the connection, Mono, Sock (its cookie, if it has one) and
	// Src are set, Old FIN_WAIT2, New CLOSE, Cause reset_sent. Package
	// timewait ends the connection it follows there; it is never shown.
	MiniReset Kind = 6
)

// Family is the address family as shown: 4 or 6.
type Family uint8

// String gives "ipv4" or "ipv6".
func (f Family) String() string {
	if f == 6 {
		return "ipv6"
	}
	return "ipv4"
}

// CommLen is the kernel's TASK_COMM_LEN.
const CommLen = 16

// Event is one TCP state transition.
type Event struct {
	// Mono is when it happened, CLOCK_MONOTONIC in nanoseconds.
	Mono uint64
	// Time is Mono on the wall clock; set by the stream, not by Decode.
	Time time.Time
	// Sock is the socket cookie, as `ss -e` shows it after "sk:".
	Sock uint64
	// Dwell is the time spent in Old; meaningful only if DwellKnown.
	Dwell      time.Duration
	DwellKnown bool
	// PID and Comm name the owning process, the one that holds the
	// socket (see the README's "The owner"); 0 and empty when unknown.
	// Comm is the process's name (its main thread's), as ps shows it.
	PID   uint32
	Comm  [CommLen]byte
	Netns uint32
	// Src is the CPU, plus one, whose staging the record came through;
	// 0 if it was written straight to the ring (see package order).
	Src    uint32
	Cgroup uint64
	Family Family
	LAddr  netip.Addr
	RAddr  netip.Addr
	LPort  uint16
	RPort  uint16
	Old    State
	New    State
	Cause  Cause
	Kind   Kind
	// Listener is, on a server connection's LISTEN -> SYN_RECV, the
	// cookie of the listener it came from (0 if not known).
	Listener uint64
	// V4Mapped says the socket is AF_INET6 though it talks IPv4 (shown
	// as Family 4): its timewait mini-socket is listed as AF_INET6.
	V4Mapped bool
	// On the record that ends a connection (New is CLOSE, or TIME_WAIT
	// at the hand-off to a timewait mini-socket, as the kernel reports
	// it or as the timewait follower makes it): the sequence space the
	// peer acknowledged and the one received, which count a SYN and a
	// FIN as one byte each, as tcp_sock's bytes_acked and bytes_received
	// do (a FIN that a mini-socket took is added by the follower), and
	// the segments retransmitted (at most 65535). Package life takes the
	// SYN and FINs back out.
	BytesAcked, BytesReceived uint64
	Retrans                   uint32
}

// CommString returns the owner's command name.
func (e *Event) CommString() string {
	return string(e.CommBytes())
}

// CommBytes returns the owner's command name without the trailing NULs.
func (e *Event) CommBytes() []byte { return commBytes(&e.Comm) }

// commBytes is a kernel command name without its trailing NULs.
func commBytes(c *[CommLen]byte) []byte {
	for i, b := range c {
		if b == 0 {
			return c[:i]
		}
	}
	return c[:]
}
