// Package report writes aggregate intervals (package aggregate) for people,
// as text with terminal histograms, and for machines, as one JSON object
// per interval. The README's "tcptrace stats" documents every JSON key.
package report

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/tcptrace/tcptrace/aggregate"
	"github.com/tcptrace/tcptrace/events"
)

// Extra is what a report adds to its interval: records lost so far, and
// the CLOSE_WAITs each process holds now (aggregate.CloseWaits: a gauge,
// counted from the start, from those held then on).
type Extra struct {
	Lost          uint64
	CloseWaitHeld map[aggregate.Process]int64
}

// Held is one process's CLOSE_WAITs held now.
type Held struct {
	PID   uint32 `json:"pid"`
	Comm  string `json:"comm"`
	Count int64  `json:"count"`
}

// held is x's CLOSE_WAITs held, most first, at most top.
func held(x Extra, top int) []Held {
	out := []Held{}
	for p, n := range x.CloseWaitHeld {
		if n > 0 {
			out = append(out, Held{PID: p.PID, Comm: p.Comm, Count: n})
		}
	}
	slices.SortFunc(out, func(a, b Held) int { return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.PID, b.PID)) })
	return out[:min(len(out), top)]
}

// JSON is one interval as the JSON object `tcptrace stats --json` writes.
type JSON struct {
	Start       time.Time            `json:"start"`
	End         time.Time            `json:"end"`
	Events      uint64               `json:"events"`
	Lost        uint64               `json:"lost"`
	Transitions []Transition         `json:"transitions"`
	Closes      map[string]uint64    `json:"closes"`
	Sockets     map[string]int64     `json:"sockets"`
	Histograms  map[string]Histogram `json:"histograms"`
	Top         TopJSON              `json:"top"`
	// CloseWaitHeld: the processes holding CLOSE_WAITs now, most first
	CloseWaitHeld []Held `json:"close_wait_held"`
	Dropped       uint64 `json:"dropped"`
}

// Transition is one cell of the matrix.
type Transition struct {
	Old   string `json:"old"`
	New   string `json:"new"`
	Count uint64 `json:"count"`
}

// Histogram is a histogram's summary and its non-empty buckets.
type Histogram struct {
	Count   uint64   `json:"count"`
	SumMs   float64  `json:"sum_ms"`
	P50Ms   float64  `json:"p50_ms"`
	P99Ms   float64  `json:"p99_ms"`
	Buckets []Bucket `json:"buckets"`
}

// Bucket counts times from FromUs (inclusive) to ToUs (exclusive).
type Bucket struct {
	FromUs uint64 `json:"from_us"`
	ToUs   uint64 `json:"to_us"`
	Count  uint64 `json:"count"`
}

// TopJSON holds the top tables.
type TopJSON struct {
	Processes []RowJSON `json:"processes"`
	Peers     []RowJSON `json:"peers"`
	Ports     []RowJSON `json:"ports"`
}

// RowJSON is a Row with its key in its own field.
type RowJSON struct {
	PID        uint32 `json:"pid,omitempty"`
	Comm       string `json:"comm,omitempty"`
	Addr       string `json:"addr,omitempty"`
	Port       uint16 `json:"port,omitempty"`
	New        uint64 `json:"new"`
	Resets     uint64 `json:"resets"`
	Refused    uint64 `json:"refused"`
	TimeWaits  uint64 `json:"time_waits"`
	CloseWaits uint64 `json:"close_waits"`
}

func rowJSON(c *aggregate.Counts) RowJSON {
	return RowJSON{New: c.New, Resets: c.Resets, Refused: c.Refused, TimeWaits: c.TimeWaits, CloseWaits: c.CloseWait}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// ToJSON builds an interval's JSON object, with at most top rows a table.
func ToJSON(iv *aggregate.Interval, sockets *[aggregate.States]int64, x Extra, top int) JSON {
	j := JSON{Start: iv.Start.UTC(), End: iv.End.UTC(), Events: iv.Events, Lost: x.Lost, Dropped: iv.Dropped,
		Transitions: []Transition{}, Closes: map[string]uint64{}, Sockets: map[string]int64{}, Histograms: map[string]Histogram{}}
	for o := range aggregate.States {
		for n := range aggregate.States {
			if c := iv.Matrix[o][n]; c > 0 {
				j.Transitions = append(j.Transitions, Transition{events.State(o).String(), events.State(n).String(), c})
			}
		}
	}
	for c, n := range iv.Closes {
		if events.Cause(c) != events.CauseNone {
			j.Closes[events.Cause(c).String()] = n
		}
	}
	for st, n := range sockets {
		if st != 0 && events.State(st) != events.Close {
			j.Sockets[events.State(st).String()] = n
		}
	}
	for k, h := range iv.Histograms {
		hj := Histogram{Count: h.Count, SumMs: ms(h.Sum), P50Ms: ms(h.Quantile(0.5)), P99Ms: ms(h.Quantile(0.99)), Buckets: []Bucket{}}
		for b, n := range h.Buckets {
			if n > 0 {
				hj.Buckets = append(hj.Buckets, Bucket{uint64(aggregate.BucketStart(b) / time.Microsecond), uint64(aggregate.BucketStart(b+1) / time.Microsecond), n})
			}
		}
		j.Histograms[aggregate.HistogramNames[k]] = hj
	}
	j.CloseWaitHeld = held(x, top)
	j.Top.Processes = []RowJSON{}
	for _, r := range topKeys(iv.Processes, top) {
		row := rowJSON(iv.Processes[r])
		row.PID, row.Comm = r.PID, r.Comm
		j.Top.Processes = append(j.Top.Processes, row)
	}
	j.Top.Peers = []RowJSON{}
	for _, a := range topKeys(iv.Peers, top) {
		row := rowJSON(iv.Peers[a])
		row.Addr = a.String()
		j.Top.Peers = append(j.Top.Peers, row)
	}
	j.Top.Ports = []RowJSON{}
	for _, p := range topKeys(iv.Ports, top) {
		row := rowJSON(iv.Ports[p])
		row.Port = p
		j.Top.Ports = append(j.Top.Ports, row)
	}
	return j
}

// topKeys is Top's order, keys only.
func topKeys[K comparable](m map[K]*aggregate.Counts, n int) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b K) int {
		x, y := m[a], m[b]
		return cmp.Or(cmp.Compare(y.New, x.New), cmp.Compare(y.TimeWaits, x.TimeWaits), cmp.Compare(y.CloseWait, x.CloseWait),
			cmp.Compare(y.Resets, x.Resets), cmp.Compare(y.Refused, x.Refused), strings.Compare(fmt.Sprint(a), fmt.Sprint(b)))
	})
	return keys[:min(n, len(keys))]
}

// WriteJSON writes an interval as one line of JSON.
func WriteJSON(w io.Writer, iv *aggregate.Interval, sockets *[aggregate.States]int64, x Extra, top int) error {
	return json.NewEncoder(w).Encode(ToJSON(iv, sockets, x, top))
}

// histogramWidth is the bars' width in the text report.
const histogramWidth = 40

// WriteText writes an interval for a terminal: the transitions, closes by
// cause, sockets per state, the histograms as bars, the top tables.
func WriteText(w io.Writer, iv *aggregate.Interval, sockets *[aggregate.States]int64, x Extra, top int) error {
	var b strings.Builder
	secs := iv.End.Sub(iv.Start).Seconds()
	fmt.Fprintf(&b, "%s  %.1fs  %d events (%.0f/s)  %d lost\n", iv.End.Local().Format("15:04:05"), secs, iv.Events,
		float64(iv.Events)/max(secs, 1e-9), x.Lost)
	b.WriteString("\ntransitions\n")
	for o := range aggregate.States {
		for n := range aggregate.States {
			if c := iv.Matrix[o][n]; c > 0 {
				fmt.Fprintf(&b, "  %-12s -> %-12s %10d\n", events.State(o), events.State(n), c)
			}
		}
	}
	b.WriteString("\ncloses by cause:")
	for c, n := range iv.Closes {
		if events.Cause(c) != events.CauseNone && n > 0 {
			fmt.Fprintf(&b, "  %s %d", events.Cause(c), n)
		}
	}
	b.WriteString("\nsockets now:")
	for st, n := range sockets {
		if st != 0 && events.State(st) != events.Close && n > 0 {
			fmt.Fprintf(&b, "  %s %d", events.State(st), n)
		}
	}
	b.WriteString("\n")
	if hs := held(x, top); len(hs) > 0 {
		b.WriteString("CLOSE_WAIT held now:")
		for _, h := range hs {
			fmt.Fprintf(&b, "  %d %s %d", h.PID, h.Comm, h.Count)
		}
		b.WriteString("\n")
	}
	for k, h := range iv.Histograms {
		if h.Count == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n%s: %d, p50 %v, p99 %v\n", strings.ReplaceAll(aggregate.HistogramNames[k], "_", " "), h.Count,
			h.Quantile(0.5).Round(time.Microsecond), h.Quantile(0.99).Round(time.Microsecond))
		first := slices.IndexFunc(h.Buckets[:], func(n uint64) bool { return n > 0 })
		last := first
		for k, n := range h.Buckets {
			if n > 0 {
				last = k
			}
		}
		most := slices.Max(h.Buckets[:])
		for k := first; k <= last; k++ {
			n := h.Buckets[k]
			bar := int((n*histogramWidth + most - 1) / most)
			fmt.Fprintf(&b, "  %9v - %-9v |%-*s| %d\n", aggregate.BucketStart(k), aggregate.BucketStart(k+1), histogramWidth, strings.Repeat("#", bar), n)
		}
	}
	table := func(title, head string, rows [][2]string) {
		if len(rows) == 0 {
			return
		}
		fmt.Fprintf(&b, "\n%s\n  %-28s %8s %8s %8s %10s %10s\n", title, head, "NEW", "RESETS", "REFUSED", "TIME_WAIT", "CLOSE_WAIT")
		for _, r := range rows {
			fmt.Fprintf(&b, "  %-28s %s\n", r[0], r[1])
		}
	}
	counts := func(c *aggregate.Counts) string {
		return fmt.Sprintf("%8d %8d %8d %10d %10d", c.New, c.Resets, c.Refused, c.TimeWaits, c.CloseWait)
	}
	var rows [][2]string
	for _, p := range topKeys(iv.Processes, top) {
		name := fmt.Sprintf("%d %s", p.PID, p.Comm)
		if p.PID == 0 {
			name = "(unknown)"
		}
		rows = append(rows, [2]string{name, counts(iv.Processes[p])})
	}
	table("top processes", "PID COMM", rows)
	rows = nil
	for _, a := range topKeys(iv.Peers, top) {
		rows = append(rows, [2]string{a.String(), counts(iv.Peers[a])})
	}
	table("top peers", "REMOTE ADDRESS", rows)
	rows = nil
	for _, p := range topKeys(iv.Ports, top) {
		rows = append(rows, [2]string{fmt.Sprint(p), counts(iv.Ports[p])})
	}
	table("top local ports (new server connections)", "PORT", rows)
	if iv.Dropped > 0 {
		fmt.Fprintf(&b, "\n%d events not in the top tables: --max-keys reached\n", iv.Dropped)
	}
	b.WriteString("\n")
	_, err := io.WriteString(w, b.String())
	return err
}
