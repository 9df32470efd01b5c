package storm

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// WriteText writes rep for a person: the totals and settings, the top
// destinations and server ports, then the verdicts.
func WriteText(w io.Writer, rep *Report, top int) error {
	var b strings.Builder
	st := &rep.Settings
	fmt.Fprintf(&b, "%s  TIME_WAIT %d (tcp_max_tw_buckets %d)  usable ports %d (%d-%d)  tcp_tw_reuse %d  tcp_fin_timeout %d\n",
		rep.Time.Local().Format("15:04:05"), rep.TimeWaitTotal, st.MaxTWBuckets, st.UsablePorts, st.PortRange[0], st.PortRange[1], st.TWReuse, st.FinTimeout)
	fmt.Fprintf(&b, "counters:")
	for _, name := range reportedCounters {
		c := rep.Counters[name]
		fmt.Fprintf(&b, "  %s %d (+%.0f/s)", name, c.Total, c.PerS)
	}
	b.WriteString("\n\n")
	tw := tabwriter.NewWriter(&b, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "CLIENT -> DESTINATION\tTIME_WAIT\tLIVE\tNEW/S\tEXPECTED\tRANGE%\tNO PORT\tSYN_SENT ms\tOWNERS")
	n := 0
	for _, d := range rep.Destinations {
		if d.ActiveCloser != "client" || n == top {
			continue
		}
		n++
		fmt.Fprintf(tw, "%s -> %s\t%d\t%d\t%.0f\t%d\t%.1f\t%d\t%.2f\t%s\n", d.LAddr, net.JoinHostPort(d.RAddr, strconv.Itoa(int(d.RPort))), d.TimeWait, d.Live,
			d.CreatedPerS, d.Expected, *d.PortRangeUsedPct, d.ConnectFailures, d.HandshakeMs, who(d.Owners))
	}
	if n == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	tw.Flush()
	b.WriteString("\n")
	tw = tabwriter.NewWriter(&b, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVER PORT\tTIME_WAIT\tNEW/S\tMEMORY\tLISTENING\tCLEARS AT")
	for i, sp := range rep.ServerPorts {
		if i == top {
			break
		}
		listening := "no"
		if sp.Listening {
			listening = "yes"
		}
		clears := "-"
		if sp.TimeWait > 0 {
			clears = sp.ClearsAt.Local().Format("15:04:05")
		}
		fmt.Fprintf(tw, "%d\t%d\t%.0f\t%s\t%s\t%s\n", sp.Port, sp.TimeWait, sp.CreatedPerS, size(sp.MemoryBytes), listening, clears)
	}
	if len(rep.ServerPorts) == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	tw.Flush()
	b.WriteString("\n")
	if len(rep.Verdicts) == 0 {
		b.WriteString("verdict: nothing wrong: no destination near exhaustion, no failed connect, no overflow\n")
	}
	for _, v := range rep.Verdicts {
		mark := "!"
		if v.Severity == "info" {
			mark = "-"
		}
		fmt.Fprintf(&b, "%s %s\n", mark, v.Text)
	}
	b.WriteString("\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON writes rep as one JSON object on a line, its times in UTC.
func WriteJSON(w io.Writer, rep *Report) error {
	c := *rep
	c.Time = c.Time.UTC()
	c.ServerPorts = slices.Clone(rep.ServerPorts)
	for i := range c.ServerPorts {
		if at := c.ServerPorts[i].ClearsAt; at != nil {
			utc := at.UTC()
			c.ServerPorts[i].ClearsAt = &utc
		}
	}
	return json.NewEncoder(w).Encode(&c)
}
