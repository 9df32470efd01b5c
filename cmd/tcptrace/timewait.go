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
	"github.com/tcptrace/tcptrace/storm"
	"github.com/tcptrace/tcptrace/stream"
)

// reportFlags are the flags of the live reports (timewait, closewait).
type reportFlags struct {
	cli.Common
	interval time.Duration
	json     bool
	once     bool
	top      int
}

func (c *reportFlags) register(fs *flag.FlagSet) {
	c.Common.Register(fs)
	fs.DurationVar(&c.interval, "interval", 2*time.Second, "")
	fs.BoolVar(&c.json, "json", false, "")
	fs.BoolVar(&c.once, "once", false, "")
	fs.IntVar(&c.top, "top", 10, "")
}

func (c *reportFlags) check() error {
	if err := c.Common.Check(); err != nil {
		return err
	}
	switch {
	case c.interval < 100*time.Millisecond:
		return errors.New("--interval must be at least 100ms")
	case c.top < 1:
		return errors.New("--top must be at least 1")
	case c.once && c.Duration() == 0:
		return errors.New("--once needs --duration: the report comes when it ends")
	}
	return nil
}

// reportNetns is the namespace a report dumps: --netns, else tcptrace's.
func (c *reportFlags) reportNetns() (uint32, error) {
	f, err := c.Filter()
	if err != nil {
		return 0, cli.Usage(err)
	}
	if f.Netns != 0 {
		return f.Netns, nil
	}
	return sockdiag.SelfNetns()
}

type timewaitConfig struct {
	reportFlags
	warnPct float64
}

func parseTimewait(args []string, stderr io.Writer) (*timewaitConfig, error) {
	c := &timewaitConfig{}
	fs := flag.NewFlagSet("timewait", flag.ContinueOnError)
	c.reportFlags.register(fs)
	fs.Float64Var(&c.warnPct, "warn-pct", storm.DefaultWarnPct, "")
	if err := cli.ParseFlags(fs, args, timewaitUsage, stderr); err != nil {
		return nil, err
	}
	if err := c.reportFlags.check(); err != nil {
		return nil, cli.Usage(err)
	}
	if c.warnPct <= 0 || c.warnPct > 100 {
		return nil, cli.Usage(errors.New("--warn-pct must be in (0, 100]"))
	}
	return c, nil
}

// runTimewait reports on the namespace's TIME_WAIT sockets every
// interval, or once at the end of --duration.
func runTimewait(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseTimewait(args, stderr)
	if err != nil {
		return err
	}
	netns, err := c.reportNetns()
	if err != nil {
		return err
	}
	tracker := storm.NewTracker(0)
	tracker.OnlyNetns(netns)
	names := cgroups.New()
	reporter := storm.NewReporter(tracker, names.Name, c.warnPct, time.Now())
	prober := sockdiag.NewProber()
	defer prober.Close()
	report := func() error {
		snap, err := storm.Take(prober, tracker, netns, 0, nil)
		if err != nil {
			return err
		}
		rep := reporter.Build(snap)
		if c.json {
			return storm.WriteJSON(stdout, rep)
		}
		return storm.WriteText(stdout, rep, c.top)
	}
	seed := func([]events.Holder) {
		// counting begins: the listeners already there (their
		// TIME_WAITs are servers') and the port range
		reporter.Start(time.Now())
		snap, err := storm.Take(prober, tracker, netns, 0, nil)
		if err != nil {
			fmt.Fprintf(stderr, "tcptrace: warning: %v: listeners older than tcptrace are known at the first report\n", err)
			return
		}
		tracker.Seed(snap)
	}
	return liveReport(ctx, &c.reportFlags, stderr, tracker, seed, report)
}

// liveReport runs a report command: tracker follows the transitions, seed
// takes the holders when tracing begins, report writes one report, every
// --interval or once when --duration ends.
func liveReport(ctx context.Context, c *reportFlags, stderr io.Writer, tracker stream.Consumer, seed func([]events.Holder), report func() error) error {
	var werr error
	write := func() {
		if err := report(); err != nil && werr == nil {
			werr = err
		}
	}
	h := cli.Hooks{OnSeed: seed}
	if !c.once {
		h.Every, h.OnStats = c.interval, func(stream.Stats) { write() }
	}
	st, err := cli.Trace(ctx, &c.Common, stderr, h, tracker)
	if err == nil && werr == nil && c.once {
		write()
	}
	cli.SayEnd(stderr, st, err)
	return errors.Join(err, werr)
}

const timewaitUsage = `Usage: tcptrace timewait [flags]

A live report on TIME_WAIT sockets and local port use, every --interval:
how many exist (from a socket dump of the namespace), who creates them
toward which destination and how fast (from the transitions), which side
closes first, how much of the port range each destination takes, the
connects that found no free port, the namespace's settings and counters,
and verdicts in plain words. It reports on one namespace: --netns, else
tcptrace's own. It takes the filter flags of tcptrace trace
(tcptrace --help), which narrow the transitions counted.

  --interval D        how often to report; default 2s
                        tcptrace timewait --interval 5s
  --json              one JSON object per report (the README documents every key)
                        tcptrace timewait --json
  --once              a single report when --duration ends
                        tcptrace timewait --once --duration 30s
  --top N             rows of each table in text; default 10
                        tcptrace timewait --top 20
  --warn-pct P        warn when TIME_WAIT and live connections toward one
                      destination take P% of the usable port range, now or
                      at the current rate; default 80
                        tcptrace timewait --warn-pct 50
`
