package top

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/aggregate"
	"github.com/tcptrace/tcptrace/events"
)

func snapshot(t *testing.T) Snapshot {
	a := aggregate.New(0, time.Unix(100, 0))
	write := func(pid uint32, comm string, peer string, old, new events.State, cause events.Cause) {
		e := &events.Event{Kind: events.Transition, Sock: uint64(pid), PID: pid, Family: 4, Old: old, New: new, Cause: cause,
			RAddr: netip.MustParseAddr(peer)}
		copy(e.Comm[:], comm)
		a.Write(e)
	}
	for range 4 {
		write(10, "curl", "10.0.0.1", events.Close, events.SynSent, 0)
	}
	write(20, "app", "10.0.0.2", events.Established, events.CloseWait, 0)
	write(20, "app", "10.0.0.2", events.Established, events.CloseWait, 0)
	write(30, "db", "10.0.0.3", events.Established, events.Close, events.CauseResetReceived)
	write(40, "wget", "10.0.0.4", events.SynSent, events.Close, events.CauseRefused)
	return Take(a, time.Unix(102, 0), 0)
}

// Each sort puts its column's leader first; CLOSE_WAIT held is a gauge
// that carries over intervals.
func TestSorts(t *testing.T) {
	s := snapshot(t)
	rows := processRows(&s)
	for sort, want := range map[Sort]string{ByNew: "10 curl", ByCloseWait: "20 app", ByResets: "30 db", ByRefused: "40 wget"} {
		slices.SortFunc(rows, sort.less)
		if rows[0].name != want {
			t.Errorf("by %s: %s first, want %s", sort, rows[0].name, want)
		}
	}
	if s.CloseWaits[aggregate.Process{PID: 20, Comm: "app"}] != 2 {
		t.Errorf("held %v", s.CloseWaits)
	}
}

// Without a terminal: one line with the rates over the interval (2 s),
// the sockets per state and the top process.
func TestPlain(t *testing.T) {
	s := snapshot(t)
	var b strings.Builder
	if err := Plain(&b, &s, ByNew); err != nil {
		t.Fatal(err)
	}
	line := b.String()
	for _, want := range []string{"transitions/s 4", "resets/s 0.5", "CLOSE_WAIT 2", "top process 10 curl: 4 new"} {
		if !strings.Contains(line, want) {
			t.Errorf("%q lacks %q", line, want)
		}
	}
	if strings.Count(line, "\n") != 1 {
		t.Errorf("not one line: %q", line)
	}
	b.Reset()
	if err := Plain(&b, &s, ByRefused); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "top process 40 wget: 0 new, 0 CLOSE_WAIT held, 0 TIME_WAIT, 0 resets, 1 refused") {
		t.Errorf("by refused: %q", b.String())
	}
}

// --sort takes each key, and refuses others with the list.
func TestParseSort(t *testing.T) {
	for i, k := range SortKeys {
		if s, err := ParseSort(k); err != nil || s != Sort(i) {
			t.Errorf("%s: %v, %v", k, s, err)
		}
	}
	if _, err := ParseSort("cpu"); err == nil || !strings.Contains(err.Error(), "want one of new, close-wait, time-wait, resets, refused") {
		t.Errorf("cpu: %v", err)
	}
}
