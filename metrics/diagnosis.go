package metrics

import (
	"cmp"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/sockdiag"
	"github.com/tcptrace/tcptrace/storm"
	"github.com/tcptrace/tcptrace/stuck"
)

// DefaultDiagnoseEvery is how often the agent dumps the namespace's
// sockets for the port-range and stuck-socket metrics: a dump's cost
// grows with the sockets, so it runs on this timer, never at a scrape.
const DefaultDiagnoseEvery = 15 * time.Second

// Diagnosis exports what tcptrace timewait and tcptrace closewait find,
// with bounded labels: connect failures by cause, the port range's use by
// the busiest destination, CLOSE_WAITs held past a threshold per process
// name; per destination (remote address and port) only when asked for.
// Write and Refresh run on the stream's goroutine, Collect on the HTTP
// server's.
type Diagnosis struct {
	storm     *storm.Tracker
	stormRep  *storm.Reporter
	stuck     *stuck.Tracker
	stuckRep  *stuck.Reporter
	prober    *sockdiag.Prober
	netns     uint32
	topK      int
	dests     int // per-destination series: 0 off
	every     time.Duration
	lastCheck time.Time

	mu       sync.Mutex
	failures [16]uint64 // SYN_SENT -> CLOSE by cause
	usable   int
	maxUsed  float64
	stuckBy  map[string]int // CLOSE_WAIT past the threshold by comm, top K and other
	top      []storm.Destination
	err      error

	descs struct{ failures, usable, maxUsed, stuck, destTW, destCreated, destUsed, destFailures *prometheus.Desc }
}

// NewDiagnosis diagnoses netns every so often, with topK process names
// and, if dests is not 0, series for that many destinations with the
// most TIME_WAIT.
func NewDiagnosis(netns uint32, every time.Duration, topK, dests int, threshold time.Duration, unit func(uint64) string) *Diagnosis {
	now := time.Now()
	st := storm.NewTracker(0)
	st.OnlyNetns(netns)
	cw := stuck.NewTrackerOf(events.CloseWait)
	d := &Diagnosis{storm: st, stormRep: storm.NewReporter(st, unit, 0, now), stuck: cw, stuckRep: stuck.NewReporter(cw, unit, threshold, now),
		prober: sockdiag.NewProber(), netns: netns, every: every, topK: topK, dests: dests, stuckBy: map[string]int{}}
	x := &d.descs
	x.failures = prometheus.NewDesc("tcptrace_connect_failures_total", "Connects that failed in SYN_SENT, by cause: refused, timeout, unreachable, no_port (no free local port, EADDRNOTAVAIL), reset_received, closed.", []string{"cause"}, nil)
	x.usable = prometheus.NewDesc("tcptrace_port_range_usable_ports", "Local ports connect() may pick from: ip_local_port_range minus ip_local_reserved_ports.", nil, nil)
	x.maxUsed = prometheus.NewDesc("tcptrace_port_range_used_ratio_max", "Of the destinations (source address to remote address and port), the highest share of the usable port range held by TIME_WAIT and live connections (1 = exhausted).", nil, nil)
	x.stuck = prometheus.NewDesc("tcptrace_close_wait_stuck_sockets", "CLOSE_WAIT sockets held longer than --closewait-threshold, by owning process name: a leak (the process never calls close()).", []string{"comm"}, nil)
	labels := []string{"laddr", "raddr", "rport"}
	x.destTW = prometheus.NewDesc("tcptrace_destination_timewait_sockets", "TIME_WAIT sockets now toward a destination, for the --destinations with the most.", labels, nil)
	x.destCreated = prometheus.NewDesc("tcptrace_destination_timewait_created_total", "TIME_WAITs entered toward a destination since the agent started.", labels, nil)
	x.destUsed = prometheus.NewDesc("tcptrace_destination_port_range_used_ratio", "Share of the usable port range held toward a destination.", labels, nil)
	x.destFailures = prometheus.NewDesc("tcptrace_destination_connect_failures_total", "Connects toward a destination that found no free local port.", labels, nil)
	return d
}

// Close releases the namespace's sock_diag connection.
func (d *Diagnosis) Close() { d.prober.Close() }

// Seed takes the holders at start and finds the CLOSE_WAITs already held
// and the listeners already there.
func (d *Diagnosis) Seed(holders []events.Holder) {
	var socks []sockdiag.Detail
	snap, err := storm.Take(d.prober, d.storm, d.netns, 0, func(s *sockdiag.Detail) {
		if s.State == events.CloseWait || s.State == events.Listen {
			socks = append(socks, *s)
		}
	})
	if err != nil {
		d.setErr(err)
		return
	}
	d.storm.Seed(snap)
	d.stuck.Seed(holders, socks, d.netns, snap.Time)
	d.stormRep.Start(snap.Time)
}

func (d *Diagnosis) setErr(err error) {
	d.mu.Lock()
	d.err = err
	d.mu.Unlock()
}

// Err is the last refresh's error, if any.
func (d *Diagnosis) Err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

// Write counts one event.
func (d *Diagnosis) Write(e *events.Event) error {
	if e.Old == events.SynSent && e.New == events.Close {
		d.mu.Lock()
		d.failures[e.Cause&15]++
		d.mu.Unlock()
	}
	d.storm.Write(e)
	return d.stuck.Write(e)
}

// Flush does nothing.
func (d *Diagnosis) Flush() error { return nil }

// Refresh dumps the namespace and sets the gauges, at most once per
// period.
func (d *Diagnosis) Refresh(now time.Time) {
	if now.Sub(d.lastCheck) < d.every {
		return
	}
	d.lastCheck = now
	// the same dump serves the CLOSE_WAITs
	cw := &stuck.Snapshot{Netns: d.netns}
	snap, err := storm.Take(d.prober, d.storm, d.netns, 0, func(s *sockdiag.Detail) {
		if s.State == events.CloseWait {
			cw.Sockets = append(cw.Sockets, *s)
		}
	})
	if err != nil {
		d.setErr(err)
		return
	}
	rep := d.stormRep.Build(snap)
	cw.Time = snap.Time
	stuckRep := d.stuckRep.Build(cw)

	maxUsed := 0.0
	var top []storm.Destination
	for _, dst := range rep.Destinations {
		if dst.PortRangeUsedPct == nil {
			continue
		}
		maxUsed = max(maxUsed, *dst.PortRangeUsedPct/100)
		if len(top) < d.dests {
			top = append(top, dst)
		}
	}
	byComm := map[string]int{}
	for _, p := range stuckRep.ByProcess {
		comm := p.Comm
		if p.PID == 0 {
			comm = "unknown"
		}
		byComm[comm] += p.Count
	}
	d.mu.Lock()
	d.err = nil
	d.usable, d.maxUsed, d.top = rep.Settings.UsablePorts, maxUsed, top
	d.stuckBy = topOther(byComm, d.topK)
	d.mu.Unlock()
}

// topOther keeps the k names with the most, and sums the rest as other.
func topOther(m map[string]int, k int) map[string]int {
	if len(m) <= k {
		return m
	}
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b string) int { return cmp.Or(cmp.Compare(m[b], m[a]), cmp.Compare(a, b)) })
	out := map[string]int{}
	for i, n := range names {
		if i < k {
			out[n] = m[n]
		} else {
			out[Other] += m[n]
		}
	}
	return out
}

// Describe sends the descriptions.
func (d *Diagnosis) Describe(ch chan<- *prometheus.Desc) {
	x := &d.descs
	for _, desc := range []*prometheus.Desc{x.failures, x.usable, x.maxUsed, x.stuck, x.destTW, x.destCreated, x.destUsed, x.destFailures} {
		ch <- desc
	}
}

// Collect sends the values of the last refresh: no dump at a scrape.
func (d *Diagnosis) Collect(ch chan<- prometheus.Metric) {
	d.mu.Lock()
	defer d.mu.Unlock()
	x := &d.descs
	for _, c := range []events.Cause{events.CauseRefused, events.CauseTimeout, events.CauseUnreachable, events.CauseNoPort,
		events.CauseResetReceived, events.CauseClosed} {
		ch <- prometheus.MustNewConstMetric(x.failures, prometheus.CounterValue, float64(d.failures[c]), c.String())
	}
	ch <- prometheus.MustNewConstMetric(x.usable, prometheus.GaugeValue, float64(d.usable))
	ch <- prometheus.MustNewConstMetric(x.maxUsed, prometheus.GaugeValue, d.maxUsed)
	// other is always there, as in the per-process counters: a query
	// of the family finds a series when nothing is stuck
	if _, ok := d.stuckBy[Other]; !ok {
		ch <- prometheus.MustNewConstMetric(x.stuck, prometheus.GaugeValue, 0, Other)
	}
	for comm, n := range d.stuckBy {
		ch <- prometheus.MustNewConstMetric(x.stuck, prometheus.GaugeValue, float64(n), comm)
	}
	for _, dst := range d.top {
		l := []string{dst.LAddr, dst.RAddr, strconv.Itoa(int(dst.RPort))}
		ch <- prometheus.MustNewConstMetric(x.destTW, prometheus.GaugeValue, float64(dst.TimeWait), l...)
		ch <- prometheus.MustNewConstMetric(x.destCreated, prometheus.CounterValue, float64(dst.Created), l...)
		ch <- prometheus.MustNewConstMetric(x.destUsed, prometheus.GaugeValue, *dst.PortRangeUsedPct/100, l...)
		ch <- prometheus.MustNewConstMetric(x.destFailures, prometheus.CounterValue, float64(dst.ConnectFailures), l...)
	}
}
