// Command tcptrace streams every TCP state transition on this host, with
// the process that owns the socket and why each connection closed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"
	// the zone database in the binary: TZ names a zone in an image
	// without /usr/share/zoneinfo (distroless, the agent's pod) too
	_ "time/tzdata"

	"github.com/tcptrace/tcptrace/cgroups"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/filter"
	"github.com/tcptrace/tcptrace/loader"
	"github.com/tcptrace/tcptrace/output"
	"github.com/tcptrace/tcptrace/sockdiag"
	"github.com/tcptrace/tcptrace/sockets"
	"github.com/tcptrace/tcptrace/stream"
	"github.com/tcptrace/tcptrace/timewait"
)

func main() {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	stopProfile := profile()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stopProfile()
	cancel()
	var uerr usageError
	var cerr commandError
	switch {
	case errors.Is(err, flag.ErrHelp):
	case errors.As(err, &cerr) && errors.As(err, &uerr):
		fmt.Fprintf(os.Stderr, "tcptrace: %v (see tcptrace %s --help)\n", uerr, cerr.name)
		os.Exit(2)
	case errors.As(err, &uerr):
		fmt.Fprintf(os.Stderr, "tcptrace: %v (see tcptrace --help)\n", err)
		os.Exit(2)
	case err != nil:
		fmt.Fprintf(os.Stderr, "tcptrace: %v\n", err)
		os.Exit(1)
	}
}

type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// commandError is an error of a subcommand's, whose help lists its flags.
type commandError struct {
	name string
	error
}

func (e commandError) Unwrap() error { return e.error }

// setupError is a failure before tracing began (a bad filter, a kernel
// that refuses the program): said alone, with no "0 events" summary
// before it.
type setupError struct{ error }

func (e setupError) Unwrap() error { return e.error }

// sayEnd prints the line that ends a trace: how many events, how many lost.
func sayEnd(stderr io.Writer, st stream.Stats, err error) {
	if traced(err) {
		fmt.Fprintf(stderr, "tcptrace: %d events, %d lost\n", st.Events, st.Lost)
	}
}

// traced tells whether err leaves a trace to summarize.
func traced(err error) bool {
	var s setupError
	return !errors.As(err, &s)
}

// profile writes a CPU profile of the whole run to the file that
// TCPTRACE_CPUPROFILE names, for `go tool pprof`: how the overhead work
// finds where user space spends its time.
func profile() (stop func()) {
	path := os.Getenv("TCPTRACE_CPUPROFILE")
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "tcptrace: warning: CPU profile: %v\n", err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

// common holds the flags every command shares: the filter and the limits.
type common struct {
	ipv4     bool
	ipv6     bool
	lports   portList
	rports   portList
	ports    portList
	cgroup   string
	utc      bool
	// notPIDs: processes whose sockets are left out (the agent's own)
	notPIDs []uint32
	pids     pidList
	comm     string
	netns    string
	states   stateList
	duration time.Duration
	count    uint64
	ringSize byteSize
	twMax    int
}

func (c *common) register(fs *flag.FlagSet) {
	c.ringSize = loader.DefaultRingSize
	fs.BoolVar(&c.ipv4, "4", false, "")
	fs.BoolVar(&c.ipv6, "6", false, "")
	for _, n := range []string{"L", "lport"} {
		fs.Var(&c.lports, n, "")
	}
	for _, n := range []string{"D", "rport"} {
		fs.Var(&c.rports, n, "")
	}
	for _, n := range []string{"P", "port"} {
		fs.Var(&c.ports, n, "")
	}
	fs.BoolVar(&c.utc, "utc", false, "")
	fs.StringVar(&c.cgroup, "cgroup", "", "")
	fs.Var(&c.pids, "pid", "")
	fs.StringVar(&c.comm, "comm", "", "")
	fs.StringVar(&c.netns, "netns", "", "")
	fs.Var(&c.states, "state", "")
	fs.DurationVar(&c.duration, "duration", 0, "")
	fs.Uint64Var(&c.count, "count", 0, "")
	fs.Var(&c.ringSize, "ring-size", "")
	fs.IntVar(&c.twMax, "tw-max", timewait.DefaultMax, "")
}

// check says what is wrong with the shared flags, once parsed.
func (c *common) check() error {
	if c.ipv4 && c.ipv6 {
		return errors.New("-4 and -6 exclude each other")
	}
	if c.duration < 0 {
		return errors.New("--duration must be positive")
	}
	if n := int(c.ringSize); n < os.Getpagesize() || n&(n-1) != 0 {
		return fmt.Errorf("--ring-size %d: must be a power of two of at least %d bytes, such as 8M", n, os.Getpagesize())
	}
	if c.twMax < 1 {
		return errors.New("--tw-max must be at least 1")
	}
	if len(c.comm) >= events.CommLen {
		return fmt.Errorf("--comm %q: the kernel keeps at most %d bytes of a command name", c.comm, events.CommLen-1)
	}
	return nil
}

// filter is what the filter flags say.
func (c *common) filter() (filter.Filter, error) {
	f := filter.Filter{States: c.states, PIDs: c.pids, Comm: c.comm, LPorts: c.lports, RPorts: c.rports, Ports: c.ports, NotPIDs: c.notPIDs}
	switch {
	case c.ipv4:
		f.Family = 4
	case c.ipv6:
		f.Family = 6
	}
	if c.netns != "" {
		ino, err := sockdiag.NetnsInode(c.netns)
		if err != nil {
			return f, err
		}
		f.Netns = ino
	}
	if c.cgroup != "" {
		sub, err := cgroups.New().Find(c.cgroup)
		if err != nil {
			return f, err
		}
		f.Cgroups = sub
	}
	if err := f.Check(); err != nil {
		return f, err
	}
	return f, nil
}

// parseFlags parses a command's flags; help is that command's usage.
func parseFlags(fs *flag.FlagSet, args []string, help string, stderr io.Writer) error {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(splitShort(args)); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stderr, help)
			return err
		}
		return usageError{explain(fs, err)}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	return nil
}

// splitShort reads -L8081 as -L 8081, as ss and getopt do: package flag
// would take it for a flag named L8081.
func splitShort(args []string) []string {
	var out []string
	for i, a := range args {
		if a == "--" {
			return append(out, args[i:]...)
		}
		if len(a) > 2 && a[0] == '-' && (a[1] == 'L' || a[1] == 'D' || a[1] == 'P') && '0' <= a[2] && a[2] <= '9' {
			out = append(out, a[:2], a[2:])
			continue
		}
		out = append(out, a)
	}
	return out
}

// badValue is how package flag says a built-in value did not parse.
var badValue = regexp.MustCompile(`^invalid value "(.*)" for flag -([A-Za-z0-9-]+): (.*)$`)

// explain replaces flag's "parse error" with the form the flag wants.
func explain(fs *flag.FlagSet, err error) error {
	if m := undefinedFlag.FindStringSubmatch(err.Error()); m != nil {
		return fmt.Errorf("unknown flag %s", dashes(m[1]))
	}
	if m := missingValue.FindStringSubmatch(err.Error()); m != nil {
		return fmt.Errorf("flag %s needs a value", dashes(m[1]))
	}
	m := badValue.FindStringSubmatch(err.Error())
	if m == nil {
		return err
	}
	f := fs.Lookup(m[2])
	if f == nil {
		return err
	}
	g, ok := f.Value.(flag.Getter)
	if !ok || m[3] != "parse error" && m[3] != "value out of range" {
		// a flag of ours (ports, states, ...): its own message says
		// what it wants
		return fmt.Errorf("invalid value %q for %s: %s", m[1], dashes(m[2]), m[3])
	}
	var want string
	switch g.Get().(type) {
	case time.Duration:
		want = "want a duration with a unit, such as 30s, 5m or 1h30m"
	case int, uint, int64, uint64:
		want = "want a whole number, such as 10"
	case float64:
		want = "want a number, such as 12.5"
	case bool:
		want = "want true or false"
	default:
		return err
	}
	if m[3] == "value out of range" {
		want = "out of range: " + want
	}
	return fmt.Errorf("invalid value %q for %s: %s", m[1], dashes(m[2]), want)
}

// package flag's wording of an unknown flag and of one without its value
var (
	undefinedFlag = regexp.MustCompile(`^flag provided but not defined: -+(\S+)$`)
	missingValue  = regexp.MustCompile(`^flag needs an argument: -+(\S+)$`)
)

// dashes spells a flag as the help does: -L, --lport.
func dashes(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
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
	coarseSleeps()
	tightHeap()
	name := "trace"
	if len(args) > 0 && (args[0] == "--version" || args[0] == "-version" || args[0] == "version") {
		fmt.Fprintln(stdout, version())
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
		return usageError{fmt.Errorf("unknown command %q", name)}
	}
	err := cmd(ctx, args, stdout, stderr)
	if name != "trace" && err != nil {
		err = commandError{name, err}
	}
	return err
}

// version says which build this is: the module's version, the commit and
// whether the tree had changes, and the Go release, from the build info.
func version() string {
	v, commit, dirty := "(devel)", "", false
	goVersion := runtime.Version()
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			v = bi.Main.Version
		}
		goVersion = bi.GoVersion
		for _, st := range bi.Settings {
			switch st.Key {
			case "vcs.revision":
				commit = st.Value
			case "vcs.modified":
				dirty = st.Value == "true"
			}
		}
	}
	s := "tcptrace " + v
	if commit != "" {
		if len(commit) > 12 {
			commit = commit[:12]
		}
		s += " commit " + commit
		if dirty {
			s += " (modified)"
		}
	}
	return s + " " + goVersion
}

// traceConfig is what the trace command's flags say.
type traceConfig struct {
	common
	json bool
	wide bool
}

func parseTrace(args []string, stderr io.Writer) (*traceConfig, error) {
	c := &traceConfig{}
	fs := flag.NewFlagSet("trace", flag.ContinueOnError)
	c.register(fs)
	fs.BoolVar(&c.json, "json", false, "")
	for _, n := range []string{"w", "wide"} {
		fs.BoolVar(&c.wide, n, false, "")
	}
	if err := parseFlags(fs, args, usage, stderr); err != nil {
		return nil, err
	}
	if err := c.check(); err != nil {
		return nil, usageError{err}
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
	st, err := trace(ctx, &c.common, stderr, hooks{}, out)
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
	if traced(err) {
		fmt.Fprintln(stderr, summary)
	}
	return err
}

// hooks are what a command adds to the stream besides its consumers.
type hooks struct {
	onStats func(stream.Stats)
	every   time.Duration
	// onAttach runs once the programs are attached, with what this
	// kernel offers them
	onAttach func([]loader.Feature)
	// onSeed gets the holders of the sockets open when tracing began
	onSeed func([]events.Holder)
}

// trace loads and attaches the tracer with the shared flags and streams
// to the consumers until ctx ends or a limit is reached.
func trace(ctx context.Context, c *common, stderr io.Writer, h hooks, consumers ...stream.Consumer) (stream.Stats, error) {
	f, err := c.filter()
	if err != nil {
		return stream.Stats{}, setupError{usageError{err}}
	}
	if c.utc {
		// text shows local time, as ss and tcpstates do, read from
		// time.Local where it is written; JSON is UTC anyway
		time.Local = time.UTC
	}
	tr, err := loader.Load(loader.Options{RingSize: int(c.ringSize), Filter: f.Kernel()})
	if err != nil {
		return stream.Stats{}, setupError{err}
	}
	defer tr.Close()
	if err := tr.Attach(); err != nil {
		return stream.Stats{}, setupError{err}
	}
	// what this kernel lacks, once, with what is done instead
	for _, f := range tr.Features() {
		if !f.Has {
			fmt.Fprintf(stderr, "tcptrace: warning: %s\n", f.Warning())
		}
	}
	if h.onAttach != nil {
		h.onAttach(tr.Features())
	}
	// sockets older than the tracer: their owners from the start
	seed, err := tr.Holders()
	if err != nil {
		fmt.Fprintf(stderr, "tcptrace: warning: %v: sockets opened before tcptrace have no owner until a system call on them\n", err)
	}
	if c.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.duration)
		defer cancel()
	}
	return stream.Run(ctx, stream.Config{
		Source:     tr,
		Sockets:    sockets.Options{NoNotes: !tr.SendNotes()},
		Consumers:  consumers,
		Filter:     f,
		Count:      c.count,
		Warn:       func(msg string) { fmt.Fprintf(stderr, "tcptrace: warning: %s\n", msg) },
		Follow:     timewait.Options{Max: c.twMax},
		Seed:       seed,
		OnSeed:     h.onSeed,
		OnStats:    h.onStats,
		StatsEvery: h.every,
	})
}

// portList is a repeatable, comma-separated list of ports.
type portList []uint16

func (p *portList) String() string { return fmt.Sprint(*p) }
func (p *portList) Set(s string) error {
	return appendNumbers((*[]uint16)(p), s, 16, "port %q: want a number from 1 to 65535")
}

type pidList []uint32

func (p *pidList) String() string { return fmt.Sprint(*p) }
func (p *pidList) Set(s string) error {
	return appendNumbers((*[]uint32)(p), s, 32, "pid %q: want a positive number")
}

// appendNumbers appends the comma-separated positive numbers of s, each
// fitting in bits, to list; bad says what is wrong with one that does not.
func appendNumbers[T uint16 | uint32](list *[]T, s string, bits int, bad string) error {
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.ParseUint(strings.TrimSpace(f), 10, bits)
		if err != nil || n == 0 {
			return fmt.Errorf(bad, f)
		}
		*list = append(*list, T(n))
	}
	return nil
}

type stateList []events.State

func (l *stateList) String() string { return fmt.Sprint(*l) }
func (l *stateList) Set(s string) error {
	for _, f := range strings.Split(s, ",") {
		st, ok := events.ParseState(strings.TrimSpace(f))
		if !ok {
			return fmt.Errorf("state %q: want one of %s", f, strings.Join(events.StateNames(), ", "))
		}
		*l = append(*l, st)
	}
	return nil
}

// byteSize reads 4096, 64K, 8M, 1G.
type byteSize int

func (b *byteSize) String() string { return strconv.Itoa(int(*b)) }
func (b *byteSize) Set(s string) error {
	mult := 1
	num := strings.TrimSpace(s)
	if n := len(num); n > 0 {
		switch num[n-1] {
		case 'k', 'K':
			mult, num = 1<<10, num[:n-1]
		case 'm', 'M':
			mult, num = 1<<20, num[:n-1]
		case 'g', 'G':
			mult, num = 1<<30, num[:n-1]
		}
	}
	v, err := strconv.Atoi(num)
	if err != nil || v <= 0 || v > (1<<30)/mult {
		return fmt.Errorf("size %q: want bytes such as 8M", s)
	}
	*b = byteSize(v * mult)
	return nil
}
