package sockets

import (
	"testing"

	"github.com/tcptrace/tcptrace/events"
)

// Two sockets one after the other at one kernel address are two lives; a
// socket the holders dump found first keeps its name in its records; a
// cookie is left alone.
func TestLives(t *testing.T) {
	const addr = 0xffff8a1d87290000
	var l Lives
	rec := func(sock uint64, old, new events.State) uint64 {
		e := events.Event{Kind: events.Transition, Sock: sock, Old: old, New: new}
		l.Record(&e)
		return e.Sock
	}
	first := rec(addr, events.Close, events.SynSent)
	if !events.ByAddress(first) || first == addr {
		t.Fatalf("first life named %#x", first)
	}
	if got := rec(addr, events.SynSent, events.Established); got != first {
		t.Errorf("same life named %#x, then %#x", first, got)
	}
	if got := rec(addr, events.Established, events.Close); got != first {
		t.Errorf("its end named %#x, want %#x", got, first)
	}
	second := rec(addr, events.Listen, events.SynRecv)
	if second == first {
		t.Errorf("a child at a freed socket's address took its name %#x", first)
	}
	if got := rec(addr, events.SynRecv, events.Established); got != second {
		t.Errorf("the child's next record named %#x, want %#x", got, second)
	}

	hs := []events.Holder{{Sock: 0xffff8a1d86ab08c0}, {Sock: 42}}
	l.Holders(hs)
	if got := rec(0xffff8a1d86ab08c0, events.Established, events.CloseWait); got != hs[0].Sock {
		t.Errorf("a socket older than the tracer: dump named it %#x, its record %#x", hs[0].Sock, got)
	}
	if hs[1].Sock != 42 || rec(42, events.Close, events.SynSent) != 42 {
		t.Error("a cookie was renamed")
	}
}
