package sockdiag

import (
	"cmp"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// session is one exchange on a namespace's sock_diag connection, in raw
// netlink: netlink.Conn would hand a dump of 40,000 sockets over as as
// many messages, each allocated. It reads into the prober's reused
// buffer, and gives up after dumpTimeout.
type session struct {
	c   *netlink.Conn
	raw syscall.RawConn
	buf []byte
}

func (p *Prober) session(netns, pid uint32) (*session, error) {
	c, err := p.conn(netns, pid)
	if err != nil {
		return nil, err
	}
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	if err := c.SetReadDeadline(time.Now().Add(dumpTimeout)); err != nil {
		return nil, err
	}
	if p.buf == nil {
		p.buf = make([]byte, 256<<10)
	}
	return &session{c: c, raw: raw, buf: p.buf}, nil
}

// end clears the deadline for the connection's next user.
func (s *session) end() { s.c.SetReadDeadline(time.Time{}) }

// send writes b, netlink messages one after another, in one datagram.
func (s *session) send(b []byte) error {
	var serr error
	err := s.raw.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN
	})
	return cmp.Or(err, serr)
}

// recv reads one datagram of answers; valid until the next recv.
func (s *session) recv() ([]byte, error) {
	var n int
	var rerr error
	err := s.raw.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), s.buf, 0)
		return rerr != unix.EAGAIN && rerr != unix.EINTR
	})
	if err = cmp.Or(err, rerr); err != nil {
		return nil, err
	}
	return s.buf[:n], nil
}
