package loader

import (
	"testing"
	"unsafe"

	"github.com/tcptrace/tcptrace/events"
)

// The decoder's offsets must match the struct bpf2go generated from
// bpf/tcptrace.h.
func TestRecordLayout(t *testing.T) {
	var e tcptraceEvent
	if got := unsafe.Sizeof(e); got != events.RecordSize {
		t.Fatalf("sizeof(struct event) = %d, decoder expects %d", got, events.RecordSize)
	}
	for _, f := range []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"ts_ns", unsafe.Offsetof(e.TsNs), 0},
		{"cookie", unsafe.Offsetof(e.Cookie), 8},
		{"ref", unsafe.Offsetof(e.Ref), 16},
		{"cgroup", unsafe.Offsetof(e.Cgroup), 24},
		{"pid", unsafe.Offsetof(e.Pid), 32},
		{"netns", unsafe.Offsetof(e.Netns), 36},
		{"saddr", unsafe.Offsetof(e.Saddr), 40},
		{"daddr", unsafe.Offsetof(e.Daddr), 56},
		{"sport", unsafe.Offsetof(e.Sport), 72},
		{"dport", unsafe.Offsetof(e.Dport), 74},
		{"family", unsafe.Offsetof(e.Family), 76},
		{"oldstate", unsafe.Offsetof(e.Oldstate), 77},
		{"newstate", unsafe.Offsetof(e.Newstate), 78},
		{"cause", unsafe.Offsetof(e.Cause), 79},
		{"kind", unsafe.Offsetof(e.Kind), 80},
		{"flags", unsafe.Offsetof(e.Flags), 81},
		{"comm", unsafe.Offsetof(e.Comm), 84},
		{"src", unsafe.Offsetof(e.Src), 100},
		{"retrans", unsafe.Offsetof(e.Retrans), 82},
		{"bytes_received", unsafe.Offsetof(e.BytesReceived), 104},
	} {
		if f.got != f.want {
			t.Errorf("offset of %s = %d, decoder expects %d", f.name, f.got, f.want)
		}
	}
}

func TestHolderLayout(t *testing.T) {
	var h tcptraceHolder
	if got := unsafe.Sizeof(h); got != events.HolderSize {
		t.Fatalf("sizeof(struct holder) = %d, decoder expects %d", got, events.HolderSize)
	}
	for _, f := range []struct {
		name      string
		got, want uintptr
	}{
		{"cookie", unsafe.Offsetof(h.Cookie), 0},
		{"start_ns", unsafe.Offsetof(h.StartNs), 8},
		{"cgroup", unsafe.Offsetof(h.Cgroup), 16},
		{"pid", unsafe.Offsetof(h.Pid), 24},
		{"netns", unsafe.Offsetof(h.Netns), 28},
		{"fd", unsafe.Offsetof(h.Fd), 32},
		{"lport", unsafe.Offsetof(h.Lport), 36},
		{"state", unsafe.Offsetof(h.State), 38},
		{"family", unsafe.Offsetof(h.Family), 39},
		{"comm", unsafe.Offsetof(h.Comm), 40},
		{"saddr", unsafe.Offsetof(h.Saddr), 56},
		{"daddr", unsafe.Offsetof(h.Daddr), 72},
		{"dport", unsafe.Offsetof(h.Dport), 88},
		{"sk", unsafe.Offsetof(h.Sk), 96},
	} {
		if f.got != f.want {
			t.Errorf("offset of %s = %d, decoder expects %d", f.name, f.got, f.want)
		}
	}
}
