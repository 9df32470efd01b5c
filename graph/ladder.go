package graph

import (
	"errors"
	"fmt"
	"html"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/tcptrace/tcptrace/events"
)

// Selector names one connection: by socket cookie (the hex "sock" of the
// JSON and ss -e), or by one of its ends' address and port.
type Selector struct {
	Cookie uint64
	End    netip.AddrPort
}

// ParseSelector reads "1a2b" (a cookie) or "127.0.0.1:48816", "[::1]:80".
func ParseSelector(s string) (Selector, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return Selector{End: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}, nil
	}
	c, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
	if err != nil || c == 0 {
		return Selector{}, fmt.Errorf("--conn %q: want a socket id (hex, as the JSON's \"sock\") or an address:port", s)
	}
	return Selector{Cookie: c}, nil
}

// maxPerSocket bounds the events kept of one socket: a connection's
// whole life is a dozen.
const maxPerSocket = 32

// Ladder keeps the transitions of live sockets until it knows which
// belong to the selected connection: a stream.Consumer. A socket's
// events go once it closes unless it matched; what is kept is bounded by
// the sockets alive at once.
type Ladder struct {
	sel     Selector
	bySock  map[uint64][]events.Event
	matched map[uint64]bool
	kept    map[uint64][]events.Event // closed sockets that matched, or may be the peer of one
	// every closed socket's tuple, for finding a peer after the fact:
	// only the last maxEnded
	ended []ended
	// the selected connection's two ends, once known
	pair   [2]netip.AddrPort
	paired bool
}

type ended struct {
	sock uint64
	evs  []events.Event
}

// maxEnded bounds the closed sockets remembered as possible peers.
const maxEnded = 4096

// NewLadder follows the connection sel names.
func NewLadder(sel Selector) *Ladder {
	return &Ladder{sel: sel, bySock: map[uint64][]events.Event{}, matched: map[uint64]bool{}, kept: map[uint64][]events.Event{}}
}

// Write keeps one event.
func (l *Ladder) Write(e *events.Event) error {
	evs := l.bySock[e.Sock]
	if len(evs) < maxPerSocket {
		l.bySock[e.Sock] = append(evs, *e)
	}
	if l.selected(e) {
		l.matched[e.Sock] = true
	}
	if e.New == events.Close {
		evs := l.bySock[e.Sock]
		delete(l.bySock, e.Sock)
		if l.matched[e.Sock] {
			l.kept[e.Sock] = evs
		} else {
			l.ended = append(l.ended, ended{e.Sock, evs})
			if len(l.ended) > maxEnded {
				l.ended = l.ended[1:]
			}
		}
	}
	return nil
}

// selected says whether e shows its socket is the selected connection's.
// By address, the first connection with that end is the one: its two
// ends' addresses, once both ports are known, pick its sockets from then
// on (a server's address is every connection's end).
func (l *Ladder) selected(e *events.Event) bool {
	if l.sel.Cookie != 0 {
		return e.Sock == l.sel.Cookie
	}
	if e.New == events.Listen || e.Old == events.Listen && e.New == events.Close {
		return false // a listener, not a connection
	}
	if e.LPort == 0 || e.RPort == 0 {
		return false // before connect() chose a port: its later records tell
	}
	local := netip.AddrPortFrom(e.LAddr.Unmap(), e.LPort)
	remote := netip.AddrPortFrom(e.RAddr.Unmap(), e.RPort)
	if !l.paired {
		if local != l.sel.End && remote != l.sel.End {
			return false
		}
		l.pair, l.paired = [2]netip.AddrPort{local, remote}, true
		return true
	}
	return local == l.pair[0] && remote == l.pair[1] || local == l.pair[1] && remote == l.pair[0]
}

// Flush does nothing: nothing is buffered.
func (l *Ladder) Flush() error { return nil }

// Side is one end of the connection.
type Side struct {
	Role  string // client or server
	Comm  string
	PID   uint32
	Local netip.AddrPort
	Evs   []events.Event
}

// Sides returns the selected connection's ends, the client first when
// known; one side if the other is not on this host.
func (l *Ladder) Sides() ([]Side, error) {
	all := map[uint64][]events.Event{}
	for s, evs := range l.kept {
		all[s] = evs
	}
	for s, evs := range l.bySock {
		all[s] = evs
	}
	var sides []Side
	for s := range l.matched {
		sides = append(sides, side(all[s]))
	}
	if len(sides) == 0 {
		return nil, errors.New("no transition of that connection was seen")
	}
	if len(sides) == 1 {
		// the peer: the socket whose addresses are the reverse
		me := sides[0]
		var remote netip.AddrPort
		for _, e := range me.Evs {
			if e.RPort != 0 {
				remote = netip.AddrPortFrom(e.RAddr.Unmap(), e.RPort)
			}
		}
		peer := func(evs []events.Event) bool {
			for _, e := range evs {
				if netip.AddrPortFrom(e.LAddr.Unmap(), e.LPort) == remote && netip.AddrPortFrom(e.RAddr.Unmap(), e.RPort) == me.Local {
					return true
				}
			}
			return false
		}
		for _, evs := range all {
			if len(evs) > 0 && evs[0].Sock != me.Evs[0].Sock && peer(evs) {
				sides = append(sides, side(evs))
				break
			}
		}
		if len(sides) == 1 {
			for _, en := range l.ended {
				if peer(en.evs) {
					sides = append(sides, side(en.evs))
					break
				}
			}
		}
	}
	if len(sides) == 2 && sides[0].Role != "client" && sides[1].Role == "client" {
		sides[0], sides[1] = sides[1], sides[0]
	}
	return sides[:min(len(sides), 2)], nil
}

func side(evs []events.Event) Side {
	s := Side{Role: "server", Evs: evs}
	for _, e := range evs {
		if e.New == events.SynSent {
			s.Role = "client"
		}
		if e.PID != 0 {
			s.PID, s.Comm = e.PID, e.CommString()
		}
		if e.LPort != 0 {
			s.Local = netip.AddrPortFrom(e.LAddr.Unmap(), e.LPort)
		}
	}
	return s
}

// row is one transition in time order, on one side.
type row struct {
	side int
	e    events.Event
}

func rows(sides []Side) []row {
	var rs []row
	for i, s := range sides {
		for _, e := range s.Evs {
			rs = append(rs, row{i, e})
		}
	}
	// stable by time: each side's own order stays
	for i := 1; i < len(rs); i++ {
		for j := i; j > 0 && rs[j].e.Mono < rs[j-1].e.Mono; j-- {
			rs[j], rs[j-1] = rs[j-1], rs[j]
		}
	}
	return rs
}

func title(s Side) string {
	who := s.Comm
	if s.PID != 0 {
		who = fmt.Sprintf("%s %d", s.Comm, s.PID)
	}
	return fmt.Sprintf("%s %s (%s)", s.Role, s.Local, who)
}

func step(e *events.Event) string {
	t := e.Old.String() + " -> " + e.New.String()
	if e.DwellKnown {
		t += " (" + short(e.Dwell) + ")"
	}
	if e.Cause != events.CauseNone {
		t += " " + e.Cause.String()
	}
	return t
}

// colWidth is a side's column in the text ladder.
const colWidth = 44

// Text writes the ladder: time since the first transition, then each
// side's transitions in its own column, with the dwell in the state left.
func Text(w io.Writer, sides []Side) error {
	var b strings.Builder
	line := func(first string, cells []string) {
		l := fmt.Sprintf("%-10s", first)
		for _, c := range cells {
			l += fmt.Sprintf(" %-*s", colWidth, c)
		}
		b.WriteString(strings.TrimRight(l, " ") + "\n")
	}
	var head []string
	for _, s := range sides {
		head = append(head, title(s))
	}
	line("TIME", head)
	rs := rows(sides)
	for _, r := range rs {
		cells := make([]string, len(sides))
		cells[r.side] = step(&r.e)
		line("+"+short(time.Duration(r.e.Mono-rs[0].e.Mono)), cells)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// SVG draws the ladder: a lifeline per side, each transition a labelled
// mark on its side's line, in time order from top to bottom.
func SVG(w io.Writer, sides []Side) error {
	rs := rows(sides)
	const rowH, top, colW, left = 28, 70, 360, 90
	width := left + colW*len(sides) + 40
	height := top + rowH*len(rs) + 30
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="Helvetica,Arial,sans-serif" font-size="13">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	for i, s := range sides {
		x := left + colW*i + colW/2
		fmt.Fprintf(&b, `<text x="%d" y="30" text-anchor="middle" font-weight="bold">%s</text>`+"\n", x, html.EscapeString(s.Role+" "+s.Local.String()))
		fmt.Fprintf(&b, `<text x="%d" y="48" text-anchor="middle">%s</text>`+"\n", x, html.EscapeString(fmt.Sprintf("%s %d", s.Comm, s.PID)))
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#888" stroke-width="2"/>`+"\n", x, top-10, x, height-20)
	}
	var start uint64
	if len(rs) > 0 {
		start = rs[0].e.Mono
	}
	for i, r := range rs {
		x := left + colW*r.side + colW/2
		y := top + rowH*i + rowH/2
		fmt.Fprintf(&b, `<text x="10" y="%d" fill="#555">%s</text>`+"\n", y+4, html.EscapeString("+"+short(time.Duration(r.e.Mono-start))))
		fmt.Fprintf(&b, `<circle cx="%d" cy="%d" r="4" fill="#1f5f9f"/>`+"\n", x, y)
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", x, y-7, html.EscapeString(step(&r.e)))
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}
