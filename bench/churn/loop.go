package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// loopRun is the same churn written as most servers are: Go's net
// package, goroutines on the runtime's poller (epoll), a request and an
// answer per connection. Its rate is bound by latency, not CPU: every
// wake-up of another process on these CPUs is felt.
func loopRun(ctx context.Context, mode string, ipv6 bool, conc int, dur time.Duration) (uint64, time.Duration, error) {
	if mode != "client-close" && mode != "server-close" {
		return 0, 0, fmt.Errorf("-loop churns client-close or server-close, not %s", mode)
	}
	addr := "127.0.0.1:0"
	if ipv6 {
		addr = "[::1]:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return 0, 0, fmt.Errorf("listen: %w", err)
	}
	var served sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			served.Add(1)
			go func() {
				defer served.Done()
				answer(c, mode)
			}()
		}
	}()
	target := ln.Addr().String()

	var stop atomic.Bool
	var wg sync.WaitGroup
	counts := make([]paddedCount, conc)
	errs := make(chan error, conc)
	start := time.Now()
	for i := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				if err := ask(target, mode); err != nil {
					errs <- err
					stop.Store(true)
					return
				}
				counts[i].n++
			}
		}()
	}
	var runErr error
	select {
	case <-time.After(dur):
	case <-ctx.Done():
	case runErr = <-errs:
	}
	stop.Store(true)
	elapsed := time.Since(start)
	wg.Wait()
	// every connection made is finished before the listener closes
	served.Wait()
	ln.Close()
	if runErr == nil {
		select {
		case runErr = <-errs:
		default:
		}
	}
	if runErr != nil {
		return 0, 0, runErr
	}
	var total uint64
	for i := range counts {
		total += counts[i].n
	}
	return total, elapsed, nil
}

// ask makes one connection: a one-byte request, its answer, then the
// close, first (client-close) or after the server's (server-close).
func ask(target, mode string) error {
	c, err := net.Dial("tcp", target)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	buf := make([]byte, 1)
	if _, err := c.Write(buf); err != nil {
		return fmt.Errorf("request: %w", err)
	}
	if _, err := io.ReadFull(c, buf); err != nil {
		return fmt.Errorf("answer: %w", err)
	}
	if mode == "server-close" {
		if _, err := c.Read(buf); !errors.Is(err, io.EOF) {
			return fmt.Errorf("read: want EOF, got %v", err)
		}
	}
	return nil
}

// answer serves one connection: the request, the answer, and the close,
// after the client's (client-close) or first (server-close).
func answer(c net.Conn, mode string) {
	defer c.Close()
	buf := make([]byte, 1)
	if _, err := io.ReadFull(c, buf); err != nil {
		return
	}
	if _, err := c.Write(buf); err != nil {
		return
	}
	if mode == "client-close" {
		c.Read(buf) // the client's FIN
	}
}
