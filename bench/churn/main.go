// Command churn opens and closes loopback TCP connections as fast as it
// can, the load tcptrace's benchmark measures against. By default it uses
// blocking system calls on locked threads, not Go's poller, so its own
// overhead stays small next to the kernel's and it saturates the CPUs;
// with -loop it is an event-loop server and clients over Go's poller,
// bound by latency, the shape of most real servers.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

var modes = map[string]string{
	"client-close": "the client closes first: TIME_WAIT on the client",
	"server-close": "the server closes first: TIME_WAIT on the server",
	"rst":          "the client aborts with SO_LINGER 0: a RST, no TIME_WAIT",
	"refused":      "connect to a port nobody listens on",
}

func main() {
	mode := flag.String("mode", "client-close", "client-close, server-close, rst or refused")
	ipv6 := flag.Bool("6", false, "use ::1 instead of 127.0.0.1")
	conc := flag.Int("c", 4, "concurrent clients")
	dur := flag.Duration("d", 10*time.Second, "how long to churn")
	loop := flag.Bool("loop", false, "event loop: Go's net package over epoll, a request and an answer per connection (client-close and server-close)")
	rate := flag.Float64("rate", 0, "connections per second, all clients together (0: as fast as they go; blocking only)")
	targets := flag.Int("targets", 1, "server addresses 127.0.0.1 to 127.0.0.N, taken in turn: N times the ephemeral ports before connect runs short (IPv4, blocking only)")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: churn [-mode M] [-loop] [-6] [-c N] [-d D] [-rate R] [-targets N]\n\nModes:\n")
		for _, m := range []string{"client-close", "server-close", "rst", "refused"} {
			fmt.Fprintf(os.Stderr, "  %-13s %s\n", m, modes[m])
		}
		fmt.Fprintln(os.Stderr, "\nFlags:")
		flag.PrintDefaults()
	}
	flag.Parse()
	if _, ok := modes[*mode]; !ok || *conc < 1 || *dur <= 0 || flag.NArg() > 0 || *rate < 0 ||
		*targets < 1 || *targets > 254 || (*targets > 1 || *rate > 0) && (*loop || *ipv6) {
		fmt.Fprintln(os.Stderr, "churn: bad arguments (see churn -h)")
		os.Exit(2)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	churn := func(ctx context.Context, mode string, ipv6 bool, conc int, dur time.Duration) (uint64, time.Duration, error) {
		return run(ctx, mode, ipv6, conc, dur, *rate, *targets)
	}
	if *loop {
		churn = loopRun
	}
	n, elapsed, err := churn(ctx, *mode, *ipv6, *conc, *dur)
	if err != nil {
		fmt.Fprintf(os.Stderr, "churn: %v\n", err)
		os.Exit(1)
	}
	family := "ipv4"
	if *ipv6 {
		family = "ipv6"
	}
	shape := "blocking"
	if *loop {
		shape = "event loop"
	}
	fmt.Printf("connections/s: %.1f (%d in %.2fs, %s, %s, %s, %d clients)\n",
		float64(n)/elapsed.Seconds(), n, elapsed.Seconds(), *mode, shape, family, *conc)
}

type target struct {
	family int
	sa     unix.Sockaddr
}

// run churns with blocking calls. rate, if not 0, paces the clients to
// that many connections a second together; with targets > 1 the server
// listens on every address and the clients connect to 127.0.0.1 to
// 127.0.0.targets in turn. With tcp_tw_reuse=0 a client's TIME_WAITs hold
// their ports toward their server address for 60 s, and connect()'s
// search for a free port slows as the range fills: several addresses keep
// a steady rate possible, where one would sink to a few hundred a second.
func run(ctx context.Context, mode string, ipv6 bool, conc int, dur time.Duration, rate float64, targets int) (uint64, time.Duration, error) {
	family := unix.AF_INET
	var bindSA unix.Sockaddr = &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	if targets > 1 {
		bindSA = &unix.SockaddrInet4{}
	}
	if ipv6 {
		family = unix.AF_INET6
		bindSA = &unix.SockaddrInet6{Addr: [16]byte{15: 1}}
	}
	lfd, port, err := listen(family, bindSA)
	if err != nil {
		return 0, 0, err
	}
	defer unix.Close(lfd)
	if mode == "refused" {
		// nobody listens on the port any more: connects are refused
		unix.Close(lfd)
		lfd = -1
	}
	var tgts []target
	switch sa := bindSA.(type) {
	case *unix.SockaddrInet4:
		for k := range targets {
			tgts = append(tgts, target{family, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, byte(1 + k)}, Port: port}})
		}
	case *unix.SockaddrInet6:
		tgts = append(tgts, target{family, &unix.SockaddrInet6{Addr: sa.Addr, Port: port}})
	}
	// each client's time between connections, when paced
	var every time.Duration
	if rate > 0 {
		every = time.Duration(float64(conc) / rate * float64(time.Second))
	}

	var stop, drained atomic.Bool
	var wg, servers sync.WaitGroup
	if lfd >= 0 {
		// non-blocking, so the servers can see the queue empty at the end
		if err := unix.SetNonblock(lfd, true); err != nil {
			return 0, 0, fmt.Errorf("set listener non-blocking: %w", err)
		}
		for range conc {
			servers.Add(1)
			go func() {
				defer servers.Done()
				serve(lfd, mode, &drained)
			}()
		}
	}
	// every connection made is finished by a server before the listener
	// closes, so each has its whole lifecycle
	defer func() {
		drained.Store(true)
		servers.Wait()
	}()
	counts := make([]paddedCount, conc)
	errs := make(chan error, conc)
	start := time.Now()
	for i := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			next := time.Now()
			for k := i; !stop.Load(); k++ {
				if every > 0 {
					// on a schedule, not a gap after each: a slow
					// connect is made up for
					next = next.Add(every)
					if d := time.Until(next); d > 0 {
						time.Sleep(d)
					}
				}
				done, err := dial(tgts[k%len(tgts)], mode)
				if err != nil {
					errs <- err
					stop.Store(true)
					return
				}
				if done {
					counts[i].n++
				}
			}
		}()
	}
	select {
	case <-time.After(dur):
	case <-ctx.Done():
	case err := <-errs:
		stop.Store(true)
		wg.Wait()
		return 0, 0, err
	}
	stop.Store(true)
	elapsed := time.Since(start)
	wg.Wait()
	var total uint64
	for i := range counts {
		total += counts[i].n
	}
	select {
	case err := <-errs:
		return 0, 0, err
	default:
	}
	return total, elapsed, nil
}

// paddedCount keeps each client's counter on its own cache line.
type paddedCount struct {
	n uint64
	_ [56]byte
}

func listen(family int, sa unix.Sockaddr) (int, int, error) {
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, 0, fmt.Errorf("socket: %w", err)
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(fd, sa); err != nil {
		return -1, 0, fmt.Errorf("bind: %w", err)
	}
	if err := unix.Listen(fd, 4096); err != nil {
		return -1, 0, fmt.Errorf("listen: %w", err)
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		return -1, 0, fmt.Errorf("getsockname: %w", err)
	}
	switch a := got.(type) {
	case *unix.SockaddrInet4:
		return fd, a.Port, nil
	case *unix.SockaddrInet6:
		return fd, a.Port, nil
	}
	return -1, 0, errors.New("unexpected address family")
}

// serve accepts and finishes connections as the mode says, on a locked
// thread, until the clients are done and the queue is empty.
func serve(lfd int, mode string, drained *atomic.Bool) {
	runtime.LockOSThread()
	buf := make([]byte, 64)
	pfd := []unix.PollFd{{Fd: int32(lfd), Events: unix.POLLIN}}
	for {
		fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if err == unix.EAGAIN {
			if drained.Load() {
				return
			}
			unix.Poll(pfd, 20)
			continue
		}
		if err != nil {
			if err == unix.EINTR || err == unix.ECONNABORTED {
				continue
			}
			return
		}
		if mode != "server-close" {
			readToEnd(fd, buf) // the client's FIN or RST
		}
		unix.Close(fd)
	}
}

// readToEnd reads until the peer's FIN (0) or an error such as its RST.
func readToEnd(fd int, buf []byte) {
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if n <= 0 {
			return
		}
	}
}

// dial makes one connection; done is false when no connection was made
// and the caller should try again.
func dial(t target, mode string) (done bool, err error) {
	fd, err := unix.Socket(t.family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	for {
		err = unix.Connect(fd, t.sa)
		if err != unix.EINTR {
			break
		}
	}
	switch {
	case mode == "refused":
		if err != unix.ECONNREFUSED {
			return false, fmt.Errorf("connect: want ECONNREFUSED, got %v", err)
		}
		return true, nil
	case err == unix.EADDRNOTAVAIL:
		// every ephemeral port is in TIME_WAIT: the load is past what
		// the port range allows; try again
		return false, nil
	case err != nil:
		return false, fmt.Errorf("connect: %w", err)
	}
	switch mode {
	case "server-close":
		readToEnd(fd, make([]byte, 64))
	case "rst":
		if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
			return false, fmt.Errorf("linger: %w", err)
		}
	}
	return true, nil
}
