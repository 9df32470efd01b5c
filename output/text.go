package output

import (
	"io"

	"github.com/tcptrace/tcptrace/events"
)

// Text writes one aligned line per transition, like tcpstates. By default
// the address columns start as wide as "127.0.0.1:48816", so that a line
// of IPv4 traffic fits 120 columns, and widen, with the header written
// again, the first time a longer address comes; wide keeps them wide
// enough for any IPv6 address from the start.
type Text struct {
	base
	addrWidth int
	header    bool
	clock     clock
	addr      []byte // an address being measured
}

// Address column widths: "127.0.0.1:48816" and the longest,
// "[ffff:...:ffff]:65535".
const (
	narrowAddr = 15
	wideAddr   = 47
)

// Widths of the other columns; a cause needs none, being last.
const (
	timeWidth  = 15 // 15:04:05.000000
	pidWidth   = 6
	commWidth  = 15
	oldWidth   = 11 // ESTABLISHED
	newWidth   = 14 // -> ESTABLISHED
	dwellWidth = 7  // 300.1ms
)

// NewText writes to w, with address columns for any address if wide.
func NewText(w io.Writer, wide bool) *Text {
	t := &Text{base: newBase(w), addrWidth: narrowAddr, clock: clock{layout: "15:04:05"}}
	if wide {
		t.addrWidth = wideAddr
	}
	return t
}

func (t *Text) pad(b []byte, from, width int) []byte {
	for n := len(b) - from; n < width; n++ {
		b = append(b, ' ')
	}
	return append(b, ' ')
}

func (t *Text) writeHeader() error {
	b := t.line[:0]
	col := func(s string, width int) {
		from := len(b)
		b = append(b, s...)
		b = t.pad(b, from, width)
	}
	col("TIME", timeWidth)
	col("PID", pidWidth)
	col("COMM", commWidth)
	col("LADDR:LPORT", t.addrWidth)
	col("RADDR:RPORT", t.addrWidth)
	col("OLD", oldWidth)
	col("-> NEW", newWidth)
	col("DWELL", dwellWidth)
	b = append(b, "CAUSE\n"...)
	t.line = b
	_, err := t.w.Write(b)
	return err
}

func appendAddrPort(b []byte, e *events.Event, local bool) []byte {
	a, p := e.RAddr, e.RPort
	if local {
		a, p = e.LAddr, e.LPort
	}
	if e.Family == 6 {
		b = append(b, '[')
		b = a.AppendTo(b)
		b = append(b, ']')
	} else {
		b = a.AppendTo(b)
	}
	b = append(b, ':')
	return appendUint(b, uint64(p))
}

// fit widens the address columns for e's addresses, if they need it,
// and says whether they did.
func (t *Text) fit(e *events.Event) bool {
	if t.addrWidth >= wideAddr {
		return false
	}
	n := max(t.addrLen(e, true), t.addrLen(e, false))
	if n <= t.addrWidth {
		return false
	}
	t.addrWidth = n
	return true
}

// addrLen is the width of e's local or remote address and port, counted
// without formatting for IPv4, the common case.
func (t *Text) addrLen(e *events.Event, local bool) int {
	a, p := e.RAddr, e.RPort
	if local {
		a, p = e.LAddr, e.LPort
	}
	if e.Family == 6 || !a.Is4() {
		t.addr = appendAddrPort(t.addr[:0], e, local)
		return len(t.addr)
	}
	n := 4 + digits(uint64(p)) // three dots and the colon
	for _, b := range a.As4() {
		n += digits(uint64(b))
	}
	return n
}

func digits(v uint64) int {
	n := 1
	for ; v >= 10; v /= 10 {
		n++
	}
	return n
}

// Write formats one event.
func (t *Text) Write(e *events.Event) error {
	if t.fit(e) || !t.header {
		t.header = true
		if err := t.writeHeader(); err != nil {
			return err
		}
	}
	b := t.line[:0]
	from := len(b)
	b = t.clock.appendTime(b, e.Time, 6)
	b = t.pad(b, from, timeWidth)

	from = len(b)
	if e.PID == 0 {
		b = append(b, '-')
	} else {
		b = appendUint(b, uint64(e.PID))
	}
	b = t.pad(b, from, pidWidth)

	from = len(b)
	if comm := e.CommBytes(); len(comm) > 0 {
		b = append(b, comm...)
	} else {
		b = append(b, '-')
	}
	b = t.pad(b, from, commWidth)

	from = len(b)
	b = appendAddrPort(b, e, true)
	b = t.pad(b, from, t.addrWidth)
	from = len(b)
	b = appendAddrPort(b, e, false)
	b = t.pad(b, from, t.addrWidth)

	from = len(b)
	b = append(b, e.Old.String()...)
	b = t.pad(b, from, oldWidth)
	from = len(b)
	b = append(b, "-> "...)
	b = append(b, e.New.String()...)
	b = t.pad(b, from, newWidth)

	from = len(b)
	if e.DwellKnown {
		b = appendDwell(b, e.Dwell)
	} else {
		b = append(b, '-')
	}
	b = t.pad(b, from, dwellWidth)

	if e.Cause != events.CauseNone {
		b = append(b, e.Cause.String()...)
	} else {
		b = append(b, '-')
	}
	b = append(b, '\n')
	t.line = b
	_, err := t.w.Write(b)
	return err
}
