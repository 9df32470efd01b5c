package output

import (
	"io"
	"unicode/utf8"

	"github.com/tcptrace/tcptrace/events"
)

// JSON writes one object per line; the README documents the schema.
type JSON struct {
	base
	clock clock
}

// NewJSON writes to w.
func NewJSON(w io.Writer) *JSON {
	return &JSON{base: newBase(w), clock: clock{layout: "2006-01-02T15:04:05", utc: true}}
}

const hexDigits = "0123456789abcdef"

// Write formats one event.
func (j *JSON) Write(e *events.Event) error {
	b := j.line[:0]
	b = append(b, `{"time":"`...)
	b = j.clock.appendTime(b, e.Time, 9)
	b = append(b, `Z","sock":"`...)
	b = appendHex(b, e.Sock)
	b = append(b, `","pid":`...)
	b = appendUint(b, uint64(e.PID))
	b = append(b, `,"comm":"`...)
	b = appendJSONString(b, e.CommBytes())
	b = append(b, `","family":"`...)
	b = append(b, e.Family.String()...)
	b = append(b, `","laddr":"`...)
	b = e.LAddr.AppendTo(b)
	b = append(b, `","lport":`...)
	b = appendUint(b, uint64(e.LPort))
	b = append(b, `,"raddr":"`...)
	b = e.RAddr.AppendTo(b)
	b = append(b, `","rport":`...)
	b = appendUint(b, uint64(e.RPort))
	b = append(b, `,"old":"`...)
	b = append(b, e.Old.String()...)
	b = append(b, `","new":"`...)
	b = append(b, e.New.String()...)
	b = append(b, `","dwell_ms":`...)
	if e.DwellKnown {
		// milliseconds with nanosecond precision, written as integers
		// so no float formatting runs per event
		b = appendFixed(b, uint64(e.Dwell), 6)
	} else {
		b = append(b, "null"...)
	}
	if e.New == events.Close {
		b = append(b, `,"cause":"`...)
		b = append(b, e.Cause.String()...)
		b = append(b, '"')
	}
	b = append(b, `,"netns":`...)
	b = appendUint(b, uint64(e.Netns))
	b = append(b, `,"cgroup":`...)
	b = appendUint(b, e.Cgroup)
	b = append(b, "}\n"...)
	j.line = b
	_, err := j.w.Write(b)
	return err
}

func appendHex(b []byte, v uint64) []byte {
	var tmp [16]byte
	i := len(tmp)
	for {
		i--
		tmp[i] = hexDigits[v&0xf]
		v >>= 4
		if v == 0 {
			break
		}
	}
	return append(b, tmp[i:]...)
}

// appendJSONString escapes s for a JSON string body. A comm is whatever a
// process set with prctl, so quotes, control bytes and invalid UTF-8 occur.
func appendJSONString(b []byte, s []byte) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			b = append(b, c)
			i++
			continue
		}
		if c < utf8.RuneSelf {
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return b
}
