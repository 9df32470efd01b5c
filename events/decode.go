package events

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"
)

// RecordSize is sizeof(struct event) in bpf/tcptrace.h.
const RecordSize = 112

// record flags, as in bpf/tcptrace.h
const flagV4Mapped = 1 << 0

// Offsets of struct event's fields; loader's tests check them against the
// bpf2go type.
const (
	offTs     = 0
	offCookie = 8
	offRef    = 16
	offCgroup = 24
	offPid    = 32
	offNetns  = 36
	offSaddr  = 40
	offDaddr  = 56
	offSport  = 72
	offDport  = 74
	offFamily = 76
	offOld    = 77
	offNew    = 78
	offCause  = 79
	offKind   = 80
	offFlags  = 81
	offComm   = 84
	offSrc    = 100
	offRetr   = 82
	offRecv   = 104
)

const (
	afInet  = 2
	afInet6 = 10
)

// Decode fills e from one kernel record. It does not allocate; a short or
// malformed record is an error, never a panic.
func (e *Event) Decode(b []byte) error {
	if len(b) < RecordSize {
		return fmt.Errorf("decode record: %d bytes, want %d", len(b), RecordSize)
	}
	le := binary.LittleEndian
	kind := Kind(b[offKind])
	if kind == Mark {
		*e = Event{Kind: Mark, Mono: le.Uint64(b[offTs:]), Src: le.Uint32(b[offSrc:]), Sock: le.Uint64(b[offCookie:])}
		return nil
	}
	if kind == Holding {
		*e = Event{Kind: Holding, Mono: le.Uint64(b[offTs:]), Sock: le.Uint64(b[offCookie:]),
			Cgroup: le.Uint64(b[offCgroup:]), PID: le.Uint32(b[offPid:]), Src: le.Uint32(b[offSrc:])}
		copy(e.Comm[:], b[offComm:offComm+CommLen])
		return nil
	}
	if kind != Transition && kind != Parked && kind != Hint && kind != MiniReset {
		return fmt.Errorf("decode record: unknown kind %d", kind)
	}
	switch b[offFamily] {
	case afInet:
		e.Family = 4
		e.LAddr = netip.AddrFrom4([4]byte(b[offSaddr : offSaddr+4]))
		e.RAddr = netip.AddrFrom4([4]byte(b[offDaddr : offDaddr+4]))
	case afInet6:
		e.Family = 6
		e.LAddr = netip.AddrFrom16([16]byte(b[offSaddr : offSaddr+16]))
		e.RAddr = netip.AddrFrom16([16]byte(b[offDaddr : offDaddr+16]))
	default:
		return fmt.Errorf("decode record: unknown address family %d", b[offFamily])
	}
	e.Mono = le.Uint64(b[offTs:])
	e.Time = time.Time{}
	e.Sock = le.Uint64(b[offCookie:])
	// the time in state is worked out in user space (package sockets)
	e.DwellKnown = false
	e.Dwell = 0
	// ref is the listener on a child's first record, the bytes the peer
	// acknowledged on a connection's end
	e.Listener, e.BytesAcked, e.BytesReceived, e.Retrans = 0, 0, 0, 0
	switch State(b[offNew]) {
	case SynRecv:
		e.Listener = le.Uint64(b[offRef:])
	case Close, TimeWait:
		e.BytesAcked = le.Uint64(b[offRef:])
		e.BytesReceived = le.Uint64(b[offRecv:])
		e.Retrans = uint32(le.Uint16(b[offRetr:]))
	}
	e.V4Mapped = b[offFlags]&flagV4Mapped != 0
	e.Cgroup = le.Uint64(b[offCgroup:])
	e.PID = le.Uint32(b[offPid:])
	e.Netns = le.Uint32(b[offNetns:])
	e.LPort = le.Uint16(b[offSport:])
	e.RPort = le.Uint16(b[offDport:])
	e.Old = State(b[offOld])
	e.New = State(b[offNew])
	e.Cause = Cause(b[offCause])
	e.Kind = kind
	e.Src = le.Uint32(b[offSrc:])
	copy(e.Comm[:], b[offComm:offComm+CommLen])
	return nil
}

// Encode writes e as a kernel record into b, which must hold RecordSize
// bytes. Tests use it to build records; Time is not part of a record.
func (e *Event) Encode(b []byte) {
	clear(b[:RecordSize])
	le := binary.LittleEndian
	le.PutUint64(b[offTs:], e.Mono)
	le.PutUint32(b[offSrc:], e.Src)
	b[offKind] = byte(e.Kind)
	le.PutUint64(b[offCookie:], e.Sock)
	if e.Kind == Mark {
		return
	}
	if e.Kind == Holding {
		le.PutUint64(b[offCgroup:], e.Cgroup)
		le.PutUint32(b[offPid:], e.PID)
		copy(b[offComm:], e.Comm[:])
		return
	}
	le.PutUint64(b[offRef:], e.Listener)
	if e.New == Close || e.New == TimeWait {
		le.PutUint64(b[offRef:], e.BytesAcked)
		le.PutUint64(b[offRecv:], e.BytesReceived)
		le.PutUint16(b[offRetr:], uint16(min(e.Retrans, 0xffff)))
	}
	if e.V4Mapped {
		b[offFlags] |= flagV4Mapped
	}
	le.PutUint64(b[offCgroup:], e.Cgroup)
	le.PutUint32(b[offPid:], e.PID)
	le.PutUint32(b[offNetns:], e.Netns)
	if e.Family == 6 {
		b[offFamily] = afInet6
		l, r := e.LAddr.As16(), e.RAddr.As16()
		copy(b[offSaddr:], l[:])
		copy(b[offDaddr:], r[:])
	} else {
		b[offFamily] = afInet
		l, r := e.LAddr.As4(), e.RAddr.As4()
		copy(b[offSaddr:], l[:])
		copy(b[offDaddr:], r[:])
	}
	le.PutUint16(b[offSport:], e.LPort)
	le.PutUint16(b[offDport:], e.RPort)
	b[offOld] = byte(e.Old)
	b[offNew] = byte(e.New)
	b[offCause] = byte(e.Cause)
	copy(b[offComm:], e.Comm[:])
}

// ByAddress says whether a socket id comes from the socket's kernel
// address rather than its cookie: records carry addresses where the
// kernel's tracing programs cannot make cookies (Linux 5.10, see
// bpf/compat.h), and the stream names each life of an address by a
// serial in the same space (sockets.Lives). Such an id has its top 17
// bits set; cookies count up from 1, and the keys package sockets makes
// for sockets without one leave bits 48 to 62 clear. sock_diag knows
// neither address nor serial: such a socket is found by its connection.
func ByAddress(sock uint64) bool { return sock>>47 == 1<<17-1 }

// HolderSize is sizeof(struct holder) in bpf/tcptrace.h.
const HolderSize = 104

// Offsets of struct holder's fields.
const (
	offHCookie = 0
	offHStart  = 8
	offHCgroup = 16
	offHPid    = 24
	offHNetns  = 28
	offHFd     = 32
	offHLport  = 36
	offHState  = 38
	offHFamily = 39
	offHComm   = 40
	offHSaddr  = 56
	offHDaddr  = 72
	offHDport  = 88
	offHSk     = 96
)

// Holder is one open file of a TCP socket: a process that holds it.
type Holder struct {
	// Sock names the socket as records do: its cookie, or where the
	// kernel's records name sockets by address (ByAddress), Addr. 0 for
	// a socket without a cookie where records carry cookies.
	Sock uint64
	// Cookie is the socket's cookie, as sock_diag shows it; 0 if none was
	// made yet. Addr is its kernel address.
	Cookie, Addr uint64
	// Start is when the holding process started, CLOCK_MONOTONIC: of
	// several holders, the youngest is taken (package sockets).
	Start  uint64
	Cgroup uint64
	PID    uint32
	Netns  uint32
	FD     uint32
	LPort  uint16
	State  State
	Comm   [CommLen]byte
	// The connection's addresses: a socket without a cookie (Sock 0,
	// an MPTCP socket's subflow, which the dump cannot give one) is found
	// by them, and so is every socket when the dump is joined with
	// sock_diag's where records name sockets by address.
	Family Family
	LAddr  netip.Addr
	RAddr  netip.Addr
	RPort  uint16
}

// CommString returns the holding process's command name.
func (h *Holder) CommString() string { return string(commBytes(&h.Comm)) }

// InState is a record of h's socket being in its state now, owned by h's
// process (Old and New both h.State): what takes records (a filter, a
// count of the sockets held) takes the sockets of a dump through it.
func (h *Holder) InState() Event {
	return Event{Kind: Transition, Sock: h.Sock, Old: h.State, New: h.State, Netns: h.Netns, Family: h.Family,
		LAddr: h.LAddr, RAddr: h.RAddr, LPort: h.LPort, RPort: h.RPort, PID: h.PID, Comm: h.Comm, Cgroup: h.Cgroup}
}

// DecodeHolder fills h from one record of the holders dump.
func (h *Holder) DecodeHolder(b []byte) error {
	if len(b) < HolderSize {
		return fmt.Errorf("decode holder: %d bytes, want %d", len(b), HolderSize)
	}
	le := binary.LittleEndian
	*h = Holder{
		Sock:   le.Uint64(b[offHCookie:]),
		Cookie: le.Uint64(b[offHCookie:]),
		Addr:   le.Uint64(b[offHSk:]),
		Start:  le.Uint64(b[offHStart:]),
		Cgroup: le.Uint64(b[offHCgroup:]),
		PID:    le.Uint32(b[offHPid:]),
		Netns:  le.Uint32(b[offHNetns:]),
		FD:     le.Uint32(b[offHFd:]),
		LPort:  le.Uint16(b[offHLport:]),
		State:  State(b[offHState]),
	}
	copy(h.Comm[:], b[offHComm:offHComm+CommLen])
	h.RPort = le.Uint16(b[offHDport:])
	switch b[offHFamily] {
	case afInet:
		h.Family = 4
		h.LAddr = netip.AddrFrom4([4]byte(b[offHSaddr : offHSaddr+4]))
		h.RAddr = netip.AddrFrom4([4]byte(b[offHDaddr : offHDaddr+4]))
	case afInet6:
		// shown as IPv4 when v4-mapped, as records are
		l := netip.AddrFrom16([16]byte(b[offHSaddr : offHSaddr+16]))
		r := netip.AddrFrom16([16]byte(b[offHDaddr : offHDaddr+16]))
		h.Family = 6
		if l.Is4In6() || r.Is4In6() {
			h.Family, l, r = 4, l.Unmap(), r.Unmap()
		}
		h.LAddr, h.RAddr = l, r
	}
	return nil
}
