package sockdiag

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/events"
)

// MiniSocket is one timewait mini-socket in a dump.
type MiniSocket struct {
	Cookie uint64
	// the connection, from our side; addresses as 16 bytes, IPv4 mapped
	// into IPv6
	LPort, RPort uint16
	LAddr, RAddr [16]byte
	Socket
}

// states asked for: a mini-socket is in TIME_WAIT, or waits in FIN_WAIT2
const miniStates = 1<<6 | 1<<5 // TCPF_TIME_WAIT | TCPF_FIN_WAIT2

// dumpTimeout bounds a dump: one never waits long, and a stuck one must
// not stop the stream.
const dumpTimeout = 2 * time.Second

// MiniSockets calls fn for every timewait mini-socket of family (4 or 6)
// in netns, with one dump: what `ss -tan state time-wait` reads. pid, if
// not 0, is a process likely to be in that namespace. Following many
// TIME_WAIT connections to their end this way costs one dump per tick,
// instead of a lookup per connection, again and again while the kernel's
// timer wheel is late. It goes through the namespace's lookup connection
// but reads into one reused buffer and parses in place: a dump of 40,000
// sockets is about 3.5 MB, which netlink.Conn would hand over as as many
// messages, each allocated.
func (p *Prober) MiniSockets(netns, pid uint32, family uint8, fn func(MiniSocket)) error {
	return p.dump(netns, pid, family, miniStates, 0, func(data []byte) { fn(miniSocket(data)) })
}

// miniSocket reads a struct inet_diag_msg: cookie, connection, state,
// timer.
func miniSocket(data []byte) MiniSocket {
	le := binary.NativeEndian
	l, r := [16]byte(data[8:24]), [16]byte(data[24:40])
	if data[0] == unix.AF_INET {
		l = netip.AddrFrom4([4]byte(data[8:12])).As16()
		r = netip.AddrFrom4([4]byte(data[24:28])).As16()
	}
	return MiniSocket{
		Cookie: uint64(le.Uint32(data[44:])) | uint64(le.Uint32(data[48:]))<<32,
		LPort:  binary.BigEndian.Uint16(data[4:]),
		RPort:  binary.BigEndian.Uint16(data[6:]),
		LAddr:  l,
		RAddr:  r,
		Socket: Socket{
			State:   events.State(data[1]),
			Expires: time.Duration(le.Uint32(data[52:])) * time.Millisecond,
		},
	}
}

// dump calls fn with each struct inet_diag_msg (at least 56 bytes) of a
// dump of family's TCP sockets in states, in netns, followed by the
// attributes ext asks for (a mask of 1<<(INET_DIAG_*-1)).
func (p *Prober) dump(netns, pid uint32, family uint8, states uint32, ext uint8, fn func(msg []byte)) error {
	s, err := p.session(netns, pid)
	if err != nil {
		return fmt.Errorf("sock_diag dump in netns %d: %w", netns, err)
	}
	defer s.end()
	p.seq++
	req := make([]byte, unix.NLMSG_HDRLEN+56)
	le := binary.NativeEndian
	le.PutUint32(req[0:], uint32(len(req)))
	le.PutUint16(req[4:], sockDiagByFamily)
	le.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	le.PutUint32(req[8:], p.seq)
	r := req[unix.NLMSG_HDRLEN:]
	r[0] = unix.AF_INET
	if family == 6 {
		r[0] = unix.AF_INET6
	}
	r[1] = unix.IPPROTO_TCP
	r[2] = ext
	le.PutUint32(r[4:], states)
	// no cookie: every socket
	le.PutUint32(r[48:], noCookie)
	le.PutUint32(r[52:], noCookie)
	if err := s.send(req); err != nil {
		return fmt.Errorf("sock_diag dump in netns %d: %w", netns, err)
	}
	for {
		b, err := s.recv()
		if err != nil {
			return fmt.Errorf("sock_diag dump in netns %d: %w", netns, err)
		}
		done, err := parseDump(b, p.seq, fn)
		if err != nil {
			return fmt.Errorf("sock_diag dump in netns %d: %w", netns, err)
		}
		if done {
			return nil
		}
	}
}

// parseDump reads the messages in b, answers to dump seq; done at
// NLMSG_DONE.
func parseDump(b []byte, seq uint32, fn func(msg []byte)) (done bool, err error) {
	le := binary.NativeEndian
	for len(b) >= unix.NLMSG_HDRLEN {
		size := int(le.Uint32(b[0:]))
		typ := le.Uint16(b[4:])
		if size < unix.NLMSG_HDRLEN || size > len(b) {
			return false, errors.New("truncated netlink message")
		}
		got := le.Uint32(b[8:])
		data := b[unix.NLMSG_HDRLEN:size]
		b = b[min(nlmAlign(size), len(b)):]
		if got != seq {
			continue // an answer to an earlier dump, cut short
		}
		switch typ {
		case unix.NLMSG_DONE:
			return true, nil
		case unix.NLMSG_ERROR:
			if len(data) >= 4 {
				if errno := int32(le.Uint32(data)); errno != 0 {
					return false, unix.Errno(-errno)
				}
			}
			return true, nil
		case sockDiagByFamily:
			if len(data) < 56 {
				continue
			}
			fn(data)
		}
	}
	return false, nil
}

func nlmAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// Listed is one socket of a full dump: its state and ports.
type Listed struct {
	State        events.State
	LPort, RPort uint16
}

// allStates asks a dump for every TCP state.
const allStates = ^uint32(0)

// Sockets calls fn for every TCP socket of family (4 or 6) in netns,
// timewait and request sockets included, with one dump: what
// `ss -tan` lists. pid, if not 0, is a process likely to be in that
// namespace.
func (p *Prober) Sockets(netns, pid uint32, family uint8, fn func(Listed)) error {
	return p.dump(netns, pid, family, allStates, 0, func(data []byte) {
		fn(Listed{State: events.State(data[1]), LPort: binary.BigEndian.Uint16(data[4:]), RPort: binary.BigEndian.Uint16(data[6:])})
	})
}
