package output

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
)

func event(family events.Family, old, new events.State, cause events.Cause, dwell time.Duration, comm string) *events.Event {
	e := &events.Event{
		Time: time.Date(2026, 11, 21, 5, 12, 33, 402117123, time.UTC),
		Sock: 0x1a2b, PID: 4242, Netns: 4026531840, Cgroup: 77, Family: family,
		LAddr: netip.MustParseAddr("127.0.0.1"), RAddr: netip.MustParseAddr("127.0.0.1"),
		LPort: 43210, RPort: 8080, Old: old, New: new, Cause: cause,
		Dwell: dwell, DwellKnown: dwell >= 0,
	}
	if dwell < 0 {
		e.Dwell = 0
	}
	if family == 6 {
		e.LAddr, e.RAddr = netip.MustParseAddr("::1"), netip.MustParseAddr("2001:db8::20")
	}
	copy(e.Comm[:], comm)
	return e
}

func TestJSON(t *testing.T) {
	for _, tc := range []struct {
		e    *events.Event
		want string
	}{
		{event(4, events.SynSent, events.Established, 0, 52311*time.Nanosecond, "curl"),
			`{"time":"2026-11-21T05:12:33.402117123Z","sock":"1a2b","pid":4242,"comm":"curl","family":"ipv4","laddr":"127.0.0.1","lport":43210,"raddr":"127.0.0.1","rport":8080,"old":"SYN_SENT","new":"ESTABLISHED","dwell_ms":0.052311,"netns":4026531840,"cgroup":77}`},
		{event(6, events.LastAck, events.Close, events.CauseClosed, 300*time.Millisecond+5, ""),
			`{"time":"2026-11-21T05:12:33.402117123Z","sock":"1a2b","pid":4242,"comm":"","family":"ipv6","laddr":"::1","lport":43210,"raddr":"2001:db8::20","rport":8080,"old":"LAST_ACK","new":"CLOSE","dwell_ms":300.000005,"cause":"reset_received","netns":4026531840,"cgroup":77}`},
		{event(4, events.Close, events.SynSent, 0, -1, "a\"b\\c\x01\xff"),
			`{"time":"2026-11-21T05:12:33.402117123Z","sock":"1a2b","pid":4242,"comm":"a\"b\\c\u0001\ufffd","family":"ipv4","laddr":"127.0.0.1","lport":43210,"raddr":"127.0.0.1","rport":8080,"old":"CLOSE","new":"SYN_SENT","dwell_ms":null,"netns":4026531840,"cgroup":77}`},
	} {
		if tc.e.New == events.Close {
			tc.e.Cause = events.CauseResetReceived
		}
		var buf bytes.Buffer
		w := NewJSON(&buf)
		if err := w.Write(tc.e); err != nil {
			t.Fatal(err)
		}
		w.Flush()
		got := strings.TrimSuffix(buf.String(), "\n")
		if got != tc.want {
			t.Errorf("JSON\n got  %s\n want %s", got, tc.want)
		}
		var m map[string]any
		if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
			t.Errorf("not JSON: %v", err)
		}
		keys := []string{"time", "sock", "pid", "comm", "family", "laddr", "lport", "raddr", "rport", "old", "new", "dwell_ms", "netns", "cgroup"}
		if tc.e.New == events.Close {
			keys = append(keys, "cause")
		}
		var got2 []string
		for k := range m {
			got2 = append(got2, k)
		}
		slices.Sort(keys)
		slices.Sort(got2)
		if !slices.Equal(keys, got2) {
			t.Errorf("keys %v, want %v", got2, keys)
		}
	}
}

// The default fits IPv4 traffic in 120 columns, even with the longest
// cause; an address too long for the columns widens them, with the header
// again; --wide starts wide.
func TestText(t *testing.T) {
	long := event(4, events.Established, events.Close, events.CauseResetReceived, 90*time.Second, "nginx")
	long.LAddr, long.RAddr = netip.MustParseAddr("192.168.100.200"), netip.MustParseAddr("10.0.0.1")
	for _, tc := range []struct {
		name string
		wide bool
		evs  []*events.Event
		want []string
	}{
		{"ipv4", false, []*events.Event{
			event(4, events.Close, events.SynSent, 0, -1, "curl"),
			event(4, events.SynSent, events.Established, 0, 52*time.Microsecond, "curl"),
			event(4, events.FinWait2, events.TimeWait, 0, 300*time.Millisecond+123*time.Microsecond, "curl"),
			event(4, events.TimeWait, events.Close, events.CauseClosed, 61*time.Second, ""),
			event(4, events.Established, events.Close, events.CauseResetReceived, 10*time.Minute, "abcdefghijklmno"),
		}, []string{
			"TIME            PID    COMM            LADDR:LPORT     RADDR:RPORT     OLD         -> NEW         DWELL   CAUSE",
			"05:12:33.402117 4242   curl            127.0.0.1:43210 127.0.0.1:8080  CLOSE       -> SYN_SENT    -       -",
			"05:12:33.402117 4242   curl            127.0.0.1:43210 127.0.0.1:8080  SYN_SENT    -> ESTABLISHED 52us    -",
			"05:12:33.402117 4242   curl            127.0.0.1:43210 127.0.0.1:8080  FIN_WAIT2   -> TIME_WAIT   300.1ms -",
			"05:12:33.402117 4242   -               127.0.0.1:43210 127.0.0.1:8080  TIME_WAIT   -> CLOSE       1m1.0s  closed",
			"05:12:33.402117 4242   abcdefghijklmno 127.0.0.1:43210 127.0.0.1:8080  ESTABLISHED -> CLOSE       10m0.0s reset_received",
		}},
		{"widens", false, []*events.Event{
			event(4, events.Close, events.SynSent, 0, -1, "curl"),
			long,
			event(4, events.Close, events.SynSent, 0, -1, "curl"),
		}, []string{
			"TIME            PID    COMM            LADDR:LPORT     RADDR:RPORT     OLD         -> NEW         DWELL   CAUSE",
			"05:12:33.402117 4242   curl            127.0.0.1:43210 127.0.0.1:8080  CLOSE       -> SYN_SENT    -       -",
			"TIME            PID    COMM            LADDR:LPORT           RADDR:RPORT           OLD         -> NEW         DWELL   CAUSE",
			"05:12:33.402117 4242   nginx           192.168.100.200:43210 10.0.0.1:8080         ESTABLISHED -> CLOSE       1m30.0s reset_received",
			"05:12:33.402117 4242   curl            127.0.0.1:43210       127.0.0.1:8080        CLOSE       -> SYN_SENT    -       -",
		}},
		{"wide", true, []*events.Event{
			event(6, events.Listen, events.Close, events.CauseClosed, 4200*time.Millisecond, "nginx"),
		}, []string{
			"TIME            PID    COMM            LADDR:LPORT                                     RADDR:RPORT                                     OLD         -> NEW         DWELL   CAUSE",
			"05:12:33.402117 4242   nginx           [::1]:43210                                     [2001:db8::20]:8080                             LISTEN      -> CLOSE       4.20s   closed",
		}},
	} {
		var buf bytes.Buffer
		w := NewText(&buf, tc.wide)
		for _, e := range tc.evs {
			if err := w.Write(e); err != nil {
				t.Fatal(err)
			}
		}
		w.Flush()
		got := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
		for _, l := range got {
			if !tc.wide && tc.name == "ipv4" && len(l) > 120 {
				t.Errorf("%d columns: %s", len(l), l)
			}
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: got\n%s\nwant\n%s", tc.name, strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
		}
	}
}

func TestDwellUnits(t *testing.T) {
	for d, want := range map[time.Duration]string{
		812: "812ns", 52 * time.Microsecond: "52us", 1500 * time.Microsecond: "1.5ms",
		4200 * time.Millisecond: "4.20s", 61500 * time.Millisecond: "1m1.5s", 0: "0ns",
	} {
		if got := string(appendDwell(nil, d)); got != want {
			t.Errorf("%v: %q, want %q", d, got, want)
		}
	}
}

func TestWritersDoNotAllocate(t *testing.T) {
	e := event(6, events.LastAck, events.Close, events.CauseClosed, 300*time.Millisecond, "nginx")
	for name, w := range map[string]Writer{"json": NewJSON(io.Discard), "text": NewText(io.Discard, false)} {
		w.Write(e) // the text header, once
		if n := testing.AllocsPerRun(100, func() { _ = w.Write(e) }); n != 0 {
			t.Errorf("%s: %v allocations per event", name, n)
		}
	}
}

func benchmarkWriter(b *testing.B, w Writer) {
	e := event(4, events.SynSent, events.Established, 0, 52*time.Microsecond, "curl")
	b.ReportAllocs()
	for b.Loop() {
		if err := w.Write(e); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkJSON(b *testing.B) { benchmarkWriter(b, NewJSON(io.Discard)) }
func BenchmarkText(b *testing.B) { benchmarkWriter(b, NewText(io.Discard, false)) }

// The per-event work of `tcptrace --json`: decode a kernel record, write a line.
func BenchmarkDecodeJSON(b *testing.B) {
	rec := make([]byte, events.RecordSize)
	src := event(4, events.SynSent, events.Established, 0, 52*time.Microsecond, "curl")
	src.Kind = events.Transition
	src.Encode(rec)
	w := NewJSON(io.Discard)
	var e events.Event
	b.ReportAllocs()
	for b.Loop() {
		if err := e.Decode(rec); err != nil {
			b.Fatal(err)
		}
		e.Time = src.Time
		if err := w.Write(&e); err != nil {
			b.Fatal(err)
		}
	}
}

// appendPadded against fmt for every width it is used with, across digit
// counts and the edges of each two-digit step.
func TestAppendPadded(t *testing.T) {
	vals := []uint64{0, 1, 9, 10, 11, 99, 100, 101, 999, 1000, 123456, 999999999, 1000000000, 1<<64 - 1}
	for _, v := range vals {
		for _, w := range []int{1, 2, 6, 9, 20} {
			want := fmt.Sprintf("%0*d", w, v)
			if got := string(appendPadded([]byte("x"), v, w)); got != "x"+want {
				t.Errorf("appendPadded(%d, %d) = %q, want %q", v, w, got, "x"+want)
			}
		}
	}
}
