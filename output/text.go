package output

import (
	"io"

	"github.com/tcptrace/tcptrace/events"
)

// Text writes one aligned line per transition, like tcpstates.
type Text struct {
	base
	addrWidth int
	header    bool
	clock     clock
}

// Address column widths: "255.255.255.255:65535" and the longest
// "[ffff:...:ffff]:65535".
const (
	narrowAddr = 21
	wideAddr   = 47
)

// NewText writes to w. ipv4Only narrows the address columns.
func NewText(w io.Writer, ipv4Only bool) *Text {
	t := &Text{base: newBase(w), addrWidth: wideAddr, clock: clock{layout: "15:04:05"}}
	if ipv4Only {
		t.addrWidth = narrowAddr
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
	col("TIME", 15)
	col("PID", 7)
	col("COMM", 15)
	col("LADDR:LPORT", t.addrWidth)
	col("RADDR:RPORT", t.addrWidth)
	col("OLD", 11)
	col("-> NEW", 14)
	col("DWELL", 9)
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

// Write formats one event.
func (t *Text) Write(e *events.Event) error {
	if !t.header {
		t.header = true
		if err := t.writeHeader(); err != nil {
			return err
		}
	}
	b := t.line[:0]
	from := len(b)
	b = t.clock.appendTime(b, e.Time, 6)
	b = t.pad(b, from, 15)

	from = len(b)
	if e.PID == 0 {
		b = append(b, '-')
	} else {
		b = appendUint(b, uint64(e.PID))
	}
	b = t.pad(b, from, 7)

	from = len(b)
	if comm := e.CommBytes(); len(comm) > 0 {
		b = append(b, comm...)
	} else {
		b = append(b, '-')
	}
	b = t.pad(b, from, 15)

	from = len(b)
	b = appendAddrPort(b, e, true)
	b = t.pad(b, from, t.addrWidth)
	from = len(b)
	b = appendAddrPort(b, e, false)
	b = t.pad(b, from, t.addrWidth)

	from = len(b)
	b = append(b, e.Old.String()...)
	b = t.pad(b, from, 11)
	from = len(b)
	b = append(b, "-> "...)
	b = append(b, e.New.String()...)
	b = t.pad(b, from, 14)

	from = len(b)
	if e.DwellKnown {
		b = appendDwell(b, e.Dwell)
	} else {
		b = append(b, '-')
	}
	b = t.pad(b, from, 9)

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
