// Package top is `tcptrace top`'s screen: a live, full-screen view of the
// aggregates (package aggregate), redrawn every interval, with tcell
// drawing the terminal, resizes included. Without a terminal, Plain
// writes the same as one summary line per interval.
package top

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/gdamore/tcell/v2"

	"github.com/tcptrace/tcptrace/aggregate"
	"github.com/tcptrace/tcptrace/events"
)

// Snapshot is one interval, as the stream's goroutine hands it over.
type Snapshot struct {
	Interval   aggregate.Interval
	Sockets    [aggregate.States]int64
	CloseWaits map[aggregate.Process]int64
	Lost       uint64
}

// Take copies what a snapshot needs from a, ending its interval at now.
func Take(a *aggregate.Aggregate, now time.Time, lost uint64) Snapshot {
	s := Snapshot{Interval: a.Take(now), Sockets: a.Sockets(), Lost: lost, CloseWaits: make(map[aggregate.Process]int64, len(a.CloseWaits))}
	for p, n := range a.CloseWaits {
		s.CloseWaits[p] = n
	}
	return s
}

// Sort is the column the tables are sorted by.
type Sort int

const (
	ByNew Sort = iota
	ByCloseWait
	ByTimeWait
	ByResets
	ByRefused
	sorts
)

func (s Sort) String() string {
	return [...]string{"new connections", "CLOSE_WAIT held", "TIME_WAIT created", "resets", "refused connects"}[s]
}

// SortKeys are the names --sort takes, in Sort's order.
var SortKeys = [sorts]string{"new", "close-wait", "time-wait", "resets", "refused"}

// ParseSort reads a --sort key.
func ParseSort(key string) (Sort, error) {
	for i, k := range SortKeys {
		if k == key {
			return Sort(i), nil
		}
	}
	return 0, fmt.Errorf("sort key %q: want one of %s", key, strings.Join(SortKeys[:], ", "))
}

// row is one process or peer.
type row struct {
	name                            string
	new, timeWaits, resets, refused uint64
	closeWaitHeld                   int64
}

func (s Sort) less(a, b row) int {
	var c int
	switch s {
	case ByNew:
		c = cmp.Compare(b.new, a.new)
	case ByCloseWait:
		c = cmp.Compare(b.closeWaitHeld, a.closeWaitHeld)
	case ByTimeWait:
		c = cmp.Compare(b.timeWaits, a.timeWaits)
	case ByResets:
		c = cmp.Compare(b.resets, a.resets)
	case ByRefused:
		c = cmp.Compare(b.refused, a.refused)
	}
	return cmp.Or(c, cmp.Compare(b.new, a.new), strings.Compare(a.name, b.name))
}

func processRows(s *Snapshot) []row {
	byName := map[aggregate.Process]*row{}
	get := func(p aggregate.Process) *row {
		r := byName[p]
		if r == nil {
			name := fmt.Sprintf("%d %s", p.PID, p.Comm)
			if p.PID == 0 {
				name = "(unknown)"
			}
			r = &row{name: name}
			byName[p] = r
		}
		return r
	}
	for p, c := range s.Interval.Processes {
		r := get(p)
		r.new, r.timeWaits, r.resets, r.refused = c.New, c.TimeWaits, c.Resets, c.Refused
	}
	for p, n := range s.CloseWaits {
		get(p).closeWaitHeld = n
	}
	rows := make([]row, 0, len(byName))
	for _, r := range byName {
		rows = append(rows, *r)
	}
	return rows
}

func peerRows(s *Snapshot) []row {
	rows := make([]row, 0, len(s.Interval.Peers))
	for a, c := range s.Interval.Peers {
		rows = append(rows, row{name: a.String(), new: c.New, timeWaits: c.TimeWaits, resets: c.Resets, refused: c.Refused})
	}
	return rows
}

// totals is what the header line shows, per second.
func totals(s *Snapshot) (secs, transitions, resets, refusals float64) {
	iv := &s.Interval
	secs = max(iv.End.Sub(iv.Start).Seconds(), 1e-3)
	return secs, float64(iv.Events) / secs, float64(iv.Closes[events.CauseResetReceived]+iv.Closes[events.CauseResetSent]) / secs,
		float64(iv.Closes[events.CauseRefused]) / secs
}

func socketsLine(s *Snapshot) string {
	var b strings.Builder
	b.WriteString("sockets:")
	for st, n := range s.Sockets {
		if n > 0 && events.State(st) != events.Close {
			fmt.Fprintf(&b, " %s %d", events.State(st), n)
		}
	}
	return b.String()
}

// Plain writes one snapshot as one line, with the top process by sort:
// for a stdout that is no terminal.
func Plain(w io.Writer, s *Snapshot, sort Sort) error {
	_, tps, rps, fps := totals(s)
	line := fmt.Sprintf("%s transitions/s %.0f resets/s %.1f refusals/s %.1f lost %d; %s",
		s.Interval.End.Format("15:04:05"), tps, rps, fps, s.Lost, socketsLine(s))
	if rows := processRows(s); len(rows) > 0 {
		slices.SortFunc(rows, sort.less)
		r := rows[0]
		line += fmt.Sprintf("; top process %s: %d new, %d CLOSE_WAIT held, %d TIME_WAIT, %d resets, %d refused",
			r.name, r.new, r.closeWaitHeld, r.timeWaits, r.resets, r.refused)
	}
	_, err := fmt.Fprintln(w, line)
	return err
}

// Screen is the full-screen view.
type Screen struct {
	scr    tcell.Screen
	sort   Sort
	rows   int // rows per table at most; 0: as many as fit
	paused bool
	last   *Snapshot
}

// NewScreen takes over the terminal, its tables sorted by sort, with at
// most rows rows each (0: as many as fit).
func NewScreen(sort Sort, rows int) (*Screen, error) {
	scr, err := tcell.NewScreen()
	if err != nil {
		return nil, fmt.Errorf("terminal: %w", err)
	}
	if err := scr.Init(); err != nil {
		return nil, fmt.Errorf("terminal: %w", err)
	}
	return &Screen{scr: scr, sort: sort, rows: rows}, nil
}

// Run shows the snapshots until the user quits (q, Ctrl-C) or ctx ends,
// then gives the terminal back.
func (t *Screen) Run(ctx context.Context, snaps <-chan Snapshot) {
	defer t.scr.Fini()
	keys := make(chan tcell.Event, 8)
	go func() {
		for {
			ev := t.scr.PollEvent()
			if ev == nil {
				return // Fini
			}
			keys <- ev
		}
	}()
	t.draw()
	for {
		select {
		case <-ctx.Done():
			return
		case s := <-snaps:
			if !t.paused {
				t.last = &s
				t.draw()
			}
		case ev := <-keys:
			switch ev := ev.(type) {
			case *tcell.EventResize:
				t.scr.Sync()
				t.draw()
			case *tcell.EventKey:
				switch {
				case ev.Key() == tcell.KeyCtrlC || ev.Rune() == 'q':
					return
				case ev.Rune() == 's':
					t.sort = (t.sort + 1) % sorts
					t.draw()
				case ev.Rune() == 'p' || ev.Rune() == ' ':
					t.paused = !t.paused
					t.draw()
				}
			}
		}
	}
}

var (
	plain  = tcell.StyleDefault
	bold   = tcell.StyleDefault.Bold(true)
	header = tcell.StyleDefault.Reverse(true)
)

func (t *Screen) put(y int, style tcell.Style, s string) {
	w, _ := t.scr.Size()
	x := 0
	for _, r := range s {
		if x >= w {
			break
		}
		t.scr.SetContent(x, y, r, nil, style)
		x++
	}
	for ; x < w && style == header; x++ {
		t.scr.SetContent(x, y, ' ', nil, style)
	}
}

func (t *Screen) draw() {
	t.scr.Clear()
	_, h := t.scr.Size()
	state := ""
	if t.paused {
		state = "  PAUSED"
	}
	t.put(0, header, fmt.Sprintf("tcptrace top%s   q quit   s sort (by %s)   p pause", state, t.sort))
	s := t.last
	if s == nil {
		t.put(2, plain, "waiting for the first interval...")
		t.scr.Show()
		return
	}
	secs, tps, rps, fps := totals(s)
	t.put(1, bold, fmt.Sprintf("%s   transitions/s %.0f   resets/s %.1f   refusals/s %.1f   lost %d",
		s.Interval.End.Format("15:04:05"), tps, rps, fps, s.Lost))
	t.put(2, plain, socketsLine(s))
	y := 4
	table := func(title string, rows []row, withHeld bool) {
		if y >= h-1 {
			return
		}
		slices.SortFunc(rows, t.sort.less)
		held := ""
		if withHeld {
			held = "  CLOSE_WAIT held"
		}
		t.put(y, header, fmt.Sprintf("%-32s %8s %11s %9s %10s%s", title, "NEW/s", "TIME_WAIT/s", "RESETS/s", "REFUSED/s", held))
		y++
		room := (h-4)/2 - 2
		if t.rows > 0 {
			room = min(room, t.rows)
		}
		for i, r := range rows {
			if i >= room || y >= h {
				break
			}
			line := fmt.Sprintf("%-32s %8.1f %11.1f %9.1f %10.1f", trim(r.name, 32), float64(r.new)/secs,
				float64(r.timeWaits)/secs, float64(r.resets)/secs, float64(r.refused)/secs)
			if withHeld {
				line += fmt.Sprintf("  %16d", r.closeWaitHeld)
			}
			t.put(y, plain, line)
			y++
		}
		y++
	}
	table("PROCESS", processRows(s), true)
	table("PEER", peerRows(s), false)
	t.scr.Show()
}

func trim(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
