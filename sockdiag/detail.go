package sockdiag

import (
	"encoding/binary"
	"net/netip"
	"os"
	"time"

	"github.com/tcptrace/tcptrace/events"
)

// Detail is one socket of a dump with what `ss -tanoe` shows of it.
type Detail struct {
	Cookie       uint64
	State        events.State // a mini-socket's substate, TIME_WAIT or FIN_WAIT2
	LAddr, RAddr netip.Addr
	LPort, RPort uint16
	// Expires is the time left on its timer: for a mini-socket, until
	// it goes away
	Expires time.Duration
	// RecvQ: bytes received and not read; for a listener, connections
	// waiting to be accepted. SendQ: bytes not yet acked; for a listener,
	// its accept queue's size (the backlog).
	RecvQ, SendQ uint32
	Inode        uint32
	// LastAck is how long ago the socket last took an acceptable ACK
	// from its peer (tcp_info's tcpi_last_ack_recv, ss -ti's lastack;
	// the kernel sets tp->rcv_tstamp in tcp_ack()), to the millisecond;
	// HasInfo says the kernel gave it (a full socket: not a
	// mini-socket, nor a request). Every segment after the handshake
	// carries an ACK, the FIN that moved a socket to CLOSE_WAIT
	// included, so a socket has been in CLOSE_WAIT at least LastAck,
	// exactly as long when its peer has sent nothing since (a peer that
	// closed and went quiet: the leak's case).
	LastAck time.Duration
	HasInfo bool
}

// inetDiagInfo is INET_DIAG_INFO, the attribute with struct tcp_info
// (linux/inet_diag.h; x/sys/unix does not define it)
const inetDiagInfo = 2

// infoExt asks a dump for INET_DIAG_INFO.
const infoExt = 1 << (inetDiagInfo - 1)

// tcp_info's tcpi_last_ack_recv, in ms: after 8 bytes of one-byte
// fields, tcpi_rto to tcpi_fackets and three of the four times
const lastAckOffset = 56

// States is a set of TCP states for a dump, as the kernel numbers them.
func States(states ...events.State) uint32 {
	var m uint32
	for _, s := range states {
		m |= 1 << s
	}
	return m
}

// AllStates asks a dump for every TCP state.
const AllStates = allStates

// Details calls fn for every TCP socket of netns, IPv4 then IPv6, whose
// state is in states (States), with one dump of each family. pid, if not
// 0, is a process likely to be in that namespace. Each family's dump
// lists its listeners first.
func (p *Prober) Details(netns, pid uint32, states uint32, fn func(*Detail)) error {
	var d Detail
	for _, family := range []uint8{4, 6} {
		err := p.dump(netns, pid, family, states, infoExt, func(data []byte) {
			parseDetail(data, &d)
			fn(&d)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// msgLen is struct inet_diag_msg's size: its attributes follow.
const msgLen = 72

// parseDetail reads a struct inet_diag_msg and its INET_DIAG_INFO.
func parseDetail(data []byte, d *Detail) {
	le := binary.NativeEndian
	*d = Detail{
		State:   events.State(data[1]),
		LPort:   binary.BigEndian.Uint16(data[4:]),
		RPort:   binary.BigEndian.Uint16(data[6:]),
		Cookie:  uint64(le.Uint32(data[44:])) | uint64(le.Uint32(data[48:]))<<32,
		Expires: time.Duration(le.Uint32(data[52:])) * time.Millisecond,
	}
	if len(data) >= 72 {
		d.RecvQ, d.SendQ, d.Inode = le.Uint32(data[56:]), le.Uint32(data[60:]), le.Uint32(data[68:])
	}
	for a := data[min(msgLen, len(data)):]; len(a) >= 4; {
		size, typ := int(le.Uint16(a)), le.Uint16(a[2:])
		if size < 4 || size > len(a) {
			break
		}
		if typ == inetDiagInfo && size >= 4+lastAckOffset+4 {
			d.LastAck = time.Duration(le.Uint32(a[4+lastAckOffset:])) * time.Millisecond
			d.HasInfo = true
		}
		a = a[min(nlmAlign(size), len(a)):]
	}
	src, dst := [16]byte(data[8:24]), [16]byte(data[24:40])
	if data[0] == 2 { // AF_INET
		d.LAddr = netip.AddrFrom4([4]byte(src[:4]))
		d.RAddr = netip.AddrFrom4([4]byte(dst[:4]))
	} else {
		d.LAddr = netip.AddrFrom16(src).Unmap()
		d.RAddr = netip.AddrFrom16(dst).Unmap()
	}
}

// OpenNetns opens the network namespace with inode netns (0: this
// process's), through pid's if given, the names `ip netns` keeps, or any
// process in it: for reading its sysctls (package netconf).
func OpenNetns(netns, pid uint32) (*os.File, error) {
	if netns == 0 {
		return os.Open("/proc/thread-self/ns/net")
	}
	return openNetns(netns, pid)
}

// SelfNetns is the inode of this process's network namespace.
func SelfNetns() (uint32, error) {
	return nsInode("/proc/self/ns/net")
}
