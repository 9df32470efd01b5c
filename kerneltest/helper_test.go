package kerneltest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The test binary doubles as the client and server processes: started
// through a symlink named for the role, so the kernel gives each its own
// comm. They wait for "go" on stdin, so a tracer can be loaded knowing
// their pids before they open a socket.
func TestMain(m *testing.M) {
	role := filepath.Base(os.Args[0])
	if code, ok := runOwnerRole(role); ok {
		os.Exit(code)
	}
	switch role {
	case serverComm:
		os.Exit(runServer())
	case clientComm:
		os.Exit(runClient())
	}
	code := m.Run()
	unmountCgroups()
	removeBinary()
	os.Exit(code)
}

// patience bounds how long a test waits for a process it started to say
// or do what it should: a liveness bound, not a measure (under emulation,
// make test-kernels, a storm of 2,000 connections takes over 10 s).
const patience = 60 * time.Second

const (
	serverComm = "tt-server"
	clientComm = "tt-client"
)

func env(name string) string { return os.Getenv("TT_" + name) }

func pause() time.Duration {
	ms, _ := strconv.Atoi(env("PAUSE_MS"))
	return time.Duration(ms) * time.Millisecond
}

func waitGo() {
	line, _ := bufio.NewReader(os.Stdin).ReadString('\n')
	if strings.TrimSpace(line) != "go" {
		os.Exit(3)
	}
}

func fail(format string, a ...any) int {
	fmt.Fprintf(os.Stderr, format+"\n", a...)
	return 1
}

// runServer listens on TT_ADDR, serves one connection as TT_MODE says,
// then closes the listener:
//   - wait-eof: read to EOF, pause, close (the client closed first)
//   - hold: read to EOF, then keep the socket in CLOSE_WAIT for the pause
//     and exit without closing it first
//   - close-first: pause, close without reading (the server closes first)
//   - write-after-eof: read until the client's EOF, pause, write (the
//     client's orphan answers with a reset), close
//   - expect-rst: read until the peer's reset
func runServer() int {
	waitGo()
	if env("MODE") == "reuseport" {
		return runReuseport()
	}
	l, err := net.Listen("tcp", env("ADDR"))
	if err != nil {
		return fail("listen: %v", err)
	}
	fmt.Println("listening")
	c, err := l.Accept()
	if err != nil {
		return fail("accept: %v", err)
	}
	buf := make([]byte, 64)
	switch env("MODE") {
	case "wait-eof", "hold":
		if _, err := c.Read(buf); err != io.EOF {
			return fail("read: want EOF, got %v", err)
		}
		time.Sleep(pause())
		if env("MODE") == "hold" {
			fmt.Println("done")
			return 0
		}
	case "close-first":
		time.Sleep(pause())
	case "write-after-eof":
		// the client has closed: its socket is an orphan parked in
		// FIN_WAIT2, which answers data with a reset
		if _, err := c.Read(buf); err != io.EOF {
			return fail("read: want EOF, got %v", err)
		}
		time.Sleep(pause())
		if _, err := c.Write([]byte("late")); err != nil {
			return fail("write: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	case "expect-rst":
		if _, err := c.Read(buf); !errors.Is(err, syscall.ECONNRESET) {
			return fail("read: want ECONNRESET, got %v", err)
		}
	default:
		return fail("unknown mode %q", env("MODE"))
	}
	if err := c.Close(); err != nil {
		return fail("close: %v", err)
	}
	return closeListener(l)
}

// closeListener closes l once its connections have finished, so that the
// order of the server's transitions is fixed, and says "done".
func closeListener(l net.Listener) int {
	time.Sleep(50 * time.Millisecond)
	if err := l.Close(); err != nil {
		return fail("close listener: %v", err)
	}
	fmt.Println("done")
	return 0
}

// runReuseport listens on TT_ADDR with SO_REUSEPORT, so that another
// process can listen on the same port, and serves every connection the
// kernel gives it: it prints "peer <client port>", reads to EOF and closes.
// A second "go" says every client is done: it takes what is still queued,
// then closes the listener.
func runReuseport() int {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		})
		return errors.Join(err, serr)
	}}
	l, err := lc.Listen(context.Background(), "tcp", env("ADDR"))
	if err != nil {
		return fail("listen: %v", err)
	}
	fmt.Println("listening")
	// after "go", accept only what is queued already: a connection can be
	// complete in the kernel before this process has accepted it
	go func() {
		waitGo()
		l.(*net.TCPListener).SetDeadline(time.Now().Add(100 * time.Millisecond))
	}()
	var served sync.WaitGroup
	for {
		c, err := l.Accept()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			return fail("accept: %v", err)
		}
		served.Add(1)
		fmt.Printf("peer %d\n", c.RemoteAddr().(*net.TCPAddr).Port)
		go func() {
			defer served.Done()
			c.Read(make([]byte, 64))
			c.Close()
		}()
	}
	served.Wait()
	return closeListener(l)
}

// runClient connects to TT_ADDR and, as TT_MODE says (then closes):
//   - request, request-hold: see below
//   - close-first: closes at once
//   - renamed: closes at once, from a thread renamed worker-thr-7
//   - wait-eof: reads to EOF, then closes (the server closed first)
//   - linger0: closes with SO_LINGER 0, an abortive close
//   - refused: expects the connection to be refused
func runClient() int {
	waitGo()
	if env("MODE") == "renamed" {
		return runRenamedClient()
	}
	c, err := net.Dial("tcp", env("ADDR"))
	if env("MODE") == "refused" {
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fail("dial: want ECONNREFUSED, got %v", err)
		}
		fmt.Println("done")
		return 0
	}
	if err != nil {
		return fail("dial: %v", err)
	}
	switch env("MODE") {
	case "close-first":
	case "wait-eof":
		if _, err := c.Read(make([]byte, 64)); err != io.EOF {
			return fail("read: want EOF, got %v", err)
		}
	case "linger0":
		if err := c.(*net.TCPConn).SetLinger(0); err != nil {
			return fail("linger: %v", err)
		}
	case "request", "request-hold":
		// a request and its answer; request-hold then waits for a
		// second "go" before it closes
		if _, err := c.Write([]byte("x")); err != nil {
			return fail("write: %v", err)
		}
		if _, err := io.ReadFull(c, make([]byte, 2)); err != nil {
			return fail("read answer: %v", err)
		}
		if env("MODE") == "request-hold" {
			fmt.Println("connected")
			waitGo()
		}
	default:
		return fail("unknown mode %q", env("MODE"))
	}
	if err := c.Close(); err != nil {
		return fail("close: %v", err)
	}
	fmt.Println("done")
	return 0
}

// runRenamedClient connects and closes from a thread other than the main
// one, renamed worker-thr-7 as thread pools name theirs: the socket is
// still the process's, shown by the process's name.
func runRenamedClient() int {
	// main runs on whichever thread the scheduler gave it, not
	// necessarily the main one: the goroutine that finds itself on the
	// main thread keeps it, locked, and works from another
	done := make(chan int)
	var work func()
	work = func() {
		runtime.LockOSThread()
		if unix.Gettid() == os.Getpid() {
			go work()
			select {} // hold the main thread until the process exits
		}
		done <- renamedConnect()
	}
	go work()
	if code := <-done; code != 0 {
		return code
	}
	fmt.Println("done")
	return 0
}

// renamedConnect renames the calling thread and connects and closes.
func renamedConnect() int {
	name := []byte("worker-thr-7\x00")
	if err := unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&name[0])), 0, 0, 0); err != nil {
		return fail("prctl: %v", err)
	}
	c, err := net.Dial("tcp", env("ADDR"))
	if err != nil {
		return fail("dial: %v", err)
	}
	if err := c.Close(); err != nil {
		return fail("close: %v", err)
	}
	return 0
}

var (
	linkOnce sync.Once
	linkDir  string
	linkErr  error
)

// roleBinary returns a symlink to the test binary named for the role.
func roleBinary(t *testing.T, role string) string {
	t.Helper()
	linkOnce.Do(func() {
		var exe string
		if exe, linkErr = os.Executable(); linkErr != nil {
			return
		}
		if linkDir, linkErr = os.MkdirTemp("", "tcptrace-roles"); linkErr != nil {
			return
		}
		for _, r := range append([]string{serverComm, clientComm}, ownerRoles...) {
			if linkErr = os.Symlink(exe, filepath.Join(linkDir, r)); linkErr != nil {
				return
			}
		}
	})
	if linkErr != nil {
		t.Fatalf("make role binaries: %v", linkErr)
	}
	return filepath.Join(linkDir, role)
}

// netns is a network namespace made for one test, with loopback up.
type netns struct {
	name string
	path string
	ino  uint32
}

var nsCounter struct {
	sync.Mutex
	n int
}

func newNetns(t *testing.T) *netns {
	t.Helper()
	nsCounter.Lock()
	nsCounter.n++
	name := fmt.Sprintf("tcptrace-test-%d-%d", os.Getpid(), nsCounter.n)
	nsCounter.Unlock()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %v: %s", err, out)
	}
	ns := &netns{name: name, path: "/run/netns/" + name}
	var st syscall.Stat_t
	if err := syscall.Stat(ns.path, &st); err != nil {
		t.Fatalf("stat %s: %v", ns.path, err)
	}
	ns.ino = uint32(st.Ino)
	return ns
}

// sysctl sets a per-namespace sysctl.
func (n *netns) sysctl(t *testing.T, key, value string) {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "exec", n.name, "sysctl", "-qw", key+"="+value).CombinedOutput(); err != nil {
		t.Fatalf("sysctl %s: %v: %s", key, err, out)
	}
}

// The cgroup v2 hierarchy, where each client and server process gets a
// cgroup of its own: mounted by the tests if nothing has mounted it.
var cgroups struct {
	once    sync.Once
	root    string
	mounted bool
	err     error
	n       int
	sync.Mutex
}

func cgroupRoot(t *testing.T) string {
	t.Helper()
	cgroups.once.Do(func() {
		mounts, err := os.ReadFile("/proc/self/mounts")
		if err != nil {
			cgroups.err = err
			return
		}
		for _, line := range strings.Split(string(mounts), "\n") {
			if f := strings.Fields(line); len(f) > 2 && f[2] == "cgroup2" {
				cgroups.root = f[1]
				return
			}
		}
		if cgroups.root, err = os.MkdirTemp("", "tcptrace-cgroup2"); err != nil {
			cgroups.err = err
			return
		}
		if err := unix.Mount("none", cgroups.root, "cgroup2", 0, ""); err != nil {
			cgroups.err = fmt.Errorf("mount cgroup2: %w", err)
			return
		}
		cgroups.mounted = true
	})
	if cgroups.err != nil {
		t.Fatalf("cgroup v2 hierarchy: %v", cgroups.err)
	}
	return cgroups.root
}

func unmountCgroups() {
	if cgroups.mounted {
		unix.Unmount(cgroups.root, unix.MNT_DETACH)
		os.Remove(cgroups.root)
	}
}

// newCgroup makes a cgroup and returns its directory, open, and its id:
// the directory's inode number. It is removed once its process has gone.
func newCgroup(t *testing.T) (*os.File, uint64) {
	t.Helper()
	return newCgroupAt(t, "")
}

// newCgroupAt is newCgroup at path under the cgroup root, with the
// cgroups above it it had to make ("": one named for the test).
func newCgroupAt(t *testing.T, path string) (*os.File, uint64) {
	t.Helper()
	root := cgroupRoot(t)
	if path == "" {
		cgroups.Lock()
		cgroups.n++
		path = fmt.Sprintf("tcptrace-test-%d-%d", os.Getpid(), cgroups.n)
		cgroups.Unlock()
	}
	// the directories made, innermost last, removed innermost first
	var made []string
	for dir := root; ; {
		rest, _, _ := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(filepath.Join(root, path), dir), "/"), "/")
		if rest == "" {
			break
		}
		dir = filepath.Join(dir, rest)
		if err := os.Mkdir(dir, 0o755); err == nil {
			made = append(made, dir)
		} else if !os.IsExist(err) {
			t.Fatalf("make cgroup: %v", err)
		}
	}
	dir := filepath.Join(root, path)
	t.Cleanup(func() {
		for i := len(made) - 1; i >= 0; i-- {
			// the process may take a moment to leave it
			for k := 0; k < 100 && os.Remove(made[i]) != nil; k++ {
				time.Sleep(10 * time.Millisecond)
			}
		}
	})
	f, err := os.Open(dir)
	if err != nil {
		t.Fatalf("open cgroup: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatalf("stat cgroup: %v", err)
	}
	return f, st.Ino
}

// proc is a client or server process in a namespace, in a cgroup of its
// own.
type proc struct {
	t      *testing.T
	role   string
	cmd    *exec.Cmd
	pid    uint32
	cgroup uint64
	stdin  io.WriteCloser
	lines  chan string
	errb   *strings.Builder
	done   chan error
	// lines await read past, for a later await
	backlog []string
}

// start runs a role in the namespace, in a cgroup of its own; it waits
// for go(). Extra environment, such as "TT_CONNS=2", goes in env.
func (n *netns) start(t *testing.T, role, mode, addr string, pause time.Duration, env ...string) *proc {
	t.Helper()
	return n.startIn(t, "", role, mode, addr, pause, env...)
}

// startIn is start in the cgroup at path under the cgroup root, made for
// it ("": one named for the test).
func (n *netns) startIn(t *testing.T, path, role, mode, addr string, pause time.Duration, env ...string) *proc {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", n.name, roleBinary(t, role))
	cmd.Env = append(os.Environ(), "TT_MODE="+mode, "TT_ADDR="+addr,
		"TT_PAUSE_MS="+strconv.Itoa(int(pause/time.Millisecond)))
	cmd.Env = append(cmd.Env, env...)
	p := &proc{t: t, role: role, cmd: cmd, lines: make(chan string, 8), errb: &strings.Builder{}, done: make(chan error, 1)}
	cg, id := newCgroupAt(t, path)
	p.cgroup = id
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	cmd.Stderr = p.errb
	var err error
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", role, err)
	}
	// ip netns exec execs the program in place: the pid is the role's
	p.pid = uint32(cmd.Process.Pid)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() { cmd.Process.Kill() })
	return p
}

func (p *proc) goAhead() {
	p.t.Helper()
	if _, err := io.WriteString(p.stdin, "go\n"); err != nil {
		p.t.Fatalf("%s: send go: %v", p.role, err)
	}
}

// expect waits for the process to print line.
func (p *proc) expect(line string) {
	p.t.Helper()
	select {
	case got, ok := <-p.lines:
		if !ok || got != line {
			p.t.Fatalf("%s: want %q, got %q (ok=%v), stderr: %s", p.role, line, got, ok, p.errb)
		}
	case <-time.After(patience):
		p.t.Fatalf("%s: no %q within %v, stderr: %s", p.role, line, patience, p.errb)
	}
}

// await reads lines until one starts with prefix and returns it; lines
// from the process and the processes it started may come in any order.
func (p *proc) await(prefix string) string {
	p.t.Helper()
	for i, l := range p.backlog {
		if strings.HasPrefix(l, prefix) {
			p.backlog = append(p.backlog[:i], p.backlog[i+1:]...)
			return l
		}
	}
	timeout := time.After(patience)
	for {
		select {
		case got, ok := <-p.lines:
			if !ok {
				p.t.Fatalf("%s: ended before a line starting %q, stderr: %s", p.role, prefix, p.errb)
			}
			if strings.HasPrefix(got, prefix) {
				return got
			}
			p.backlog = append(p.backlog, got)
		case <-timeout:
			p.t.Fatalf("%s: no line starting %q within %v, stderr: %s", p.role, prefix, patience, p.errb)
		}
	}
}

// wait waits for a clean exit.
func (p *proc) wait() {
	p.t.Helper()
	for range p.lines {
	}
	select {
	case err := <-p.done:
		if err != nil {
			p.t.Fatalf("%s: %v, stderr: %s", p.role, err, p.errb)
		}
	case <-time.After(patience):
		p.t.Fatalf("%s: did not exit within %v", p.role, patience)
	}
}

// inNetns runs f on a thread in the namespace, so that the sockets f
// makes live there, then moves the thread back.
func inNetns(t *testing.T, n *netns, f func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatalf("open own netns: %v", err)
	}
	defer self.Close()
	target, err := os.Open(n.path)
	if err != nil {
		t.Fatalf("open netns: %v", err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatalf("enter netns: %v", err)
	}
	defer func() {
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			// this thread must not run anything else: keep it locked
			// and let it end with the goroutine
			runtime.LockOSThread()
			t.Errorf("leave netns: %v", err)
		}
	}()
	f()
}

// connectN makes n plain-TCP (not MPTCP) connections in the namespace,
// one after another, from this process: client does the client side of
// each, server the server side (each in a goroutine of its own), and an
// error either returns fails the test. It returns the listener's port and
// the clients' ports, the listener closed.
func connectN(t *testing.T, n *netns, count int, client, server func(net.Conn) error) (lport uint16, clients []uint16) {
	t.Helper()
	inNetns(t, n, func() {
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(false) // plain TCP: one socket each side
		ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		lport = uint16(ln.Addr().(*net.TCPAddr).Port)
		served := make(chan error, count)
		go func() {
			for range count {
				c, err := ln.Accept()
				if err != nil {
					served <- err
					return
				}
				go func() {
					err := server(c)
					c.Close()
					served <- err
				}()
			}
		}()
		d := net.Dialer{}
		d.SetMultipathTCP(false)
		for range count {
			c, err := d.Dial("tcp4", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			clients = append(clients, uint16(c.LocalAddr().(*net.TCPAddr).Port))
			err = client(c)
			c.Close()
			if err != nil {
				t.Fatal(err)
			}
		}
		for range count {
			if err := <-served; err != nil {
				t.Fatal(err)
			}
		}
	})
	return lport, clients
}
