package sockets

import "github.com/tcptrace/tcptrace/events"

// Lives names each life of a socket where the kernel's records name
// sockets by their kernel address (events.ByAddress: Linux 5.10, see
// bpf/compat.h). The kernel gives a freed socket's memory to the next
// socket at once, so one address is many sockets over a trace; a cookie
// is one. Lives gives each life a serial of its own, from its first
// record to its last, in the space events.ByAddress recognizes, and names
// the holders of a dump the same way. Records must come in time order (a
// life ends before the next one at its address begins). Where records
// carry cookies, it changes nothing.
type Lives struct {
	cur  map[uint64]uint64 // address -> serial of the life there now
	next uint64
}

// serialBase has the top 17 bits set, as a kernel address has; no real
// socket lies this low in the kernel's half of the address space.
const serialBase = uint64(0x1ffff) << 47

// Record renames e's socket.
func (l *Lives) Record(e *events.Event) {
	if !events.ByAddress(e.Sock) {
		return
	}
	addr := e.Sock
	born := e.Old == events.Close || (e.Old == events.Listen && e.New == events.SynRecv)
	e.Sock = l.serial(addr, born)
	if e.Kind == events.Parked || e.New == events.Close || e.New == events.TimeWait {
		// the full socket is freed now: a timewait mini-socket, if
		// any, is followed by its connection (package timewait)
		delete(l.cur, addr)
	}
}

// Holders renames the holders' sockets. A socket no record named yet is
// older than the tracer: its life begins here.
func (l *Lives) Holders(hs []events.Holder) {
	for i := range hs {
		if events.ByAddress(hs[i].Sock) {
			hs[i].Sock = l.serial(hs[i].Sock, false)
		}
	}
}

func (l *Lives) serial(addr uint64, born bool) uint64 {
	if l.cur == nil {
		l.cur = make(map[uint64]uint64)
	}
	if s, ok := l.cur[addr]; ok && !born {
		return s
	}
	l.next++
	s := serialBase | l.next
	l.cur[addr] = s
	return s
}
