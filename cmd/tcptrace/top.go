package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/term"

	"github.com/tcptrace/tcptrace/internal/cli"
	"github.com/tcptrace/tcptrace/stream"
	"github.com/tcptrace/tcptrace/top"
)

// topConfig is what the top command's flags say.
type topConfig struct {
	aggFlags
	sort top.Sort
	rows int
}

func parseTop(args []string, stderr io.Writer) (*topConfig, error) {
	c := &topConfig{}
	fs := flag.NewFlagSet("top", flag.ContinueOnError)
	c.register(fs, time.Second)
	sort := fs.String("sort", top.SortKeys[top.ByNew], "")
	fs.IntVar(&c.rows, "rows", 0, "")
	if err := cli.ParseFlags(fs, args, topUsage, stderr); err != nil {
		return nil, err
	}
	if err := c.check(); err != nil {
		return nil, cli.Usage(err)
	}
	var err error
	if c.sort, err = top.ParseSort(*sort); err != nil {
		return nil, cli.Usage(fmt.Errorf("--sort: %w", err))
	}
	if c.rows < 0 {
		return nil, cli.Usage(errors.New("--rows must be 0 (as many as fit) or more"))
	}
	return c, nil
}

// runTop shows the live view on a terminal, or a summary line per
// interval when stdout is not one.
func runTop(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseTop(args, stderr)
	if err != nil {
		return err
	}
	agg, err := newAggregator(&c.aggFlags, stderr)
	if err != nil {
		return err
	}
	out, isFile := stdout.(*os.File)
	if !isFile || !term.IsTerminal(int(out.Fd())) {
		var werr error
		st, err := cli.Trace(ctx, &c.Common, stderr, cli.Hooks{Every: c.interval, OnStats: func(st stream.Stats) {
			agg.reseed()
			s := top.Take(agg.Aggregate, time.Now(), st.Lost)
			if err := top.Plain(stdout, &s, c.sort); err != nil && werr == nil {
				werr = fmt.Errorf("write output: %w", err)
			}
		}, OnSeed: agg.seedHolders}, agg.Aggregate)
		cli.SayEnd(stderr, st, err)
		return errors.Join(err, werr)
	}

	screen, err := top.NewScreen(c.sort, c.rows)
	if err != nil {
		return err
	}
	ctx, quit := context.WithCancel(ctx)
	defer quit()
	snaps := make(chan top.Snapshot, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		screen.Run(ctx, snaps)
		quit() // the user quit: stop the trace
	}()
	st, err := cli.Trace(ctx, &c.Common, stderr, cli.Hooks{Every: c.interval, OnStats: func(st stream.Stats) {
		agg.reseed()
		s := top.Take(agg.Aggregate, time.Now(), st.Lost)
		select {
		case snaps <- s:
		default: // the screen is behind: it gets the next one
		}
	}, OnSeed: agg.seedHolders}, agg.Aggregate)
	quit()
	<-done
	cli.SayEnd(stderr, st, err)
	return err
}

const topUsage = `Usage: tcptrace top [flags]

A live full-screen view, redrawn every --interval: transitions, resets and
refusals per second, sockets per state now, and the top processes and
peers by new connections, CLOSE_WAIT held, TIME_WAIT created or resets.
Keys: q quits, s changes the sort, p pauses. It works over ssh and in
tmux, and follows resizes. When stdout is not a terminal it writes one
summary line per interval instead. It takes the filter and limit flags of
tcptrace trace (tcptrace --help).

  --interval D        how often to redraw; default 1s
                        tcptrace top --interval 2s
  --sort KEY          the tables' order at start: new, close-wait,
                      time-wait, resets or refused; default new
                        tcptrace top --sort close-wait
  --rows N            rows per table at most; default 0, as many as fit
                        tcptrace top --rows 5
  --max-keys N        processes and peers tracked per interval; default 4096
                        tcptrace top --max-keys 100000
`
