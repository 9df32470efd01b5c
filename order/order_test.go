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
