package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/tcptrace/tcptrace/internal/cli"
	"github.com/tcptrace/tcptrace/life"
)

// lifeConfig is what the life command's flags say.
type lifeConfig struct {
	cli.Common
	json bool
	csv  bool
	max  int
}

func parseLife(args []string, stderr io.Writer) (*lifeConfig, error) {
	c := &lifeConfig{}
	fs := flag.NewFlagSet("life", flag.ContinueOnError)
	c.Register(fs)
	fs.BoolVar(&c.json, "json", false, "")
	for _, n := range []string{"s", "csv"} {
		fs.BoolVar(&c.csv, n, false, "")
	}
	fs.IntVar(&c.max, "max", life.DefaultMax, "")
	if err := cli.ParseFlags(fs, args, lifeUsage, stderr); err != nil {
		return nil, err
	}
	if err := c.Check(); err != nil {
		return nil, cli.Usage(err)
	}
	switch {
	case c.json && c.csv:
		return nil, cli.Usage(errors.New("--json and --csv exclude each other"))
	case c.max < 1:
		return nil, cli.Usage(errors.New("--max must be at least 1"))
	}
	return c, nil
}

// runLife prints one line per finished connection.
func runLife(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseLife(args, stderr)
	if err != nil {
		return err
	}
	format := life.Text
	switch {
	case c.json:
		format = life.JSON
	case c.csv:
		format = life.CSV
	}
	buf := bufio.NewWriterSize(stdout, 64<<10)
	w := life.NewWriter(buf, format)
	conns := uint64(0)
	tracker := life.New(c.max, func(conn *life.Conn) error {
		conns++
		return w.Write(conn)
	}, func() error {
		if err := w.Flush(); err != nil {
			return err
		}
		return buf.Flush()
	})
	st, err := cli.Trace(ctx, &c.Common, stderr, cli.Hooks{}, tracker)
	if ferr := tracker.Flush(); err == nil && ferr != nil {
		err = fmt.Errorf("write output: %w", ferr)
	}
	summary := fmt.Sprintf("tcptrace: %d connections, %d events, %d lost", conns, st.Events, st.Lost)
	if tracker.Dropped > 0 {
		summary += fmt.Sprintf(", %d connections not followed (--max)", tracker.Dropped)
	}
	if cli.Traced(err) {
		fmt.Fprintln(stderr, summary)
	}
	return err
}

const lifeUsage = `Usage: tcptrace life [flags]

One line per finished connection, as it ends (CLOSE, or entering
TIME_WAIT): its owner, role (client or server), addresses, handshake time
(SYN_SENT or SYN_RECV), how long it lived from its first transition (">"
when that was before the trace began), how it ended (the close's cause, or
time_wait) and which side closed first (local: this end sent the first FIN;
remote: the peer did). Listeners are not connections. It takes the filter
and limit flags of tcptrace trace (tcptrace --help).

  --json              one JSON object per connection
                        tcptrace life --json > conns.jsonl
  -s, --csv           comma-separated values with a header line, as tcplife -s
                        tcptrace life -s > conns.csv
  --max N             connections followed at once; past it new ones are
                      not, and the exit line says how many; default 1048576
                        tcptrace life --max 100000
`
