package timewait

import (
	"slices"
	"testing"
)

// Entries come off the queue once due, every one due by then, none twice;
// a removed entry never does, and an emptied time is skipped.
func TestQueue(t *testing.T) {
	var q queue
	at := map[*entry]uint64{}
	mk := func(next uint64) *entry {
		en := &entry{next: next}
		at[en] = next
		q.push(en)
		return en
	}
	a := mk(25 * ms) // rounded up to 30 ms
	b := mk(30 * ms)
	c := mk(1000 * ms)
	d := mk(1000 * ms)
	e := mk(500 * ms)
	q.remove(e) // its time's only entry: the time is skipped
	q.remove(e) // twice is harmless
	q.remove(c)
	if q.len() != 3 || q.next() != 30*ms {
		t.Fatalf("len %d, next %d", q.len(), q.next())
	}
	var got []*entry
	q.popDue(29*ms, func(en *entry) { got = append(got, en) })
	if len(got) != 0 {
		t.Fatalf("popped %d before their time", len(got))
	}
	q.popDue(30*ms, func(en *entry) { got = append(got, en) })
	if len(got) != 2 || !slices.Contains(got, a) || !slices.Contains(got, b) {
		t.Fatalf("at 30 ms got %v", got)
	}
	if q.next() != 1000*ms || q.len() != 1 {
		t.Fatalf("after: len %d, next %d", q.len(), q.next())
	}
	// an entry queued again from inside popDue waits for its new time
	got = nil
	q.popDue(5000*ms, func(en *entry) {
		got = append(got, en)
		if en == d && len(got) == 1 {
			en.next = 6000 * ms
			q.push(en)
		}
	})
	if len(got) != 1 || got[0] != d || q.next() != 6000*ms || q.len() != 1 {
		t.Fatalf("got %v, next %d, len %d", got, q.next(), q.len())
	}
	q.remove(d)
	if q.next() != 0 || q.len() != 0 || len(q.slots) != 0 {
		t.Fatalf("empty queue: next %d, len %d, slots %d", q.next(), q.len(), len(q.slots))
	}
}
