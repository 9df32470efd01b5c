package events

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestStateString(t *testing.T) {
	for s, want := range map[State]string{
		Established: "ESTABLISHED", SynSent: "SYN_SENT", SynRecv: "SYN_RECV",
		FinWait1: "FIN_WAIT1", FinWait2: "FIN_WAIT2", TimeWait: "TIME_WAIT",
		Close: "CLOSE", CloseWait: "CLOSE_WAIT", LastAck: "LAST_ACK",
		Listen: "LISTEN", Closing: "CLOSING", NewSynRecv: "NEW_SYN_RECV",
		BoundInactive: "BOUND_INACTIVE",
		0:             "UNKNOWN(0)", 14: "UNKNOWN(14)", 255: "UNKNOWN(255)",
	} {
		if got := s.String(); got != want {
			t.Errorf("State(%d) = %q, want %q", uint8(s), got, want)
		}
	}
}

func TestParseState(t *testing.T) {
	for in, want := range map[string]State{
		"TIME_WAIT": TimeWait, "time_wait": TimeWait, "TCP_CLOSE_WAIT": CloseWait, "listen": Listen,
		// as ss spells them
		"close-wait": CloseWait, "time-wait": TimeWait, "syn-recv": SynRecv, "syn-sent": SynSent,
		"fin-wait-1": FinWait1, "fin-wait-2": FinWait2, "last-ack": LastAck, "listening": Listen, "closed": Close,
	} {
		if got, ok := ParseState(in); !ok || got != want {
			t.Errorf("ParseState(%q) = %v, %v; want %v", in, got, ok, want)
		}
	}
	for _, in := range []string{"", "TCP_", "TIMEWAIT", "UNKNOWN(3)", "fin-wait-3"} {
		if _, ok := ParseState(in); ok {
			t.Errorf("ParseState(%q) accepted", in)
		}
	}
}

func TestCauseString(t *testing.T) {
	want := []string{"", "closed", "refused", "reset_received", "reset_sent", "timeout", "unreachable", "reused"}
	for i, w := range want {
		if got := Cause(i).String(); got != w {
			t.Errorf("Cause(%d) = %q, want %q", i, got, w)
		}
	}
	if got := Cause(200).String(); got != "unknown(200)" {
		t.Errorf("Cause(200) = %q", got)
	}
}

func sample() Event {
	e := Event{
		Mono: 123456789, Sock: 0x1a2b, Dwell: 300 * time.Millisecond, DwellKnown: true,
		PID: 4242, Netns: 4026531840, Cgroup: 77, Family: 4,
		LAddr: netip.MustParseAddr("10.0.0.1"), RAddr: netip.MustParseAddr("10.0.0.2"),
		LPort: 43210, RPort: 80, Old: FinWait2, New: TimeWait, Kind: Transition,
	}
	copy(e.Comm[:], "curl")
	return e
}

func TestDecodeRoundTrip(t *testing.T) {
	v6 := sample()
	v6.Family = 6
	v6.LAddr = netip.MustParseAddr("2001:db8::1")
	v6.RAddr = netip.MustParseAddr("::1")
	v6.Old, v6.New, v6.Cause, v6.Kind = LastAck, Close, CauseClosed, Hint
	// what a connection carried, on its end
	v6.BytesAcked, v6.BytesReceived, v6.Retrans = 1<<40+7, 12345, 65535
	handoff := sample()
	handoff.Old, handoff.New, handoff.BytesAcked, handoff.BytesReceived, handoff.Retrans = FinWait2, TimeWait, 100, 1000, 2
	unknown := sample()
	unknown.DwellKnown, unknown.Dwell = false, 0
	unknown.Old = 99
	staged := sample()
	staged.Src = 2
	mark := Event{Kind: Mark, Mono: 123456789, Src: 1}
	child := sample()
	child.Old, child.New, child.Listener = Listen, SynRecv, 0x5eed
	holding := Event{Kind: Holding, Mono: 5, Sock: 6699, PID: 77, Cgroup: 3, Src: 2}
	copy(holding.Comm[:], "nginx")
	for _, want := range []Event{sample(), v6, handoff, unknown, staged, mark, child, holding} {
		b := make([]byte, RecordSize)
		want.Encode(b)
		// the time in state is not part of a record (package sockets)
		want.Dwell, want.DwellKnown = 0, false
		var got Event
		got.Dwell = time.Hour // must be reset
		if err := got.Decode(b); err != nil {
			t.Fatalf("decode: %v", err)
		}
		if got != want {
			t.Errorf("round trip:\n got  %+v\n want %+v", got, want)
		}
	}
}

func TestDecodeLayout(t *testing.T) {
	// fixed bytes, as the kernel lays them out (bpf/tcptrace.h)
	b := make([]byte, RecordSize)
	b[0] = 0x01  // ts_ns = 1
	b[8] = 0x2b  // cookie
	b[9] = 0x1a  //
	b[32] = 0x92 // pid = 0x1092 = 4242
	b[33] = 0x10 //
	copy(b[40:], []byte{127, 0, 0, 1})
	copy(b[56:], []byte{127, 0, 0, 2})
	b[72], b[73] = 0x90, 0x1f // sport 8080
	b[74], b[75] = 0x50, 0x00 // dport 80
	b[76] = 2                 // AF_INET
	b[77], b[78], b[79] = 9, 7, 1
	b[80] = 1 // KIND_STATE
	copy(b[84:], "nginx")
	b[100] = 3 // src: CPU 2
	var e Event
	if err := e.Decode(b); err != nil {
		t.Fatal(err)
	}
	got := [...]any{e.Mono, e.Sock, e.PID, e.LAddr.String(), e.RAddr.String(), e.LPort, e.RPort, e.Family, e.Old, e.New, e.Cause, e.CommString(), e.DwellKnown, e.Src}
	want := [...]any{uint64(1), uint64(0x1a2b), uint32(4242), "127.0.0.1", "127.0.0.2", uint16(8080), uint16(80), Family(4), LastAck, Close, CauseClosed, "nginx", false, uint32(3)}
	if got != want {
		t.Errorf("decoded %v, want %v", got, want)
	}
	// a mark has only its time and CPU; its family is 0
	clear(b)
	b[0], b[80], b[100] = 7, 4, 2
	if err := e.Decode(b); err != nil || e != (Event{Kind: Mark, Mono: 7, Src: 2}) {
		t.Errorf("mark decoded as %+v, %v", e, err)
	}
}

func TestDecodeMalformed(t *testing.T) {
	good := make([]byte, RecordSize)
	e := sample()
	e.Encode(good)
	for _, tc := range []struct {
		name string
		rec  []byte
		want string
	}{
		{"empty", nil, "0 bytes"},
		{"short", good[:RecordSize-1], "111 bytes"},
		{"bad kind", patch(good, 80, 9), "unknown kind 9"},
		{"bad family", patch(good, 76, 1), "unknown address family 1"},
	} {
		var got Event
		err := got.Decode(tc.rec)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
}

func patch(b []byte, off int, v byte) []byte {
	c := append([]byte(nil), b...)
	c[off] = v
	return c
}

func TestDecodeDoesNotAllocate(t *testing.T) {
	b := make([]byte, RecordSize)
	e := sample()
	e.Encode(b)
	var got Event
	if n := testing.AllocsPerRun(100, func() { _ = got.Decode(b) }); n != 0 {
		t.Errorf("Decode allocates %v times per record", n)
	}
}

func FuzzDecode(f *testing.F) {
	b := make([]byte, RecordSize)
	e := sample()
	e.Encode(b)
	f.Add(b)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, rec []byte) {
		var e Event
		if e.Decode(rec) == nil {
			_ = e.Old.String() + e.New.String() + e.Cause.String() + e.CommString()
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	rec := make([]byte, RecordSize)
	e := sample()
	e.Encode(rec)
	var got Event
	b.ReportAllocs()
	for b.Loop() {
		if err := got.Decode(rec); err != nil {
			b.Fatal(err)
		}
	}
}
