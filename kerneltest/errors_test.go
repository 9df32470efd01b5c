package kerneltest

import (
	"bytes"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Bad input and a start that cannot succeed, over the binary: each gives
// exactly one line on stderr, "tcptrace: " and what is wrong, nothing on
// stdout (no exit summary), and a non-zero exit, at once.
func TestErrorsOneLine(t *testing.T) {
	t.Parallel()
	bin := tcptraceBinary(t)
	public := publicBinaries(t)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--duration", "5"}, 2, `invalid value "5" for --duration: want a duration with a unit, such as 30s`},
		{[]string{"closewait", "--threshold", "abc"}, 2, `invalid value "abc" for --threshold: want a duration with a unit`},
		{[]string{"stats", "--top", "x"}, 2, `invalid value "x" for --top: want a whole number, such as 10 (see tcptrace stats --help)`},
		{[]string{"--state", "bogus"}, 2, `invalid value "bogus" for --state: state "bogus": want one of ESTABLISHED`},
		{[]string{"-L", "70000"}, 2, `invalid value "70000" for -L: port "70000": want a number from 1 to 65535`},
		{[]string{"-P", "http"}, 2, `invalid value "http" for -P: port "http"`},
		{[]string{"life", "--bogus"}, 2, "unknown flag --bogus (see tcptrace life --help)"},
		{[]string{"graph", "--conn"}, 2, "flag --conn needs a value (see tcptrace graph --help)"},
		{[]string{"bogus"}, 2, `unknown command "bogus"`},
		{[]string{"--netns", "/run/netns/tcptrace-nope"}, 2, `network namespace "/run/netns/tcptrace-nope": no such file or directory`},
		{[]string{"--netns", "/etc/passwd"}, 2, `network namespace "/etc/passwd": not a namespace file`},
		{[]string{"--netns", "12345"}, 2, "network namespace 12345: no process and no /run/netns entry is in it"},
		{[]string{"--netns", "tcptrace-nope"}, 2, `network namespace "tcptrace-nope": no /run/netns/tcptrace-nope (ip netns list shows the names`},
		{[]string{"--ring-size", "3"}, 2, "--ring-size 3: must be a power of two"},
		{[]string{"agent", "--listen", "999.1.1.1:1"}, 1, "listen on 999.1.1.1:1"},
		// unprivileged (nobody): refused at load, before any output
		{[]string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", public, "--duration", "1s"}, 1,
			"needs root, or CAP_BPF and CAP_PERFMON"},
		{[]string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", public, "agent", "--listen", "127.0.0.1:0"}, 1,
			"needs root, or CAP_BPF and CAP_PERFMON"},
	} {
		argv := append([]string{bin}, tc.args...)
		if tc.args[0] == "setpriv" {
			argv = tc.args
		}
		cmd := exec.Command(argv[0], argv[1:]...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		start := time.Now()
		err := cmd.Run()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != tc.code {
			t.Errorf("%v: %v, want exit code %d", tc.args, err, tc.code)
		}
		lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n")
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "tcptrace: ") || !strings.Contains(lines[0], tc.want) || stdout.Len() != 0 {
			t.Errorf("%v: stderr %q, stdout %q; want one line with %q and no stdout", tc.args, stderr.String(), stdout.String(), tc.want)
		}
		if took := time.Since(start); took > 20*time.Second {
			t.Errorf("%v: took %v", tc.args, took)
		}
	}
}
