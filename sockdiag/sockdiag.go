// Package sockdiag looks up one TCP connection, timewait mini-sockets
// included, through NETLINK_SOCK_DIAG in the network namespace it lives in:
// what `ss -tan state time-wait -o` reads, asked for a single socket.
package sockdiag

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/events"
)

const sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY

// noCookie is INET_DIAG_NOCOOKIE.
const noCookie = ^uint32(0)

// Socket is what sock_diag says of a connection.
type Socket struct {
	State events.State // for a mini-socket, its substate: FIN_WAIT2 or TIME_WAIT
	// Expires is the time left on the socket's timer; for a mini-socket,
	// until it goes away.
	Expires time.Duration
}

// Prober keeps one sock_diag connection per network namespace in use,
// for lookups and dumps.
type Prober struct {
	self  uint32
	conns map[uint32]*netlink.Conn
	// a dump's buffer, reused, and its sequence number
	buf []byte
	seq uint32
}

// NewProber prepares lookups; connections open on first use.
func NewProber() *Prober {
	p := &Prober{conns: make(map[uint32]*netlink.Conn)}
	if ino, err := nsInode("/proc/self/ns/net"); err == nil {
		p.self = ino
	}
	return p
}

// ErrNoNamespace means the namespace could not be entered: every process
// in it is gone and nothing names it.
var ErrNoNamespace = errors.New("network namespace not found")

// Lookup asks for the socket with e's addresses and cookie in e's network
// namespace. pid, if not 0, is a process likely to be in that namespace.
// found is false when no socket with that identity exists any more.
func (p *Prober) Lookup(e *events.Event, pid uint32) (s Socket, found bool, err error) {
	c, err := p.conn(e.Netns, pid)
	if err != nil {
		return s, false, err
	}
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: sockDiagByFamily, Flags: netlink.Request},
		Data:   request(e),
	})
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESTALE) {
		return s, false, nil
	}
	if err != nil {
		return s, false, fmt.Errorf("sock_diag lookup in netns %d: %w", e.Netns, err)
	}
	for _, m := range msgs {
		if m.Header.Type != sockDiagByFamily || len(m.Data) < 56 {
			continue
		}
		s.State = events.State(m.Data[1])
		s.Expires = time.Duration(binary.NativeEndian.Uint32(m.Data[52:])) * time.Millisecond
		return s, true, nil
	}
	return s, false, nil
}

// request encodes struct inet_diag_req_v2 for one exact socket.
func request(e *events.Event) []byte {
	b := make([]byte, 56)
	putRequest(b, e)
	return b
}

// putRequest encodes the request for e's socket into b[:56].
func putRequest(b []byte, e *events.Event) {
	if e.Family == 6 {
		b[0] = unix.AF_INET6
	} else {
		b[0] = unix.AF_INET
	}
	b[1] = unix.IPPROTO_TCP
	binary.NativeEndian.PutUint32(b[4:], ^uint32(0)) // every state
	id := b[8:]
	binary.BigEndian.PutUint16(id[0:], e.LPort)
	binary.BigEndian.PutUint16(id[2:], e.RPort)
	if e.Family == 6 {
		l, r := e.LAddr.As16(), e.RAddr.As16()
		copy(id[4:], l[:])
		copy(id[20:], r[:])
	} else {
		l, r := e.LAddr.As4(), e.RAddr.As4()
		copy(id[4:], l[:])
		copy(id[20:], r[:])
	}
	// the cookie makes the kernel answer ESTALE for a newer connection
	// that took the same addresses; a record that names its socket by
	// address (events.ByAddress) has none to give
	binary.NativeEndian.PutUint32(id[40:], uint32(e.Sock))
	binary.NativeEndian.PutUint32(id[44:], uint32(e.Sock>>32))
	if e.Sock == 0 || events.ByAddress(e.Sock) {
		binary.NativeEndian.PutUint32(id[40:], noCookie)
		binary.NativeEndian.PutUint32(id[44:], noCookie)
	}
}

func (p *Prober) conn(netns, pid uint32) (*netlink.Conn, error) {
	if c, ok := p.conns[netns]; ok {
		return c, nil
	}
	cfg := &netlink.Config{}
	if netns != p.self {
		f, err := openNetns(netns, pid)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		cfg.NetNS = int(f.Fd())
	}
	c, err := netlink.Dial(unix.NETLINK_SOCK_DIAG, cfg)
	if err != nil {
		return nil, fmt.Errorf("open sock_diag in netns %d: %w", netns, err)
	}
	p.conns[netns] = c
	return c, nil
}

// Release closes the connection into a namespace no longer followed: an
// open socket would keep the namespace alive.
func (p *Prober) Release(netns uint32) {
	if c, ok := p.conns[netns]; ok {
		c.Close()
		delete(p.conns, netns)
	}
}

// Close releases every connection.
func (p *Prober) Close() {
	for ns := range p.conns {
		p.Release(ns)
	}
}

// openNetns finds a handle on the namespace with this inode: through the
// hinted process, the names `ip netns` keeps, or any process in it.
func openNetns(netns, pid uint32) (*os.File, error) {
	var candidates []string
	if pid != 0 {
		candidates = append(candidates, "/proc/"+strconv.FormatUint(uint64(pid), 10)+"/ns/net")
	}
	named, _ := filepath.Glob("/run/netns/*")
	candidates = append(candidates, named...)
	for _, path := range candidates {
		if f := openIfInode(path, netns); f != nil {
			return f, nil
		}
	}
	procs, _ := os.ReadDir("/proc")
	for _, d := range procs {
		if d.Name()[0] < '0' || d.Name()[0] > '9' {
			continue
		}
		if f := openIfInode("/proc/"+d.Name()+"/ns/net", netns); f != nil {
			return f, nil
		}
	}
	return nil, fmt.Errorf("netns %d: %w", netns, ErrNoNamespace)
}

func openIfInode(path string, ino uint32) *os.File {
	if got, err := nsInode(path); err != nil || got != ino {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	// check again: the process may have moved between stat and open
	var st unix.Stat_t
	if unix.Fstat(int(f.Fd()), &st) != nil || uint32(st.Ino) != ino {
		f.Close()
		return nil
	}
	return f
}

func nsInode(path string) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return uint32(st.Ino), nil
}

// NetnsInode resolves a namespace given as an inode number or a path such
// as /var/run/netns/NAME or /proc/PID/ns/net.
func NetnsInode(arg string) (uint32, error) {
	if n, err := strconv.ParseUint(arg, 10, 32); err == nil {
		if !netnsExists(uint32(n)) {
			return 0, fmt.Errorf("network namespace %d: no process and no /run/netns entry is in it (ls -iL /proc/*/ns/net /run/netns lists the inodes; or give its path)", n)
		}
		return uint32(n), nil
	}
	if !strings.Contains(arg, "/") {
		// a name, as ip netns gives it
		named := filepath.Join(netnsDir, arg)
		if _, err := os.Stat(named); err != nil {
			return 0, fmt.Errorf("network namespace %q: no %s (ip netns list shows the names; or give a path such as /proc/PID/ns/net, or an inode)", arg, named)
		}
		arg = named
	}
	var st unix.Stat_t
	if err := unix.Stat(arg, &st); err != nil {
		return 0, fmt.Errorf("network namespace %q: %w", arg, err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(arg, &fs); err != nil || (fs.Type != unix.NSFS_MAGIC && fs.Type != unix.PROC_SUPER_MAGIC) {
		return 0, fmt.Errorf("network namespace %q: not a namespace file (want a name from ip netns list, /run/netns/NAME or /proc/PID/ns/net)", arg)
	}
	return uint32(st.Ino), nil
}

// netnsDir is where ip netns keeps its namespaces' names.
const netnsDir = "/run/netns"

// netnsExists says whether a process or a name of ip netns is in the
// network namespace with inode ino: a namespace nothing holds is gone.
func netnsExists(ino uint32) bool {
	var st unix.Stat_t
	for _, dir := range []string{netnsDir} {
		names, _ := os.ReadDir(dir)
		for _, n := range names {
			if unix.Stat(filepath.Join(dir, n.Name()), &st) == nil && uint32(st.Ino) == ino {
				return true
			}
		}
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		if p.Name()[0] < '0' || p.Name()[0] > '9' {
			continue
		}
		if unix.Stat("/proc/"+p.Name()+"/ns/net", &st) == nil && uint32(st.Ino) == ino {
			return true
		}
	}
	return false
}

// Namespace is a network namespace in use, with a process in it (0 for
// one only ip netns names) to enter it by.
type Namespace struct {
	Inode, PID uint32
}

// Namespaces lists the network namespaces that processes are in or that
// ip netns names, each once: the namespaces a host-wide count dumps.
func Namespaces() ([]Namespace, error) {
	seen := map[uint32]bool{}
	var out []Namespace
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	for _, p := range procs {
		if p.Name()[0] < '0' || p.Name()[0] > '9' {
			continue
		}
		ino, err := nsInode("/proc/" + p.Name() + "/ns/net")
		if err != nil || seen[ino] {
			continue
		}
		pid, _ := strconv.ParseUint(p.Name(), 10, 32)
		seen[ino] = true
		out = append(out, Namespace{Inode: ino, PID: uint32(pid)})
	}
	names, _ := os.ReadDir(netnsDir)
	for _, n := range names {
		if ino, err := nsInode(filepath.Join(netnsDir, n.Name())); err == nil && !seen[ino] {
			seen[ino] = true
			out = append(out, Namespace{Inode: ino})
		}
	}
	return out, nil
}
