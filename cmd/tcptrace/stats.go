package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/tcptrace/tcptrace/aggregate"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/filter"
	"github.com/tcptrace/tcptrace/internal/cli"
	"github.com/tcptrace/tcptrace/report"
	"github.com/tcptrace/tcptrace/stream"
)

// aggFlags are the flags of the commands that aggregate (stats, top).
type aggFlags struct {
	cli.Common
	interval time.Duration
	maxKeys  int
}

func (c *aggFlags) register(fs *flag.FlagSet, interval time.Duration) {
	c.Common.Register(fs)
	fs.DurationVar(&c.interval, "interval", interval, "")
	fs.IntVar(&c.maxKeys, "max-keys", aggregate.DefaultMaxKeys, "")
}

func (c *aggFlags) check() error {
	if err := c.Common.Check(); err != nil {
		return err
	}
	switch {
	case c.interval < 100*time.Millisecond:
		return errors.New("--interval must be at least 100ms")
	case c.maxKeys < 1:
		return errors.New("--max-keys must be at least 1")
	}
	return nil
}

// aggregator is an aggregate with its sockets per state seeded from a
// dump of the namespace, and set again from one each minute.
type aggregator struct {
	*aggregate.Aggregate
	filter   filter.Filter
	seeded   bool
	lastSeed time.Time
	stderr   io.Writer
}

func newAggregator(c *aggFlags, stderr io.Writer) (*aggregator, error) {
	f, err := c.Filter()
	if err != nil {
		return nil, cli.Usage(err)
	}
	a := &aggregator{Aggregate: aggregate.New(c.maxKeys, time.Now()), filter: f, lastSeed: time.Now(), stderr: stderr}
	a.seeded, err = seedSockets(a.Aggregate, f)
	if err != nil {
		fmt.Fprintf(stderr, "tcptrace: warning: %v: sockets per state count only the transitions seen\n", err)
	} else if !a.seeded {
		fmt.Fprintln(stderr, "tcptrace: sockets per state count only the transitions seen: --pid, --comm, --cgroup and --state cannot be applied to a socket dump")
	}
	return a, nil
}

// seedHolders takes the holders dump at start: the CLOSE_WAITs held
// then, by process.
func (a *aggregator) seedHolders(hs []events.Holder) { a.SeedHolders(hs, a.filter.Match) }

// reseed sets the sockets per state from a dump again, once a minute:
// what the transitions keep drifts from what the kernel has (ends not
// followed past --tw-max, sockets whose transitions the kernel part of
// the filter let through only as hints).
func (a *aggregator) reseed() {
	if !a.seeded || time.Since(a.lastSeed) < cli.ReseedEvery {
		return
	}
	a.lastSeed = time.Now()
	if _, err := seedSockets(a.Aggregate, a.filter); err != nil {
		fmt.Fprintf(a.stderr, "tcptrace: warning: %v\n", err)
	}
}

// statsConfig is what the stats command's flags say.
type statsConfig struct {
	aggFlags
	json bool
	top  int
}

func parseStats(args []string, stderr io.Writer) (*statsConfig, error) {
	c := &statsConfig{}
	fs := flag.NewFlagSet("stats", flag.ContinueOnError)
	c.aggFlags.register(fs, 5*time.Second)
	fs.BoolVar(&c.json, "json", false, "")
	fs.IntVar(&c.top, "top", 10, "")
	if err := cli.ParseFlags(fs, args, statsUsage, stderr); err != nil {
		return nil, err
	}
	if err := c.aggFlags.check(); err != nil {
		return nil, cli.Usage(err)
	}
	if c.top < 1 {
		return nil, cli.Usage(errors.New("--top must be at least 1"))
	}
	return c, nil
}

// runStats prints aggregates of the transitions every interval, and the
// last, partial one on exit.
func runStats(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseStats(args, stderr)
	if err != nil {
		return err
	}
	agg, err := newAggregator(&c.aggFlags, stderr)
	if err != nil {
		return err
	}
	var werr error
	onStats := func(st stream.Stats) {
		agg.reseed()
		iv := agg.Take(time.Now())
		x := report.Extra{Lost: st.Lost, CloseWaitHeld: agg.CloseWaits}
		var err error
		sockets := agg.Sockets()
		if c.json {
			err = report.WriteJSON(stdout, &iv, &sockets, x, c.top)
		} else {
			err = report.WriteText(stdout, &iv, &sockets, x, c.top)
		}
		if err != nil && werr == nil {
			werr = fmt.Errorf("write output: %w", err)
		}
	}
	st, err := cli.Trace(ctx, &c.Common, stderr, cli.Hooks{OnStats: onStats, Every: c.interval, OnSeed: agg.seedHolders}, agg.Aggregate)
	cli.SayEnd(stderr, st, err)
	return errors.Join(err, werr)
}

// seedSockets sets the aggregate's sockets per state from a dump of each
// namespace the filter covers, when the filter can be applied to a dump:
// it says false when it cannot (an owner or state filter).
func seedSockets(agg *aggregate.Aggregate, f filter.Filter) (bool, error) {
	if !cli.Dumpable(f) {
		return false, nil
	}
	counts, err := cli.CountSockets(f)
	if err != nil {
		return false, err
	}
	counts.Apply(agg.Census)
	return true, nil
}

const statsUsage = `Usage: tcptrace stats [flags]

Counts every TCP state transition on this host and prints, every
--interval and once more on exit: the transitions (old -> new state),
closes by cause, sockets per state now, histograms of the handshakes,
connection lifetime, CLOSE_WAIT, FIN_WAIT2 and TIME_WAIT, and the top
processes, remote addresses and listening ports by new connections,
resets, refusals, TIME_WAITs and CLOSE_WAITs. It takes the filter flags of
tcptrace trace (tcptrace --help).

  --interval D        how often to print; default 5s
                        tcptrace stats --interval 10s
  --json              one JSON object per interval (the README documents every key)
                        tcptrace stats --json > stats.jsonl
  --top N             rows of each top table; default 10
                        tcptrace stats --top 20
  --max-keys N        keys each top table tracks per interval; past it,
                      events still count everywhere else, and the output
                      says how many were left out of the tables; default 4096
                        tcptrace stats --max-keys 100000
`
