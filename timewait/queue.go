package timewait

import (
	"container/heap"
	"time"
)

// quantum is the precision of the checks' times: each is rounded up to it,
// so that connections due within it are checked together.
const quantum = uint64(10 * time.Millisecond)

// queue orders entries by their next check. Entries due at the same
// (rounded) time share a slot, a list of them: a storm's TIME_WAITs come
// due a timer-wheel tick at a time, so there are few distinct times, and
// adding or removing an entry costs a map access and a few pointer moves,
// where a heap of 50,000 entries moved each through 16 levels.
type queue struct {
	slots map[uint64]*slot
	times times // of the slots, earliest first; some may be empty
	n     int   // entries queued
}

type slot struct {
	at    uint64
	first *entry
	n     int
}

// times is a heap of the slots' times.
type times []uint64

func (t times) Len() int           { return len(t) }
func (t times) Less(i, j int) bool { return t[i] < t[j] }
func (t times) Swap(i, j int)      { t[i], t[j] = t[j], t[i] }
func (t *times) Push(x any)        { *t = append(*t, x.(uint64)) }
func (t *times) Pop() any {
	old := *t
	v := old[len(old)-1]
	*t = old[:len(old)-1]
	return v
}

func (q *queue) len() int { return q.n }

// push queues en for its next check.
func (q *queue) push(en *entry) {
	if q.slots == nil {
		q.slots = make(map[uint64]*slot)
	}
	at := (en.next + quantum - 1) / quantum * quantum
	s := q.slots[at]
	if s == nil {
		s = &slot{at: at}
		q.slots[at] = s
		heap.Push(&q.times, at)
	}
	en.slot, en.prev, en.after = s, nil, s.first
	if s.first != nil {
		s.first.prev = en
	}
	s.first = en
	s.n++
	q.n++
}

// remove takes en off the queue, if it is on it.
func (q *queue) remove(en *entry) {
	s := en.slot
	if s == nil {
		return
	}
	if en.prev != nil {
		en.prev.after = en.after
	} else {
		s.first = en.after
	}
	if en.after != nil {
		en.after.prev = en.prev
	}
	en.slot, en.prev, en.after = nil, nil, nil
	s.n--
	q.n--
}

// earliest is the first slot with entries; nil when none is queued.
func (q *queue) earliest() *slot {
	for len(q.times) > 0 {
		s := q.slots[q.times[0]]
		if s.n > 0 {
			return s
		}
		// emptied since: drop it
		heap.Pop(&q.times)
		delete(q.slots, s.at)
	}
	return nil
}

// next is when the earliest check is due, or 0 when none is queued.
func (q *queue) next() uint64 {
	if s := q.earliest(); s != nil {
		return s.at
	}
	return 0
}

// popDue takes off the queue every entry due by now, and calls fn for
// each. fn may queue entries again.
func (q *queue) popDue(now uint64, fn func(*entry)) {
	for {
		s := q.earliest()
		if s == nil || s.at > now {
			return
		}
		heap.Pop(&q.times)
		delete(q.slots, s.at)
		for en := s.first; en != nil; {
			after := en.after
			en.slot, en.prev, en.after = nil, nil, nil
			q.n--
			fn(en)
			en = after
		}
	}
}
