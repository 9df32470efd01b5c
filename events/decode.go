package events

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"
)

// RecordSize is sizeof(struct event) in bpf/tcptrace.h.
const RecordSize = 104

// Offsets of struct event's fields; loader's tests check them against the
// bpf2go type.
const (
	offTs     = 0
	offCookie = 8
	offDwell  = 16
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
)

// record flags, as in bpf/tcptrace.h
const flagDwell = 1 << 0

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
		*e = Event{Kind: Mark, Mono: le.Uint64(b[offTs:]), Src: le.Uint32(b[offSrc:])}
		return nil
	}
	if kind != Transition && kind != Parked && kind != Hint {
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
	flags := b[offFlags]
	e.Mono = le.Uint64(b[offTs:])
	e.Time = time.Time{}
	e.Sock = le.Uint64(b[offCookie:])
	e.DwellKnown = flags&flagDwell != 0
	e.Dwell = 0
	if e.DwellKnown {
		e.Dwell = time.Duration(le.Uint64(b[offDwell:]))
	}
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
	if e.Kind == Mark {
		return
	}
	le.PutUint64(b[offCookie:], e.Sock)
	le.PutUint64(b[offDwell:], uint64(e.Dwell))
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
	if e.DwellKnown {
		b[offFlags] |= flagDwell
	}
	copy(b[offComm:], e.Comm[:])
}
