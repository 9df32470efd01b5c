package kerneltest

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

// One time rule: text shows local time, as ss and tcpstates do; --utc
// makes it UTC; JSON is UTC, RFC 3339. Checked under TZ set to a zone
// hours away from UTC, on the header of stats, closewait and timewait,
// each within 5 s of the clock.
func TestTimeRule(t *testing.T) {
	t.Parallel()
	requireBPF(t)
	ns := newNetns(t)
	zone, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(tcptraceBinary(t), append(args, "--netns", ns.path, "--duration", "1s")...)
		cmd.Env = append(cmd.Environ(), "TZ=America/New_York")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("tcptrace %v: %v", args, err)
		}
		return string(out)
	}
	// near says whether s begins with the clock's time in loc, as
	// HH:MM:SS, give or take 5 s
	near := func(s string, loc *time.Location) bool {
		now := time.Now().In(loc)
		for d := -5; d <= 5; d++ {
			if strings.HasPrefix(s, now.Add(time.Duration(d)*time.Second).Format("15:04:05")) {
				return true
			}
		}
		return false
	}
	for _, cmd := range [][]string{{"stats"}, {"closewait", "--once"}, {"timewait", "--once"}} {
		if out := run(cmd...); !near(out, zone) {
			t.Errorf("%v: %q, want local time (New York) first", cmd, firstLine(out))
		}
		if out := run(append(cmd, "--utc")...); !near(out, time.UTC) {
			t.Errorf("%v --utc: %q, want UTC first", cmd, firstLine(out))
		}
		out := run(append(cmd, "--json")...)
		v := decodeLast[struct {
			Time time.Time `json:"time"`
			End  time.Time `json:"end"`
		}](t, out)
		at := v.Time
		if at.IsZero() {
			at = v.End
		}
		if _, off := at.Zone(); off != 0 || time.Since(at).Abs() > 5*time.Second || !strings.Contains(out, "Z\"") {
			t.Errorf("%v --json: %q, want RFC 3339 UTC", cmd, firstLine(out))
		}
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
