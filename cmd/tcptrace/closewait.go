package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/tcptrace/tcptrace/cgroups"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/cli"
	"github.com/tcptrace/tcptrace/sockdiag"
	"github.com/tcptrace/tcptrace/stuck"
)

type closewaitConfig struct {
	reportFlags
	threshold time.Duration
}

func parseClosewait(args []string, stderr io.Writer) (*closewaitConfig, error) {
	c := &closewaitConfig{}
	fs := flag.NewFlagSet("closewait", flag.ContinueOnError)
	c.reportFlags.register(fs)
	fs.DurationVar(&c.threshold, "threshold", stuck.DefaultThreshold, "")
	if err := cli.ParseFlags(fs, args, closewaitUsage, stderr); err != nil {
		return nil, err
	}
	if err := c.reportFlags.check(); err != nil {
		return nil, cli.Usage(err)
	}
	if c.threshold < 0 {
		return nil, cli.Usage(errors.New("--threshold must not be negative"))
	}
	return c, nil
}

// runClosewait reports the sockets stuck in CLOSE_WAIT, FIN_WAIT2,
// SYN_RECV or SYN_SENT every interval, or once at the end of --duration.
func runClosewait(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseClosewait(args, stderr)
	if err != nil {
		return err
	}
	netns, err := c.reportNetns()
	if err != nil {
		return err
	}
	tracker := stuck.NewTracker()
	names := cgroups.New()
	reporter := stuck.NewReporter(tracker, names.Name, c.threshold, time.Now())
	prober := sockdiag.NewProber()
	defer prober.Close()
	report := func() error {
		snap, err := stuck.Take(prober, netns, 0)
		if err != nil {
			return err
		}
		rep := reporter.Build(snap)
		if c.json {
			return stuck.WriteJSON(stdout, rep)
		}
		return stuck.WriteText(stdout, rep, c.top)
	}
	seed := func(holders []events.Holder) {
		// the sockets already stuck when tracing began, and their owners
		snap, err := stuck.Take(prober, netns, 0)
		if err != nil {
			fmt.Fprintf(stderr, "tcptrace: warning: %v: sockets stuck before tcptrace started are found at the first report\n", err)
			return
		}
		tracker.Seed(holders, snap.Sockets, snap.Netns, snap.Time)
	}
	return liveReport(ctx, &c.reportFlags, stderr, tracker, seed, report)
}

const closewaitUsage = `Usage: tcptrace closewait [flags]

Sockets that stay in CLOSE_WAIT longer than --threshold, the signature of
an application that never calls close(), with their owner (pid, command,
systemd unit or container), endpoints, age and unread bytes (Recv-Q), and
a summary per process; also sockets stuck in FIN_WAIT2, SYN_RECV and
SYN_SENT, failed handshakes by destination and cause, and the accept
queues of the listeners. Sockets already stuck when it starts are found
by a dump, their age shown as "≥". It reports on one namespace: --netns,
else tcptrace's own, every --interval. It takes the filter flags of
tcptrace trace (tcptrace --help), which narrow the transitions followed.

  --threshold D       report sockets in a state for at least D; default 30s
                        tcptrace closewait --threshold 5m
  --interval D        how often to report; default 2s
                        tcptrace closewait --interval 10s
  --json              one JSON object per report (the README documents every key)
                        tcptrace closewait --json
  --once              a single report when --duration ends
                        tcptrace closewait --once --duration 40s
  --top N             rows of the socket table in text; default 10
                        tcptrace closewait --top 50
`
