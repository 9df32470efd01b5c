// Command tcptrace streams every TCP state transition on this host, with
// the process that owns the socket and why each connection closed.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	// the zone database in the binary: TZ names a zone in an image
	// without /usr/share/zoneinfo (distroless, the agent's pod) too
	_ "time/tzdata"

	"github.com/tcptrace/tcptrace/internal/cli"
	"github.com/tcptrace/tcptrace/output"
)

func main() {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	stopProfile := cli.Profile()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stopProfile()
	cancel()
	cli.Exit(err)
}

const usage = `Usage: tcptrace [trace] [flags]
       tcptrace stats [flags]    aggregates every --interval (tcptrace stats --help)
       tcptrace life [flags]     one line per finished connection (tcptrace life --help)
       tcptrace top [flags]      a live full-screen view (tcptrace top --help)
       tcptrace agent [flags]    Prometheus metrics at /metrics (tcptrace agent --help)
       tcptrace graph [flags]    the state machine as DOT, or one connection's ladder (tcptrace graph --help)
       tcptrace timewait [flags] TIME_WAIT storms and port exhaustion, with verdicts (tcptrace timewait --help)
       tcptrace closewait [flags] sockets stuck in CLOSE_WAIT and the handshake states (tcptrace closewait --help)

Streams every TCP state transition on this host, attributed to the process
that owns the socket, until Ctrl-C, SIGTERM, --duration or --count. Needs
root (or CAP_BPF and CAP_PERFMON). On exit it prints "N events, M lost" to
stderr.

Output:
  --json              one JSON object per line instead of text columns
                        tcptrace --json > transitions.jsonl
  -w, --wide          address columns wide enough for any IPv6 address from
                      the start; by default they fit IPv4 (a line fits 120
                      columns) and widen when a longer address comes
                        tcptrace -w

Filters (an event is kept when it passes all of them; lists are
comma-separated or the flag repeated):
  -4, -6              IPv4 or IPv6 only (dual-stack sockets talking IPv4 count as IPv4)
                        tcptrace -6
  -L, --lport PORTS   local port
                        tcptrace -L 80,443
  -D, --rport PORTS   remote port
                        tcptrace -D 5432
  -P, --port PORTS    local or remote port, as ss's sport or dport (applied
                      after the kernel hands the records over)
                        tcptrace -P 8080
  --pid PIDS          owning process id
                        tcptrace --pid 1234
  --comm NAME         owning process's command name, exact (at most 15 bytes)
                        tcptrace --comm nginx
  --cgroup CG         owning process's cgroup or one under it: a path as
                      /proc/PID/cgroup shows it, or a systemd unit
                        tcptrace --cgroup nginx.service
                        tcptrace --cgroup /system.slice/nginx.service
  --netns NS          network namespace: a name of ip netns, a path, or
                      the inode of one in use
                        tcptrace --netns blue
                        tcptrace --netns /var/run/netns/blue
                        tcptrace --netns /proc/4242/ns/net
  --state STATES      events whose old or new state is one of these, as
                      printed or as ss spells them
                        tcptrace --state TIME_WAIT,close-wait

Time: text shows local time (as ss and tcpstates do), JSON UTC (RFC 3339).
  --utc               text in UTC too
                        tcptrace --utc

Limits:
  --duration D        stop after D
                        tcptrace --duration 30s
  --count N           stop after N events
                        tcptrace --count 100
  --ring-size BYTES   kernel ring buffer, a power of two (K, M suffixes); default 8M
                        tcptrace --ring-size 32M
  --tw-max N          connections followed to the end of TIME_WAIT (and,
                      separately, of a FIN_WAIT2 mini-socket); past it their
                      ends are not shown and a warning is printed; default 65536
                        tcptrace --tw-max 262144
`

// commands are tcptrace's subcommands; with none, or flags first, it is
// trace.
var commands = map[string]func(ctx context.Context, args []string, stdout, stderr io.Writer) error{
	"trace":     runTrace,
	"stats":     runStats,
	"graph":     runGraph,
	"life":      runLife,
	"top":       runTop,
	"agent":     runAgent,
	"timewait":  runTimewait,
	"closewait": runClosewait,
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cli.CoarseSleeps()
	cli.TightHeap()
	name := "trace"
	if len(args) > 0 && (args[0] == "--version" || args[0] == "-version" || args[0] == "version") {
		fmt.Fprintln(stdout, cli.Version())
		return nil
	}
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
		if name == "help" {
			// tcptrace help CMD is tcptrace CMD --help
			if len(args) == 0 {
				fmt.Fprint(stderr, usage)
				return flag.ErrHelp
			}
			name, args = args[0], []string{"--help"}
		}
	}
	cmd, ok := commands[name]
	if !ok {
		return cli.Usage(fmt.Errorf("unknown command %q", name))
	}
	err := cmd(ctx, args, stdout, stderr)
	if name != "trace" && err != nil {
		err = cli.InCommand(name, err)
	}
	return err
}

// traceConfig is what the trace command's flags say.
type traceConfig struct {
	cli.Common
	json bool
	wide bool
}

func parseTrace(args []string, stderr io.Writer) (*traceConfig, error) {
	c := &traceConfig{}
	fs := flag.NewFlagSet("trace", flag.ContinueOnError)
	c.Register(fs)
	fs.BoolVar(&c.json, "json", false, "")
	for _, n := range []string{"w", "wide"} {
		fs.BoolVar(&c.wide, n, false, "")
	}
	if err := cli.ParseFlags(fs, args, usage, stderr); err != nil {
		return nil, err
	}
	if err := c.Check(); err != nil {
		return nil, cli.Usage(err)
	}
	return c, nil
}

// runTrace streams every transition: tcptrace's default command.
func runTrace(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseTrace(args, stderr)
	if err != nil {
		return err
	}
	var out output.Writer
	if c.json {
		out = output.NewJSON(stdout)
	} else {
		out = output.NewText(stdout, c.wide)
	}
	st, err := cli.Trace(ctx, &c.Common, stderr, cli.Hooks{}, out)
	if cerr := out.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("write output: %w", cerr)
	}
	summary := fmt.Sprintf("tcptrace: %d events, %d lost", st.Events, st.Lost)
	if st.Untracked > 0 {
		summary += fmt.Sprintf(", %d not followed past --tw-max", st.Untracked)
	}
	if st.Unknown > 0 {
		summary += fmt.Sprintf(", %d without owner or time in state (socket table full)", st.Unknown)
	}
	if cli.Traced(err) {
		fmt.Fprintln(stderr, summary)
	}
	return err
}
