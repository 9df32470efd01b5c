package order

import (
	"math"
	"slices"
	"testing"

	"github.com/tcptrace/tcptrace/events"
)

func ev(mono, sock uint64) events.Event {
	return events.Event{Mono: mono, Sock: sock}
}

func released(b *Buffer, mark uint64) (got []uint64) {
	b.Release(mark, func(e *events.Event) { got = append(got, e.Sock) })
	return got
}

// Two CPUs' batches, the second CPU's written first: released merged by
// time, only up to the mark, and what is held stays for the next release.
func TestReleaseMergesBatchesUpToMark(t *testing.T) {
	var b Buffer
	b.Add([]events.Event{ev(20, 2), ev(40, 4), ev(60, 6)}) // CPU 1
	b.Add([]events.Event{ev(10, 1), ev(30, 3), ev(50, 5)}) // CPU 0
	if got, want := released(&b, 45), []uint64{1, 2, 3, 4}; !slices.Equal(got, want) {
		t.Fatalf("first release %v, want %v", got, want)
	}
	if b.Len() != 2 {
		t.Fatalf("held %d, want 2", b.Len())
	}
	b.Add([]events.Event{ev(55, 7)})
	if got, want := released(&b, math.MaxUint64), []uint64{5, 7, 6}; !slices.Equal(got, want) {
		t.Fatalf("second release %v, want %v", got, want)
	}
	if b.Len() != 0 {
		t.Fatalf("held %d after releasing all, want 0", b.Len())
	}
}

// Records with the same time keep the order they came in.
func TestReleaseKeepsTiesInArrivalOrder(t *testing.T) {
	var b Buffer
	b.Add([]events.Event{ev(5, 1), ev(5, 2), ev(3, 3), ev(5, 4)})
	if got, want := released(&b, 6), []uint64{3, 1, 2, 4}; !slices.Equal(got, want) {
		t.Fatalf("released %v, want %v", got, want)
	}
}

// Nothing before the mark: nothing released, nothing lost.
func TestReleaseBeforeEverything(t *testing.T) {
	var b Buffer
	b.Add([]events.Event{ev(7, 1)})
	if got := released(&b, 7); len(got) != 0 {
		t.Fatalf("released %v, want nothing", got)
	}
	if b.Len() != 1 {
		t.Fatalf("held %d, want 1", b.Len())
	}
}

func staged(mono, sock uint64, cpu uint32) events.Event {
	return events.Event{Mono: mono, Sock: sock, Src: cpu + 1}
}

func mark(mono uint64, cpu uint32) events.Event {
	return events.Event{Kind: events.Mark, Mono: mono, Src: cpu + 1}
}

// Settled follows the CPU that is furthest behind; marks move a CPU on
// and are not held; records written straight to the ring move nothing.
func TestSettledByEachCPU(t *testing.T) {
	var b Buffer
	if b.Settled() != 0 {
		t.Fatalf("settled %d before any CPU was seen, want 0", b.Settled())
	}
	b.Add([]events.Event{mark(5, 0), mark(6, 1)}) // the first settle
	if got := b.Settled(); got != 5 {
		t.Fatalf("settled %d after the marks, want 5", got)
	}
	b.Add([]events.Event{staged(20, 2, 1), staged(40, 4, 1)})
	b.Add([]events.Event{staged(10, 1, 0), staged(30, 3, 0)})
	b.Add([]events.Event{ev(35, 9)}) // direct, from an interrupt on CPU 0
	if got := b.Settled(); got != 30 {
		t.Fatalf("settled %d, want 30 (CPU 0's latest)", got)
	}
	if got, want := released(&b, b.Settled()), []uint64{1, 2}; !slices.Equal(got, want) {
		t.Fatalf("released %v, want %v", got, want)
	}
	// CPU 0 stays quiet until a settle marks it at 50
	b.Add([]events.Event{staged(45, 5, 1), mark(50, 0), mark(51, 1)})
	if got := b.Settled(); got != 50 {
		t.Fatalf("settled %d after the second settle, want 50", got)
	}
	if got, want := released(&b, b.Settled()), []uint64{3, 9, 4, 5}; !slices.Equal(got, want) {
		t.Fatalf("released %v, want %v", got, want)
	}
	if b.Len() != 0 {
		t.Fatalf("held %d, want 0: marks are not records", b.Len())
	}
}
