// Package output writes transitions for people (text) and for programs
// (JSON lines). Writers buffer; the caller flushes when it has caught up
// with the kernel, so a busy system costs one write per batch.
package output

import (
	"bufio"
	"io"
	"strconv"
	"time"

	"github.com/tcptrace/tcptrace/events"
)

// Writer is what every output format implements.
type Writer interface {
	Write(*events.Event) error
	Flush() error
	Close() error
}

const bufSize = 64 << 10

// base holds what both formats share: a buffered destination and a
// scratch line reused for every event.
type base struct {
	w    *bufio.Writer
	c    io.Closer
	line []byte
}

func newBase(w io.Writer) base {
	b := base{w: bufio.NewWriterSize(w, bufSize), line: make([]byte, 0, 512)}
	if c, ok := w.(io.Closer); ok {
		b.c = c
	}
	return b
}

func (b *base) Flush() error { return b.w.Flush() }

// Close flushes; it closes the destination only if it is not a terminal
// stream the process shares (stdout, stderr).
func (b *base) Close() error {
	err := b.w.Flush()
	if b.c != nil && !isStdStream(b.c) {
		if cerr := b.c.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// clock formats times, reusing the text up to the second while the second
// has not changed: time.AppendFormat per event costs more than all the rest
// of a JSON line.
type clock struct {
	layout string // up to and including the seconds
	utc    bool
	sec    int64
	prefix []byte
}

// appendTime writes the cached prefix, then a dot and digits of the fraction.
func (c *clock) appendTime(b []byte, t time.Time, digits int) []byte {
	if c.utc {
		t = t.UTC()
	}
	if s := t.Unix(); s != c.sec || c.prefix == nil {
		c.sec = s
		c.prefix = t.AppendFormat(c.prefix[:0], c.layout)
	}
	b = append(b, c.prefix...)
	b = append(b, '.')
	frac := uint64(t.Nanosecond())
	for range 9 - digits {
		frac /= 10
	}
	return appendPadded(b, frac, digits)
}

// appendDwell formats a duration in a human unit: 812ns, 52us, 300.1ms, 4.2s, 1m0.0s.
func appendDwell(b []byte, d time.Duration) []byte {
	switch {
	case d < time.Microsecond:
		return append(appendUint(b, uint64(d)), "ns"...)
	case d < time.Millisecond:
		return append(appendUint(b, uint64(d/time.Microsecond)), "us"...)
	case d < time.Second:
		return append(appendFixed(b, uint64(d/(100*time.Microsecond)), 1), "ms"...)
	case d < time.Minute:
		return append(appendFixed(b, uint64(d/(10*time.Millisecond)), 2), "s"...)
	default:
		m := d / time.Minute
		b = append(appendUint(b, uint64(m)), 'm')
		return append(appendFixed(b, uint64((d-m*time.Minute)/(100*time.Millisecond)), 1), "s"...)
	}
}

// appendFixed writes v / 10^digits with that many decimals.
func appendFixed(b []byte, v uint64, digits int) []byte {
	p := uint64(1)
	for range digits {
		p *= 10
	}
	b = appendUint(b, v/p)
	b = append(b, '.')
	return appendPadded(b, v%p, digits)
}

// twoDigits holds 00 to 99: a division makes two digits at once.
const twoDigits = "00010203040506070809101112131415161718192021222324252627282930313233343536373839" +
	"404142434445464748495051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899"

// appendPadded writes v with leading zeros to width digits (at most 20).
func appendPadded(b []byte, v uint64, width int) []byte {
	var tmp [20]byte
	i := len(tmp)
	for v >= 100 {
		q := v / 100
		r := (v - q*100) * 2
		i -= 2
		tmp[i], tmp[i+1] = twoDigits[r], twoDigits[r+1]
		v = q
	}
	if v >= 10 {
		i -= 2
		tmp[i], tmp[i+1] = twoDigits[v*2], twoDigits[v*2+1]
	} else {
		i--
		tmp[i] = byte('0' + v)
	}
	for i > len(tmp)-width {
		i--
		tmp[i] = '0'
	}
	return append(b, tmp[i:]...)
}

func appendUint(b []byte, v uint64) []byte {
	return strconv.AppendUint(b, v, 10)
}
