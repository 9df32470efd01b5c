// Package graph draws what the kernel's TCP state machine did: the
// observed machine as Graphviz DOT (states as nodes, each transition seen
// as an edge labelled with its count and the median time spent in the
// state it left), and the ladder diagram of one connection, both of its
// ends side by side when both are on this host, as text and SVG.
package graph

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/tcptrace/tcptrace/aggregate"
	"github.com/tcptrace/tcptrace/events"
)

// Machine counts transitions and the dwell before each: a stream.Consumer.
type Machine struct {
	Count [aggregate.States][aggregate.States]uint64
	Dwell [aggregate.States][aggregate.States]aggregate.Histogram
}

// Write counts one event.
func (m *Machine) Write(e *events.Event) error {
	if e.Old >= aggregate.States || e.New >= aggregate.States {
		return nil
	}
	m.Count[e.Old][e.New]++
	if e.DwellKnown {
		m.Dwell[e.Old][e.New].Add(e.Dwell)
	}
	return nil
}

// Flush does nothing: nothing is buffered.
func (m *Machine) Flush() error { return nil }

// Where each state sits: the textbook's layout, the handshake above, the
// active close on the left, the passive close on the right.
var rank = map[events.State]int{
	events.Close: 0, events.Listen: 1, events.SynSent: 1, events.SynRecv: 2, events.Established: 3,
	events.FinWait1: 4, events.CloseWait: 4, events.FinWait2: 5, events.Closing: 5, events.LastAck: 5,
	events.TimeWait: 6,
}

// DOT writes the observed machine: only the states and edges seen. An
// edge's label is its count and, where the time in the state it leaves
// is known, that time: exact for one transition, else its median (the
// middle of its log2 bucket, within 41%).
func (m *Machine) DOT(w io.Writer) error {
	var b strings.Builder
	b.WriteString("digraph tcp {\n")
	b.WriteString("  rankdir=TB;\n  node [shape=box, style=rounded, fontname=\"Helvetica\"];\n  edge [fontname=\"Helvetica\", fontsize=10];\n")
	seen := map[events.State]bool{}
	for o := range aggregate.States {
		for n := range aggregate.States {
			if m.Count[o][n] > 0 {
				seen[events.State(o)], seen[events.State(n)] = true, true
			}
		}
	}
	// states of one rank side by side
	byRank := map[int][]string{}
	for st := range seen {
		r, ok := rank[st]
		if !ok {
			r = 7
		}
		byRank[r] = append(byRank[r], fmt.Sprintf("%q", st.String()))
	}
	for r := 0; r <= 7; r++ {
		if names := byRank[r]; len(names) > 0 {
			slices.Sort(names)
			fmt.Fprintf(&b, "  { rank=same; %s; }\n", strings.Join(names, "; "))
		}
	}
	for o := range aggregate.States {
		for n := range aggregate.States {
			c := m.Count[o][n]
			if c == 0 {
				continue
			}
			label := fmt.Sprint(c)
			switch h := &m.Dwell[o][n]; {
			case h.Count == 1:
				label += "\\nafter " + short(h.Sum) // exact
			case h.Count > 1:
				// the middle of the median's log2 bucket: within 41%
				label += "\\nmedian ~" + short(h.Quantile(0.5))
			}
			// DOT reads \n in a quoted label as a line break
			fmt.Fprintf(&b, "  %q -> %q [label=\"%s\"];\n", events.State(o).String(), events.State(n).String(), label)
		}
	}
	b.WriteString("}\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// short writes d in its largest unit with at most three digits.
func short(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%dus", d/time.Microsecond)
	case d < time.Second:
		return fmt.Sprintf("%.3gms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.3gs", d.Seconds())
	}
}
