package sockdiag

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/events"
)

// Dumper lists a namespace's timewait mini-sockets in one netlink dump per
// address family: what `ss -tan state time-wait` reads. Following many
// TIME_WAIT connections to their end this way costs one dump per tick,
// instead of a lookup per connection, again and again while the kernel's
// timer wheel is late. It reads into one reused buffer and parses in
// place: a dump of 40,000 sockets is about 3.5 MB.
type Dumper struct {
	self uint32
	fds  map[uint32]int // a NETLINK_SOCK_DIAG socket per namespace
	buf  []byte
	seq  uint32
}

// NewDumper prepares dumps; sockets open on first use.
func NewDumper() *Dumper {
	d := &Dumper{fds: make(map[uint32]int), buf: make([]byte, 256<<10)}
	if ino, err := nsInode("/proc/self/ns/net"); err == nil {
		d.self = ino
	}
	return d
}

// MiniSocket is one timewait mini-socket in a dump.
type MiniSocket struct {
	Cookie uint64
	Socket
}

// states asked for: a mini-socket is in TIME_WAIT, or waits in FIN_WAIT2
const miniStates = 1<<6 | 1<<5 // TCPF_TIME_WAIT | TCPF_FIN_WAIT2

// MiniSockets calls fn for every timewait mini-socket of family (4 or 6)
// in netns; pid, if not 0, is a process likely to be in that namespace.
func (d *Dumper) MiniSockets(netns, pid uint32, family uint8, fn func(MiniSocket)) error {
	fd, err := d.socket(netns, pid)
	if err != nil {
		return err
	}
	d.seq++
	req := make([]byte, unix.NLMSG_HDRLEN+56)
	le := binary.NativeEndian
	le.PutUint32(req[0:], uint32(len(req)))
	le.PutUint16(req[4:], sockDiagByFamily)
	le.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	le.PutUint32(req[8:], d.seq)
	r := req[unix.NLMSG_HDRLEN:]
	r[0] = unix.AF_INET
	if family == 6 {
		r[0] = unix.AF_INET6
	}
	r[1] = unix.IPPROTO_TCP
	le.PutUint32(r[4:], miniStates)
	// no cookie: every socket
	le.PutUint32(r[48:], noCookie)
	le.PutUint32(r[52:], noCookie)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("sock_diag dump in netns %d: %w", netns, err)
	}
	for {
		n, _, err := unix.Recvfrom(fd, d.buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("sock_diag dump in netns %d: %w", netns, err)
		}
		done, err := d.parse(d.buf[:n], fn)
		if err != nil {
			return fmt.Errorf("sock_diag dump in netns %d: %w", netns, err)
		}
		if done {
			return nil
		}
	}
}

// parse reads the messages in b; done at NLMSG_DONE.
func (d *Dumper) parse(b []byte, fn func(MiniSocket)) (done bool, err error) {
	le := binary.NativeEndian
	for len(b) >= unix.NLMSG_HDRLEN {
		size := int(le.Uint32(b[0:]))
		typ := le.Uint16(b[4:])
		if size < unix.NLMSG_HDRLEN || size > len(b) {
			return false, errors.New("truncated netlink message")
		}
		seq := le.Uint32(b[8:])
		data := b[unix.NLMSG_HDRLEN:size]
		b = b[min(nlmAlign(size), len(b)):]
		if seq != d.seq {
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
			fn(MiniSocket{
				Cookie: uint64(le.Uint32(data[44:])) | uint64(le.Uint32(data[48:]))<<32,
				Socket: Socket{
					State:   events.State(data[1]),
					Expires: time.Duration(le.Uint32(data[52:])) * time.Millisecond,
				},
			})
		}
	}
	return false, nil
}

func nlmAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// socket returns the namespace's netlink socket, made inside it: a socket
// stays in the namespace it was made in.
func (d *Dumper) socket(netns, pid uint32) (int, error) {
	if fd, ok := d.fds[netns]; ok {
		return fd, nil
	}
	var fd int
	var err error
	if netns == d.self {
		fd, err = diagSocket()
	} else {
		fd, err = diagSocketIn(netns, pid)
	}
	if err != nil {
		return -1, fmt.Errorf("open sock_diag in netns %d: %w", netns, err)
	}
	// a dump never waits long; a stuck one must not stop the stream
	tv := unix.NsecToTimeval(int64(2 * time.Second))
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	d.fds[netns] = fd
	return fd, nil
}

func diagSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// diagSocketIn makes the socket on a thread moved into the namespace, then
// moves the thread back.
func diagSocketIn(netns, pid uint32) (int, error) {
	target, err := openNetns(netns, pid)
	if err != nil {
		return -1, err
	}
	defer target.Close()
	runtime.LockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return -1, err
	}
	defer self.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return -1, err
	}
	fd, err := diagSocket()
	if rerr := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); rerr != nil {
		// the thread is in the wrong namespace: it stays locked, so
		// that it ends with this goroutine rather than run others
		if err == nil {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("return to own netns: %w", rerr)
	}
	runtime.UnlockOSThread()
	return fd, err
}

// Release closes the socket of a namespace no longer followed: an open
// socket would keep the namespace alive.
func (d *Dumper) Release(netns uint32) {
	if fd, ok := d.fds[netns]; ok {
		unix.Close(fd)
		delete(d.fds, netns)
	}
}

// Close releases every socket.
func (d *Dumper) Close() {
	for ns := range d.fds {
		d.Release(ns)
	}
}
