package stuck

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"text/tabwriter"
)

// WriteText writes rep for a person: the stuck sockets, the summary per
// process, failed handshakes, accept queues, then the verdicts.
func WriteText(w io.Writer, rep *Report, top int) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s  stuck for %s or more: %d sockets\n\n", rep.Time.Local().Format("15:04:05"), ageText(rep.Threshold), len(rep.Sockets))
	var held, orphans []Socket
	for _, s := range rep.Sockets {
		if s.Orphan {
			orphans = append(orphans, s)
		} else {
			held = append(held, s)
		}
	}
	writeSockets(&b, held, top)
	if len(rep.ByProcess) > 0 {
		b.WriteString("\n")
		tw := tabwriter.NewWriter(&b, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "PID\tCOMM\tUNIT\tSTATE\tSOCKETS\tOLDEST\tUNREAD")
		for _, p := range rep.ByProcess {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%d\n", p.PID, dash(p.Comm), dash(p.Unit), p.State, p.Count, AgeText(p.Oldest, p.OldestKnown), p.Unread)
		}
		tw.Flush()
	}
	if len(orphans) > 0 {
		fmt.Fprintf(&b, "\norphaned FIN_WAIT2 (closed here, no process holds them; their peers have not closed): %d\n", len(orphans))
		writeSockets(&b, orphans, top)
	}
	if len(rep.HandshakeFailures) > 0 {
		b.WriteString("\nfailed handshakes since start:\n")
		for i, f := range rep.HandshakeFailures {
			if i == top {
				break
			}
			where := "connects to " + net.JoinHostPort(f.RAddr, strconv.Itoa(int(f.RPort)))
			if f.Side == "server" {
				where = fmt.Sprintf("server handshakes on port %d", f.LPort)
			}
			fmt.Fprintf(&b, "  %s: %d (%s)\n", where, f.Total, causes(f.Causes))
		}
	}
	full := 0
	for _, l := range rep.Listeners {
		if l.Queued > 0 {
			full++
		}
	}
	fmt.Fprintf(&b, "\naccept queues: %d listeners, %d with connections waiting; ListenOverflows %d (+%.0f/s), ListenDrops %d (+%.0f/s)\n",
		len(rep.Listeners), full, rep.Counters["ListenOverflows"].Total, rep.Counters["ListenOverflows"].PerS,
		rep.Counters["ListenDrops"].Total, rep.Counters["ListenDrops"].PerS)
	for _, l := range rep.Listeners {
		if l.Queued > 0 {
			fmt.Fprintf(&b, "  %s pid %d %s: %d queued of %d\n", net.JoinHostPort(l.LAddr, strconv.Itoa(int(l.LPort))), l.PID, dash(l.Comm), l.Queued, l.Backlog)
		}
	}
	b.WriteString("\n")
	if len(rep.Verdicts) == 0 {
		b.WriteString("verdict: nothing stuck\n")
	}
	for _, v := range rep.Verdicts {
		fmt.Fprintf(&b, "! %s\n", v)
	}
	b.WriteString("\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// writeSockets writes up to top sockets as a table, and how many more
// there are.
func writeSockets(b *strings.Builder, socks []Socket, top int) {
	tw := tabwriter.NewWriter(b, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "PID\tCOMM\tUNIT\tSTATE\tLOCAL\tREMOTE\tAGE\tRECV-Q\tUNREAD")
	for i, s := range socks {
		if i == top {
			fmt.Fprintf(tw, "... %d more (--top)\n", len(socks)-top)
			break
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\n", s.PID, dash(s.Comm), dash(s.Unit), s.State,
			net.JoinHostPort(s.LAddr, strconv.Itoa(int(s.LPort))), net.JoinHostPort(s.RAddr, strconv.Itoa(int(s.RPort))),
			AgeText(s.Age, s.AgeKnown), s.RecvQ, s.Unread)
	}
	tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func causes(m map[string]uint64) string {
	var parts []string
	for _, c := range []string{"refused", "timeout", "no_port", "unreachable", "reset_received", "reset_sent", "closed"} {
		if n := m[c]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", c, n))
		}
	}
	return strings.Join(parts, ", ")
}

// WriteJSON writes rep as one JSON object on a line, its time in UTC.
func WriteJSON(w io.Writer, rep *Report) error {
	c := *rep
	c.Time = c.Time.UTC()
	return json.NewEncoder(w).Encode(&c)
}
