package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"

	"github.com/tcptrace/tcptrace/graph"
	"github.com/tcptrace/tcptrace/internal/cli"
	"github.com/tcptrace/tcptrace/stream"
)

// graphConfig is what the graph command's flags say.
type graphConfig struct {
	cli.Common
	svg  string
	conn string
	sel  graph.Selector
}

func parseGraph(args []string, stderr io.Writer) (*graphConfig, error) {
	c := &graphConfig{}
	fs := flag.NewFlagSet("graph", flag.ContinueOnError)
	c.Register(fs)
	fs.StringVar(&c.svg, "svg", "", "")
	fs.StringVar(&c.conn, "conn", "", "")
	if err := cli.ParseFlags(fs, args, graphUsage, stderr); err != nil {
		return nil, err
	}
	if err := c.Check(); err != nil {
		return nil, cli.Usage(err)
	}
	if c.conn != "" {
		sel, err := graph.ParseSelector(c.conn)
		if err != nil {
			return nil, cli.Usage(err)
		}
		c.sel = sel
	}
	return c, nil
}

// runGraph traces until stopped, then draws the observed state machine,
// or one connection's ladder.
func runGraph(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseGraph(args, stderr)
	if err != nil {
		return err
	}
	// said before tracing, not after: what was traced would be lost
	if c.svg != "" && c.conn == "" {
		if _, err := exec.LookPath("dot"); err != nil {
			return errors.New("--svg needs Graphviz's dot, which is not installed: apt-get install graphviz (without --svg the DOT goes to stdout)")
		}
	}
	var machine graph.Machine
	var ladder *graph.Ladder
	var consumer stream.Consumer = &machine
	if c.conn != "" {
		ladder = graph.NewLadder(c.sel)
		consumer = ladder
	}
	if c.Duration() == 0 && c.Count() == 0 {
		fmt.Fprintln(stderr, "tcptrace: tracing until Ctrl-C (or --duration, --count), then drawing")
	}
	st, err := cli.Trace(ctx, &c.Common, stderr, cli.Hooks{}, consumer)
	cli.SayEnd(stderr, st, err)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	if ladder != nil {
		sides, err := ladder.Sides()
		if err != nil {
			return fmt.Errorf("--conn %s: %w", c.conn, err)
		}
		if err := graph.Text(stdout, sides); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
		if c.svg == "" {
			return nil
		}
		graph.SVG(&out, sides)
		return writeFile(c.svg, out.Bytes())
	}
	machine.DOT(&out)
	if c.svg == "" {
		_, err := stdout.Write(out.Bytes())
		return err
	}
	cmd := exec.Command("dot", "-Tsvg", "-o", c.svg)
	cmd.Stdin = &out
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("dot: %v: %s", err, bytes.TrimSpace(msg))
	}
	return nil
}

func writeFile(path string, b []byte) error {
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

const graphUsage = `Usage: tcptrace graph [flags]

Traces until Ctrl-C (or --duration, --count), then draws what the TCP state
machine did: every transition seen as an edge of a Graphviz DOT graph,
labelled with its count and the median time spent in the state it left.
It takes the filter and limit flags of tcptrace trace (tcptrace --help).

  --svg FILE          render to SVG with Graphviz's dot (apt-get install graphviz)
                        tcptrace graph --duration 10s --svg tcp.svg
  --conn ID           instead, one connection's ladder diagram: both ends side
                      by side in time order when both are on this host, each
                      transition with the time spent in the state it left;
                      ID is a socket id (hex, the JSON's "sock") or the
                      address:port of one end (the client's is unambiguous);
                      with --svg the ladder is also drawn as SVG
                        tcptrace graph --netns /run/netns/demo --count 12 --conn 127.0.0.1:45888
`
