package kerneltest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Roles for the owner tests: servers whose sockets pass between
// processes, as real servers' do. Each is the test binary again, started
// through a symlink named for the role, so each process has its own comm;
// a role that starts another starts it the same way, from the same
// directory, handing it sockets as extra files (fd 3 on).
const (
	daemonComm   = "tt-daemon"   // listens, starts a worker with the listener, exits
	masterComm   = "tt-master"   // listens, starts TT_WORKERS workers, waits for them
	superComm    = "tt-super"    // listens, starts a worker, closes its own copy
	workerComm   = "tt-worker"   // serves connections from the listener at fd 3, or its own
	acceptorComm = "tt-acceptor" // accepts one connection and hands it to a handler
	handlerComm  = "tt-handler"  // serves the connection handed to it
	stormComm    = "tt-storm"    // connects to its own listener when told, for the storms
)

var ownerRoles = []string{daemonComm, masterComm, superComm, workerComm, acceptorComm, handlerComm, stormComm}

// runOwnerRole runs the role this process was started as, if it is one.
func runOwnerRole(role string) (int, bool) {
	switch role {
	case daemonComm:
		return runDaemon(), true
	case masterComm:
		return runMaster(), true
	case superComm:
		return runSuper(), true
	case workerComm:
		return runWorker(), true
	case acceptorComm:
		return runAcceptor(), true
	case handlerComm:
		return runHandler(), true
	case stormComm:
		return runStorm(), true
	}
	return 0, false
}

// listenPlain listens on TT_ADDR without MPTCP, which Go would use by
// default: the plain TCP socket C servers such as nginx make.
func listenPlain() (*net.TCPListener, error) {
	var lc net.ListenConfig
	if env("MPTCP") != "1" {
		lc.SetMultipathTCP(false)
	}
	if env("LEAK") == "1" {
		// no keepalive, as a C server's: Go's probes every 15 s, and
		// each answer from the peer restarts the last ACK tcp_info
		// keeps, from which an old leak's age is bounded
		lc.KeepAlive = -1
	}
	l, err := lc.Listen(context.Background(), "tcp", env("ADDR"))
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	return l.(*net.TCPListener), nil
}

// spawn starts role with files as fd 3 on; the child shares this
// process's stdout, so what it prints reaches the test.
func spawn(role string, extraEnv []string, files ...*os.File) (*exec.Cmd, error) {
	cmd := exec.Command(filepath.Join(filepath.Dir(os.Args[0]), role))
	cmd.Env = append(os.Environ(), extraEnv...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = files
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", role, err)
	}
	fmt.Printf("%s %d\n", role, cmd.Process.Pid)
	return cmd, nil
}

func listenerFile(l *net.TCPListener) (*os.File, error) {
	f, err := l.File() // a dup: the listener stays open here
	if err != nil {
		return nil, fmt.Errorf("listener file: %w", err)
	}
	return f, nil
}

// listenToHand listens on TT_ADDR once told to go, and returns the
// listener and a file of it to hand to another process.
func listenToHand() (*net.TCPListener, *os.File, error) {
	waitGo()
	l, err := listenPlain()
	if err != nil {
		return nil, nil, err
	}
	f, err := listenerFile(l)
	if err != nil {
		return nil, nil, err
	}
	return l, f, nil
}

// runDaemon is a daemonizing server's first process: it makes the
// listener, starts the process that serves it and exits, as nginx does.
func runDaemon() int {
	_, f, err := listenToHand()
	if err != nil {
		return fail("%v", err)
	}
	if _, err := spawn(workerComm, nil, f); err != nil {
		return fail("%v", err)
	}
	fmt.Println("listening")
	return 0
}

// runMaster is a prefork server's master: it listens, starts TT_WORKERS
// workers that accept, and waits for them, holding the listener.
func runMaster() int {
	l, f, err := listenToHand()
	if err != nil {
		return fail("%v", err)
	}
	n, _ := strconv.Atoi(env("WORKERS"))
	var workers []*exec.Cmd
	for range n {
		w, err := spawn(workerComm, nil, f)
		if err != nil {
			return fail("%v", err)
		}
		workers = append(workers, w)
	}
	fmt.Println("listening")
	for _, w := range workers {
		if err := w.Wait(); err != nil {
			return fail("worker: %v", err)
		}
	}
	if err := l.Close(); err != nil {
		return fail("close listener: %v", err)
	}
	fmt.Println("done")
	return 0
}

// runSuper is a supervisor doing socket activation: it makes the
// listener, starts the service with it, closes its own copy at once and
// waits for the service.
func runSuper() int {
	l, f, err := listenToHand()
	if err != nil {
		return fail("%v", err)
	}
	w, err := spawn(workerComm, nil, f)
	if err != nil {
		return fail("%v", err)
	}
	l.Close()
	f.Close()
	fmt.Println("listening")
	if err := w.Wait(); err != nil {
		return fail("service: %v", err)
	}
	fmt.Println("done")
	return 0
}

// runWorker serves TT_CONNS connections (default 1), at once each,
// from the listener at fd 3, or from its own with TT_OWN=1 (then it
// waits for go first), then closes the listener and says "done". With
// TT_LEAK=1 it never reads nor closes them, says "held" and waits a
// minute: connections whose clients close stay in CLOSE_WAIT.
func runWorker() int {
	var l net.Listener
	var err error
	if env("OWN") == "1" {
		waitGo()
		l, err = listenPlain()
		fmt.Println("listening")
	} else {
		l, err = net.FileListener(os.NewFile(3, "listener"))
	}
	if err != nil {
		return fail("worker listener: %v", err)
	}
	n, _ := strconv.Atoi(env("CONNS"))
	var served sync.WaitGroup
	errs := make(chan error, max(n, 1))
	for range max(n, 1) {
		c, err := l.Accept()
		if err != nil {
			return fail("accept: %v", err)
		}
		fmt.Printf("conn %d %d\n", c.RemoteAddr().(*net.TCPAddr).Port, os.Getpid())
		if env("LEAK") == "1" {
			// a leak: never read, never close; held until killed
			defer c.Close()
			continue
		}
		served.Add(1)
		go func() {
			defer served.Done()
			errs <- serve(c)
		}()
	}
	if env("LEAK") == "1" {
		fmt.Println("held")
		time.Sleep(time.Minute)
		return 0
	}
	served.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return fail("%v", err)
		}
	}
	if err := l.Close(); err != nil {
		return fail("close listener: %v", err)
	}
	fmt.Println("done")
	return 0
}

// serve answers one request: it reads "x", writes "ok", reads to the
// client's EOF, holds the connection in CLOSE_WAIT for TT_PAUSE_MS and
// closes it.
func serve(c net.Conn) error {
	buf := make([]byte, 8)
	if _, err := io.ReadFull(c, buf[:1]); err != nil {
		return fmt.Errorf("read request: %w", err)
	}
	if _, err := c.Write([]byte("ok")); err != nil {
		return fmt.Errorf("write answer: %w", err)
	}
	if _, err := c.Read(buf); err != io.EOF {
		return fmt.Errorf("read: want EOF, got %v", err)
	}
	pauseFor()
	return c.Close()
}

func pauseFor() { time.Sleep(pause()) }

// runAcceptor accepts one connection and hands it to a handler: by
// starting it with the connection (TT_MODE=fork: fork after accept), or
// through a unix socket with SCM_RIGHTS to a handler started before
// (TT_MODE=scm). Either way it closes its own copy at once, then waits
// for the handler and closes the listener.
func runAcceptor() int {
	waitGo()
	l, err := listenPlain()
	if err != nil {
		return fail("%v", err)
	}
	var handler *exec.Cmd
	var unixSock *os.File
	if env("MODE") == "scm" {
		pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fail("socketpair: %v", err)
		}
		unixSock = os.NewFile(uintptr(pair[0]), "to-handler")
		theirs := os.NewFile(uintptr(pair[1]), "from-acceptor")
		if handler, err = spawn(handlerComm, nil, theirs); err != nil {
			return fail("%v", err)
		}
		theirs.Close()
	}
	fmt.Println("listening")
	c, err := l.AcceptTCP()
	if err != nil {
		return fail("accept: %v", err)
	}
	f, err := c.File()
	if err != nil {
		return fail("conn file: %v", err)
	}
	if env("MODE") == "scm" {
		if err := unix.Sendmsg(int(unixSock.Fd()), []byte{1}, unix.UnixRights(int(f.Fd())), nil, 0); err != nil {
			return fail("send the connection: %v", err)
		}
	} else if handler, err = spawn(handlerComm, nil, f); err != nil {
		return fail("%v", err)
	}
	f.Close()
	c.Close()
	if err := handler.Wait(); err != nil {
		return fail("handler: %v", err)
	}
	if err := l.Close(); err != nil {
		return fail("close listener: %v", err)
	}
	fmt.Println("done")
	return 0
}

// runHandler serves the connection at fd 3 (TT_MODE=fork), or the one
// received on the unix socket at fd 3 (TT_MODE=scm).
func runHandler() int {
	fd := 3
	if env("MODE") == "scm" {
		buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4))
		_, oobn, _, _, err := unix.Recvmsg(3, buf, oob, 0)
		if err != nil {
			return fail("receive the connection: %v", err)
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(msgs) != 1 {
			return fail("control message: %v", err)
		}
		fds, err := unix.ParseUnixRights(&msgs[0])
		if err != nil || len(fds) != 1 {
			return fail("unix rights: %v", err)
		}
		fd = fds[0]
	}
	f := os.NewFile(uintptr(fd), "conn")
	c, err := net.FileConn(f)
	if err != nil {
		return fail("handler conn: %v", err)
	}
	// FileConn took a dup: this process holds one file for it
	f.Close()
	if err := serve(c); err != nil {
		return fail("%v", err)
	}
	fmt.Println("served")
	return 0
}

// runStorm listens on TT_ADDR and, for each line "go N" on stdin, makes N
// connections to it, one after another, closed first by the client (the
// server reads to EOF), or with TT_MODE=server-first by the server (at
// accept; the client reads to EOF); once every server side is closed it
// says "done N". It ends at EOF on stdin. A process of its own, that
// forks nothing: the storms' sockets are never a forked child's too.
func runStorm() int {
	l, err := listenPlain()
	if err != nil {
		return fail("%v", err)
	}
	serverFirst := env("MODE") == "server-first"
	accepted := make(chan error, 1024)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				if !serverFirst {
					_, err = io.Copy(io.Discard, c)
				}
				if cerr := c.Close(); err == nil {
					err = cerr
				}
				accepted <- err
			}()
		}
	}()
	fmt.Println("listening")
	d := net.Dialer{Timeout: 5 * time.Second}
	d.SetMultipathTCP(false)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		n, err := strconv.Atoi(strings.TrimPrefix(in.Text(), "go "))
		if err != nil {
			return fail("bad line %q", in.Text())
		}
		for i := range n {
			c, err := d.Dial("tcp4", env("ADDR"))
			if err != nil {
				return fail("connection %d: %v", i+1, err)
			}
			if serverFirst {
				_, err = io.Copy(io.Discard, c)
			}
			if cerr := c.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fail("connection %d: %v", i+1, err)
			}
			if err := <-accepted; err != nil {
				return fail("server side %d: %v", i+1, err)
			}
		}
		fmt.Printf("done %d\n", n)
	}
	return 0
}
