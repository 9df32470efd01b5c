package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"runtime/debug"
	"slices"
	"strings"
	"testing"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/cli"
)

func TestParse(t *testing.T) {
	c, err := parseTrace([]string{"--json", "-w", "-4", "-L80,443", "--lport", "8080", "-D", "5432",
		"--pid", "1,2", "--comm", "nginx", "--state", "time_wait,CLOSE_WAIT", "--count", "5",
		"--duration", "30s", "--ring-size", "32M", "--tw-max", "10"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	f, err := c.Filter()
	if err != nil {
		t.Fatal(err)
	}
	if !c.json || !c.wide || f.Family != 4 || !slices.Equal(f.LPorts, []uint16{80, 443, 8080}) || !slices.Equal(f.RPorts, []uint16{5432}) ||
		!slices.Equal(f.PIDs, []uint32{1, 2}) || f.Comm != "nginx" ||
		!slices.Equal(f.States, []events.State{events.TimeWait, events.CloseWait}) ||
		c.Count() != 5 || c.Duration().String() != "30s" {
		t.Errorf("parsed %+v, filter %+v", c, f)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-4", "-6"}, "exclude each other"},
		{[]string{"-L", "0"}, "want a number from 1 to 65535"},
		{[]string{"-D", "70000"}, "want a number from 1 to 65535"},
		{[]string{"--pid", "x"}, "want a positive number"},
		{[]string{"--state", "FOO"}, "want one of ESTABLISHED"},
		{[]string{"--ring-size", "3M"}, "power of two"},
		{[]string{"--ring-size", "lots"}, "want bytes such as 8M"},
		{[]string{"--tw-max", "0"}, "at least 1"},
		{[]string{"--duration", "-1s"}, "must be positive"},
		{[]string{"--duration", "5"}, `invalid value "5" for --duration: want a duration with a unit, such as 30s`},
		{[]string{"--count", "many"}, `invalid value "many" for --count: want a whole number`},
		{[]string{"stray"}, `unexpected argument "stray"`},
		{[]string{"--nope"}, "unknown flag --nope"},
	} {
		_, err := parseTrace(tc.args, io.Discard)
		var uerr cli.UsageError
		if !errors.As(err, &uerr) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want a usage error containing %q", tc.args, err, tc.want)
		}
	}
}

// A first argument that is not a flag names a command; flags alone are
// trace, as before there were commands.
func TestCommands(t *testing.T) {
	err := run(context.Background(), []string{"bogus", "-4"}, io.Discard, io.Discard)
	var uerr cli.UsageError
	if !errors.As(err, &uerr) || !strings.Contains(err.Error(), `unknown command "bogus"`) {
		t.Errorf("bogus: %v", err)
	}
	for _, args := range [][]string{{"-4", "-6"}, {"trace", "-4", "-6"}} {
		if err := run(context.Background(), args, io.Discard, io.Discard); !errors.As(err, &uerr) || !strings.Contains(err.Error(), "exclude") {
			t.Errorf("%v: %v, want trace's usage error", args, err)
		}
	}
	var out strings.Builder
	if err := run(context.Background(), []string{"help"}, io.Discard, &out); !errors.Is(err, flag.ErrHelp) || !strings.HasPrefix(out.String(), "Usage: tcptrace") {
		t.Errorf("help: %v, %q", err, out.String())
	}
	out.Reset()
	if err := run(context.Background(), []string{"help", "stats"}, io.Discard, &out); !errors.Is(err, flag.ErrHelp) ||
		!strings.HasPrefix(out.String(), "Usage: tcptrace stats") {
		t.Errorf("help stats: %v, %q", err, out.String())
	}
	// a subcommand's usage error points at its own help
	err = run(context.Background(), []string{"stats", "--interval", "x"}, io.Discard, io.Discard)
	var cerr cli.CommandError
	if !errors.As(err, &cerr) || cerr.Name != "stats" || !errors.As(err, &uerr) {
		t.Errorf("stats --interval x: %v, want a usage error of stats", err)
	}
	out.Reset()
	if err := run(context.Background(), []string{"--version"}, &out, io.Discard); err != nil ||
		!strings.HasPrefix(out.String(), "tcptrace ") || !strings.Contains(out.String(), " go1.") {
		t.Errorf("--version: %v, %q", err, out.String())
	}
}

func TestHelp(t *testing.T) {
	var out strings.Builder
	_, err := parseTrace([]string{"--help"}, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err %v", err)
	}
	// every flag is explained, with an example in its own block
	lines := strings.Split(out.String(), "\n")
	for _, f := range []string{"--json", "-w, --wide", "-4, -6", "-L, --lport", "-D, --rport", "--pid", "--comm", "--netns",
		"--state", "--duration", "--count", "--ring-size", "--tw-max"} {
		start := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "  "+f) })
		if start < 0 {
			t.Errorf("--help does not explain %s", f)
			continue
		}
		example := false
		for _, l := range lines[start+1:] {
			if strings.HasPrefix(l, "  -") || l == "" {
				break // the next flag, or the end of the section
			}
			example = example || strings.HasPrefix(strings.TrimSpace(l), "tcptrace -")
		}
		if !example {
			t.Errorf("--help has no example for %s", f)
		}
	}
}

// Two builds differ by module version, commit, tree state or Go release;
// nothing else in the build info makes them another build.
func TestBuildID(t *testing.T) {
	a := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.0.0"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc"}, {Key: "vcs.modified", Value: "false"}, {Key: "-tags", Value: "x"}}}
	b := *a
	b.Settings = []debug.BuildSetting{{Key: "vcs.revision", Value: "abc"}, {Key: "vcs.modified", Value: "false"}}
	if buildID(a) != buildID(&b) {
		t.Errorf("%q != %q", buildID(a), buildID(&b))
	}
	c := b
	c.Settings = []debug.BuildSetting{{Key: "vcs.revision", Value: "abd"}, {Key: "vcs.modified", Value: "false"}}
	d := b
	d.GoVersion = "go1.27"
	for _, other := range []*debug.BuildInfo{&c, &d} {
		if buildID(a) == buildID(other) {
			t.Errorf("%q is %q", buildID(a), buildID(other))
		}
	}
}
