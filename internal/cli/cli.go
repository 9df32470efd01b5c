// Package cli is what tcptrace's commands share, and tcptrace-agent with
// them: the filter and limit flags and what they say, loading and
// running a trace with its consumers, flag errors that say what is
// wanted, one-line errors and exit codes, the version, the count of
// sockets per state from dumps, the process's runtime settings.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/tcptrace/tcptrace/cgroups"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/filter"
	"github.com/tcptrace/tcptrace/loader"
	"github.com/tcptrace/tcptrace/sockdiag"
	"github.com/tcptrace/tcptrace/sockets"
	"github.com/tcptrace/tcptrace/stream"
	"github.com/tcptrace/tcptrace/timewait"
)

// UsageError is bad input: said with a pointer to the help, exit 2.
type UsageError struct{ error }

// Usage marks err as bad input.
func Usage(err error) error { return UsageError{err} }

func (e UsageError) Unwrap() error { return e.error }

// CommandError is an error of a subcommand's, whose help lists its flags.
type CommandError struct {
	Name string
	error
}

func (e CommandError) Unwrap() error { return e.error }

// InCommand says err is command name's.
func InCommand(name string, err error) error {
	if err == nil {
		return nil
	}
	return CommandError{name, err}
}

// SetupError is a failure before tracing began (a bad filter, a kernel
// that refuses the program): said alone, with no "0 events" summary
// before it.
type SetupError struct{ error }

func (e SetupError) Unwrap() error { return e.error }

// SayEnd prints the line that ends a trace: how many events, how many lost.
func SayEnd(stderr io.Writer, st stream.Stats, err error) {
	if Traced(err) {
		fmt.Fprintf(stderr, "tcptrace: %d events, %d lost\n", st.Events, st.Lost)
	}
}

// Traced tells whether err leaves a trace to summarize.
func Traced(err error) bool {
	var s SetupError
	return !errors.As(err, &s)
}

// Exit ends the process for err, as run returned it: nothing for help, one
// line and status 2 for bad input (pointing at the command's help), one
// line and status 1 for any other failure.
func Exit(err error) {
	var uerr UsageError
	var cerr CommandError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
	case errors.As(err, &cerr) && errors.As(err, &uerr):
		fmt.Fprintf(os.Stderr, "tcptrace: %v (see tcptrace %s --help)\n", uerr, cerr.Name)
		os.Exit(2)
	case errors.As(err, &uerr):
		fmt.Fprintf(os.Stderr, "tcptrace: %v (see tcptrace --help)\n", err)
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "tcptrace: %v\n", err)
		os.Exit(1)
	}
}

// Profile writes a CPU profile of the whole run to the file that
// TCPTRACE_CPUPROFILE names, for `go tool pprof`: how the overhead work
// finds where user space spends its time.
func Profile() (stop func()) {
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

// Common holds the flags every command shares: the filter and the limits.
type Common struct {
	ipv4   bool
	ipv6   bool
	lports portList
	rports portList
	ports  portList
	cgroup string
	utc    bool
	// NotPIDs: processes whose sockets are left out (the agent's own)
	NotPIDs  []uint32
	pids     pidList
	comm     string
	netns    string
	states   stateList
	duration time.Duration
	count    uint64
	ringSize byteSize
	twMax    int
}

// Register adds the shared flags to fs.
func (c *Common) Register(fs *flag.FlagSet) {
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

// Check says what is wrong with the shared flags, once parsed.
func (c *Common) Check() error {
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

// Duration is --duration: 0 for none.
func (c *Common) Duration() time.Duration { return c.duration }

// Count is --count: 0 for none.
func (c *Common) Count() uint64 { return c.count }

// Filter is what the filter flags say.
func (c *Common) Filter() (filter.Filter, error) {
	f := filter.Filter{States: c.states, PIDs: c.pids, Comm: c.comm, LPorts: c.lports, RPorts: c.rports, Ports: c.ports, NotPIDs: c.NotPIDs}
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

// ParseFlags parses a command's flags; help is that command's usage.
func ParseFlags(fs *flag.FlagSet, args []string, help string, stderr io.Writer) error {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(splitShort(args)); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stderr, help)
			return err
		}
		return UsageError{explain(fs, err)}
	}
	if fs.NArg() > 0 {
		return UsageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
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

// Build is this binary's build, from the build info: the module's
// version, the commit (with "-modified" when the tree had changes), the
// Go release.
func Build() (version, revision, goVersion string) {
	version, goVersion = "(devel)", runtime.Version()
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return
	}
	if bi.Main.Version != "" {
		version = bi.Main.Version
	}
	goVersion = bi.GoVersion
	dirty := false
	for _, st := range bi.Settings {
		switch st.Key {
		case "vcs.revision":
			revision = st.Value
		case "vcs.modified":
			dirty = st.Value == "true"
		}
	}
	if revision != "" && dirty {
		revision += "-modified"
	}
	return
}

// Version says which build this is, for --version.
func Version() string {
	v, rev, goVersion := Build()
	s := "tcptrace " + v
	if rev != "" {
		commit, modified := strings.CutSuffix(rev, "-modified")
		if len(commit) > 12 {
			commit = commit[:12]
		}
		s += " commit " + commit
		if modified {
			s += " (modified)"
		}
	}
	return s + " " + goVersion
}

// Hooks are what a command adds to the stream besides its consumers.
type Hooks struct {
	OnStats func(stream.Stats)
	Every   time.Duration
	// OnAttach runs once the programs are attached, with what this
	// kernel offers them
	OnAttach func([]loader.Feature)
	// OnSeed gets the holders of the sockets open when tracing began
	OnSeed func([]events.Holder)
}

// Trace loads and attaches the tracer with the shared flags and streams
// to the consumers until ctx ends or a limit is reached.
func Trace(ctx context.Context, c *Common, stderr io.Writer, h Hooks, consumers ...stream.Consumer) (stream.Stats, error) {
	f, err := c.Filter()
	if err != nil {
		return stream.Stats{}, SetupError{UsageError{err}}
	}
	if c.utc {
		// text shows local time, as ss and tcpstates do, read from
		// time.Local where it is written; JSON is UTC anyway
		time.Local = time.UTC
	}
	tr, err := loader.Load(loader.Options{RingSize: int(c.ringSize), Filter: f.Kernel()})
	if err != nil {
		return stream.Stats{}, SetupError{err}
	}
	defer tr.Close()
	if err := tr.Attach(); err != nil {
		return stream.Stats{}, SetupError{err}
	}
	// what this kernel lacks, once, with what is done instead
	for _, f := range tr.Features() {
		if !f.Has {
			fmt.Fprintf(stderr, "tcptrace: warning: %s\n", f.Warning())
		}
	}
	if h.OnAttach != nil {
		h.OnAttach(tr.Features())
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
		OnSeed:     h.OnSeed,
		OnStats:    h.OnStats,
		StatsEvery: h.Every,
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
