// Package metrics exports what tcptrace sees as Prometheus metrics, for
// `tcptrace agent`. An Exporter is a stream.Consumer that keeps counters
// and gauges current from the transitions, and a prometheus.Collector
// that reads them at a scrape: a scrape costs the same whatever the
// number of sockets (node_exporter's tcpstat dumps every socket at each
// one).
//
// Attribution is bounded: per process name and per cgroup, the first
// TopK seen get series of their own and the rest share one labelled
// "other", so that every counter stays monotonic; no pid, peer address or
// client port is ever a label.
package metrics

import (
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tcptrace/tcptrace/aggregate"
	"github.com/tcptrace/tcptrace/cgroups"
	"github.com/tcptrace/tcptrace/events"
)

// Other is the label of what is past the first TopK.
const Other = "other"

// DefaultTopK bounds the process names and the cgroups with series of
// their own.
const DefaultTopK = 20

// family index: 0 is IPv4, 1 IPv6
func fam(f events.Family) int {
	if f == 6 {
		return 1
	}
	return 0
}

var families = [2]string{"ipv4", "ipv6"}

// pendingPrefix keys a cgroup's counts by its id, where it had no name
// yet when they were counted.
const pendingPrefix = "id:"

// cgroupLabels are the cgroup series' labels: the cgroup's name, and its
// container's id, pod's UID and QoS class where the path has them (empty
// otherwise, which Prometheus takes for absent). They follow from the
// cgroup: no more series than the cgroups with one of their own.
var cgroupLabels = []string{"cgroup", "container_id", "pod_uid", "qos_class"}

// stateLabel is a state as a label value: lower case, as node_exporter's
// node_tcp_connection_states has it (established, time_wait, fin_wait1)
// and as tcptrace_state_duration_seconds does.
func stateLabel(s events.State) string { return strings.ToLower(s.String()) }

// owned is what is counted per process name or cgroup.
type owned struct {
	connections uint64 // new connections: connect() or a listener's child
	timeWaits   uint64 // TIME_WAITs entered
	closeWaits  int64  // CLOSE_WAITs held now
}

// count adds e to o: a new connection (newConn), a TIME_WAIT entered, a
// CLOSE_WAIT entered or left.
func (o *owned) count(e *events.Event, newConn bool) {
	switch {
	case newConn:
		o.connections++
	case e.New == events.TimeWait:
		o.timeWaits++
	case e.New == events.CloseWait:
		o.closeWaits++
	case e.Old == events.CloseWait && o.closeWaits > 0:
		o.closeWaits--
	}
}

// ownerTable gives the first topK keys series of their own.
type ownerTable struct {
	topK   int
	byKey  map[string]*owned
	other  owned
	others map[string]bool // keys counted in other, for their CLOSE_WAITs' end; bounded by maxOthers
}

const maxOthers = 65536

func newOwnerTable(topK int) *ownerTable {
	return &ownerTable{topK: topK, byKey: map[string]*owned{}, others: map[string]bool{}}
}

func (t *ownerTable) get(key string) *owned {
	if o, ok := t.byKey[key]; ok {
		return o
	}
	if len(t.byKey) < t.topK {
		o := &owned{}
		t.byKey[key] = o
		return o
	}
	return &t.other
}

// Durations are the histograms exported, by the state they time.
var durationStates = [aggregate.Histograms]string{
	aggregate.ClientHandshake: "syn_sent",
	aggregate.ServerHandshake: "syn_recv",
	aggregate.Lifetime:        "established",
	aggregate.CloseWait:       "close_wait",
	aggregate.FinWait2:        "fin_wait2",
	aggregate.TimeWait:        "time_wait",
}

// maxLive bounds the live connections whose lifetime is timed.
const maxLive = 1 << 16

// lastBucket is the last log2 bucket exported as its own bound: 2^27 us,
// about 134 s, past TIME_WAIT's 60 s.
const lastBucket = 27

// Exporter counts transitions for Prometheus. Write runs on the stream's
// goroutine, Collect on the HTTP server's: a mutex keeps them apart.
type Exporter struct {
	mu          sync.Mutex
	transitions [2][aggregate.States][aggregate.States]uint64
	closes      [2][aggregate.Causes]uint64
	census      *aggregate.Census
	twEntries   uint64
	comms       *ownerTable
	cgroups     *ownerTable
	cgroupOf    func(id uint64) cgroups.Identity
	// the container and pod of each cgroup name with a series of its
	// own, for their labels
	cgIdentity map[string]cgroups.Identity
	// the state-duration histograms, cumulative, and what times them
	// (the aggregate's logic, without its top tables)
	hist      [aggregate.Histograms]aggregate.Histogram
	durations *aggregate.Durations
	// lost and the tables' health, from the stream's stats
	lost, untracked, unknown uint64
	// what the owner of a socket was when it entered CLOSE_WAIT, so the
	// right series goes down when it leaves
	cwOwner map[uint64][2]string
	// process names as strings, by the kernel's bytes
	commNames map[[events.CommLen]byte]string
	// per listening port, when asked for (Ports > 0): the first Ports
	// ports, then other; servers holds the live server connections'
	// ports by cookie, since only a listener's child says it is one
	ports   *ownerTable
	servers map[uint64]string
	// the kernel features the tracer uses, by name (loader.Feature)
	features []Feature
	// build is tcptrace_build_info's labels, set once (SetBuild)
	build []string

	descs struct {
		transitions, closes, sockets, twEntries, durations, lost, untracked, unknown, features, build,
		commConns, commTW, commCW, cgConns, cgTW, cgCW, portConns, portTW, portCW *prometheus.Desc
	}
}

// Feature is one optional kernel feature the tracer would use, and
// whether this kernel has it (loader.Feature).
type Feature struct {
	Name string
	Has  bool
}

// SetFeatures takes what the kernel offers the tracer, once it is loaded.
func (x *Exporter) SetFeatures(fs []Feature) {
	x.mu.Lock()
	x.features = fs
	x.mu.Unlock()
}

// SetBuild sets tcptrace_build_info: the agent's version, commit and Go
// release, and the kernel it runs on.
func (x *Exporter) SetBuild(version, revision, goVersion, kernel string) {
	x.mu.Lock()
	x.build = []string{version, revision, goVersion, kernel}
	x.mu.Unlock()
}

// CountPorts turns on the per-listening-port series, for the first n
// ports seen (then "other"). Client (ephemeral) ports never count: only
// connections a listener made.
func (x *Exporter) CountPorts(n int) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.ports = newOwnerTable(n)
	x.servers = map[uint64]string{}
}

// port counts a server connection's event by its listening port.
func (x *Exporter) port(e *events.Event, child bool) {
	if x.ports == nil {
		return
	}
	key, ok := x.servers[e.Sock]
	if child && !ok {
		if len(x.servers) >= maxOthers {
			return
		}
		key = strconv.Itoa(int(e.LPort))
		x.servers[e.Sock] = key
		ok = true
	}
	if !ok {
		return
	}
	x.ports.get(key).count(e, child)
	if e.New == events.Close || e.New == events.TimeWait {
		delete(x.servers, e.Sock)
	}
}

// New returns an exporter with topK process names and cgroups of their
// own; cgroupOf says who runs in a cgroup (cgroups.Names.Identity).
func New(topK int, cgroupOf func(uint64) cgroups.Identity) *Exporter {
	if topK <= 0 {
		topK = DefaultTopK
	}
	x := &Exporter{comms: newOwnerTable(topK), cgroups: newOwnerTable(topK), cgroupOf: cgroupOf, cgIdentity: map[string]cgroups.Identity{},
		durations: aggregate.NewDurations(maxLive), cwOwner: map[uint64][2]string{}, census: aggregate.NewCensus(),
		commNames: map[[events.CommLen]byte]string{}}
	d := &x.descs
	d.transitions = prometheus.NewDesc("tcptrace_transitions_total", "TCP state transitions, by address family, old and new state.", []string{"family", "old", "new"}, nil)
	d.closes = prometheus.NewDesc("tcptrace_closes_total", "Transitions to CLOSE, by address family and cause.", []string{"family", "cause"}, nil)
	d.sockets = prometheus.NewDesc("tcptrace_sockets", "TCP sockets in each state now, by address family: kept by the transitions, set again every minute from a socket dump of each namespace.", []string{"family", "state"}, nil)
	d.twEntries = prometheus.NewDesc("tcptrace_timewait_entries_total", "Connections that entered TIME_WAIT.", nil, nil)
	d.durations = prometheus.NewDesc("tcptrace_state_duration_seconds", "Time spent in a state before leaving it: syn_sent and syn_recv are the handshakes, established the connection's lifetime.", []string{"state"}, nil)
	d.lost = prometheus.NewDesc("tcptrace_events_lost_total", "Transitions the kernel could not hand over (ring buffer full), or records that could not be decoded.", nil, nil)
	d.untracked = prometheus.NewDesc("tcptrace_timewait_untracked_total", "Connections not followed to the end of TIME_WAIT: --tw-max reached.", nil, nil)
	d.build = prometheus.NewDesc("tcptrace_build_info", "Always 1: the agent's build (module version, commit, Go release) and the kernel it traces, as labels.", []string{"version", "revision", "goversion", "kernel"}, nil)
	d.features = prometheus.NewDesc("tcptrace_kernel_feature", "Optional kernel features the tracer uses: 1 where this kernel has it, 0 where tcptrace does without (see the warning at start and README \"Kernels\").", []string{"feature"}, nil)
	d.unknown = prometheus.NewDesc("tcptrace_owner_unknown_total", "Records whose owner was not known: the socket table was full.", nil, nil)
	d.commConns = prometheus.NewDesc("tcptrace_process_connections_total", "New connections (connect() or a listener's child) by owning process name; past the first names, \"other\".", []string{"comm"}, nil)
	d.commTW = prometheus.NewDesc("tcptrace_process_timewait_entries_total", "TIME_WAITs entered by owning process name.", []string{"comm"}, nil)
	d.commCW = prometheus.NewDesc("tcptrace_process_close_wait_sockets", "CLOSE_WAITs held now by owning process name: the peer closed, the process has not.", []string{"comm"}, nil)
	d.cgConns = prometheus.NewDesc("tcptrace_cgroup_connections_total", "New connections by the owner's cgroup (the systemd unit or container); past the first cgroups, \"other\". A container's have its id and, in a Kubernetes pod, the pod's UID and QoS class.", cgroupLabels, nil)
	d.cgTW = prometheus.NewDesc("tcptrace_cgroup_timewait_entries_total", "TIME_WAITs entered by the owner's cgroup.", cgroupLabels, nil)
	d.cgCW = prometheus.NewDesc("tcptrace_cgroup_close_wait_sockets", "CLOSE_WAITs held now by the owner's cgroup.", cgroupLabels, nil)
	d.portConns = prometheus.NewDesc("tcptrace_port_connections_total", "New server connections by listening port (--ports); past the first ports, \"other\".", []string{"port"}, nil)
	d.portTW = prometheus.NewDesc("tcptrace_port_timewait_entries_total", "Server connections that entered TIME_WAIT (the server closed first), by listening port.", []string{"port"}, nil)
	d.portCW = prometheus.NewDesc("tcptrace_port_close_wait_sockets", "Server connections in CLOSE_WAIT now, by listening port.", []string{"port"}, nil)
	return x
}

// Reconcile sets the sockets per state from dumps, each namespace's from
// its own (set calls the census's Set and Forget).
func (x *Exporter) Reconcile(set func(*aggregate.Census)) {
	x.mu.Lock()
	set(x.census)
	x.mu.Unlock()
}

// SetStats takes the stream's counts.
func (x *Exporter) SetStats(lost, untracked, unknown uint64) {
	x.mu.Lock()
	x.lost, x.untracked, x.unknown = lost, untracked, unknown
	x.mu.Unlock()
}

// Flush does nothing: the metrics are read at a scrape.
func (x *Exporter) Flush() error { return nil }

// Write counts one completed event.
func (x *Exporter) Write(e *events.Event) error {
	if e.Old >= aggregate.States || e.New >= aggregate.States {
		return nil
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	f := fam(e.Family)
	x.transitions[f][e.Old][e.New]++
	if e.New == events.Close && e.Cause < aggregate.Causes {
		x.closes[f][e.Cause]++
	}
	x.census.Move(e)
	child := e.Old == events.Listen && e.New == events.SynRecv
	x.durations.Write(e, &x.hist)
	x.port(e, child)

	newConn := e.Old == events.Close && e.New == events.SynSent || child
	switch {
	case newConn, e.New == events.TimeWait, e.New == events.CloseWait, e.Old == events.CloseWait:
	default:
		return nil
	}
	x.owners(e, newConn)
	return nil
}

// SeedHolders counts the CLOSE_WAITs each process held when tracing
// began (aggregate.HeldCloseWaits): a leak older than the agent is in
// tcptrace_process_close_wait_sockets from the start, as it is in
// tcptrace_close_wait_stuck_sockets.
func (x *Exporter) SeedHolders(hs []events.Holder, keep func(*events.Event) bool) {
	type port struct {
		netns uint32
		port  uint16
	}
	listening := map[port]bool{}
	for _, h := range hs {
		if h.State == events.Listen {
			listening[port{h.Netns, h.LPort}] = true
		}
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, e := range aggregate.HeldCloseWaits(hs, keep) {
		if x.ports != nil && e.Sock != 0 && listening[port{e.Netns, e.LPort}] && len(x.servers) < maxOthers {
			// a server's connection: its listener's port
			key := strconv.Itoa(int(e.LPort))
			x.servers[e.Sock] = key
			x.ports.get(key).count(&e, false)
		}
		x.owners(&e, false)
	}
}

// owners counts e by its owner's name and cgroup.
func (x *Exporter) owners(e *events.Event, newConn bool) {
	comm := x.comm(e)
	if e.PID == 0 {
		comm = "unknown"
	}
	ident := x.cgroupOf(e.Cgroup)
	cg := ident.Name
	if cg == cgroups.Unknown && e.Cgroup != 0 {
		// a cgroup made since the last walk of the tree (a container
		// just started): counted under its id, named at the scrape
		cg = pendingPrefix + strconv.FormatUint(e.Cgroup, 10)
	} else if _, ok := x.cgIdentity[cg]; !ok && len(x.cgIdentity) < maxOthers {
		x.cgIdentity[cg] = ident
	}
	keys := [2]string{comm, cg}
	if e.Old == events.CloseWait {
		// the series it went up on when it entered
		if k, ok := x.cwOwner[e.Sock]; ok {
			keys = k
			delete(x.cwOwner, e.Sock)
		}
	}
	for i, t := range []*ownerTable{x.comms, x.cgroups} {
		t.get(keys[i]).count(e, newConn)
	}
	if e.New == events.TimeWait {
		x.twEntries++
	}
	if e.New == events.CloseWait && e.Sock != 0 && len(x.cwOwner) < maxOthers {
		x.cwOwner[e.Sock] = keys
	}
}

// comm is e's owner's name, made a string once per name rather than per
// event (at most maxOthers names kept).
func (x *Exporter) comm(e *events.Event) string {
	if s, ok := x.commNames[e.Comm]; ok {
		return s
	}
	s := e.CommString()
	if len(x.commNames) < maxOthers {
		x.commNames[e.Comm] = s
	}
	return s
}

// Describe sends every metric's description.
func (x *Exporter) Describe(ch chan<- *prometheus.Desc) {
	d := &x.descs
	for _, desc := range []*prometheus.Desc{d.transitions, d.closes, d.sockets, d.twEntries, d.durations, d.lost, d.untracked,
		d.unknown, d.features, d.build, d.commConns, d.commTW, d.commCW, d.cgConns, d.cgTW, d.cgCW, d.portConns, d.portTW, d.portCW} {
		ch <- desc
	}
}

// Collect sends the metrics' values: the cost is the series', not the
// sockets'.
func (x *Exporter) Collect(ch chan<- prometheus.Metric) {
	x.mu.Lock()
	defer x.mu.Unlock()
	d := &x.descs
	census := x.census.Families()
	for f := range 2 {
		for o := range aggregate.States {
			for n := range aggregate.States {
				if c := x.transitions[f][o][n]; c > 0 {
					ch <- prometheus.MustNewConstMetric(d.transitions, prometheus.CounterValue, float64(c),
						families[f], stateLabel(events.State(o)), stateLabel(events.State(n)))
				}
			}
		}
		for c := 1; c < aggregate.Causes; c++ {
			ch <- prometheus.MustNewConstMetric(d.closes, prometheus.CounterValue, float64(x.closes[f][c]), families[f], events.Cause(c).String())
		}
		sockets := census[f]
		for st := 1; st < aggregate.States; st++ {
			if events.State(st) == events.Close {
				continue
			}
			ch <- prometheus.MustNewConstMetric(d.sockets, prometheus.GaugeValue, float64(sockets[st]), families[f], stateLabel(events.State(st)))
		}
	}
	ch <- prometheus.MustNewConstMetric(d.twEntries, prometheus.CounterValue, float64(x.twEntries))
	ch <- prometheus.MustNewConstMetric(d.lost, prometheus.CounterValue, float64(x.lost))
	ch <- prometheus.MustNewConstMetric(d.untracked, prometheus.CounterValue, float64(x.untracked))
	ch <- prometheus.MustNewConstMetric(d.unknown, prometheus.CounterValue, float64(x.unknown))
	if x.build != nil {
		ch <- prometheus.MustNewConstMetric(d.build, prometheus.GaugeValue, 1, x.build...)
	}
	for _, f := range x.features {
		v := 0.0
		if f.Has {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(d.features, prometheus.GaugeValue, v, f.Name)
	}
	for h, state := range durationStates {
		hist := &x.hist[h]
		buckets := make(map[float64]uint64, lastBucket)
		var cum uint64
		for k := 0; k < lastBucket; k++ {
			cum += hist.Buckets[k]
			buckets[aggregate.BucketStart(k+1).Seconds()] = cum
		}
		ch <- prometheus.MustNewConstHistogram(d.durations, hist.Count, hist.Sum.Seconds(), buckets, state)
	}
	for _, t := range []struct {
		table         *ownerTable
		conns, tw, cw *prometheus.Desc
	}{{x.comms, d.commConns, d.commTW, d.commCW}, {x.cgroups, d.cgConns, d.cgTW, d.cgCW}, {x.ports, d.portConns, d.portTW, d.portCW}} {
		if t.table == nil {
			continue // ports not asked for
		}
		send := func(key string, o *owned) {
			labels := []string{key}
			if t.table == x.cgroups {
				ident := x.cgIdentity[key]
				labels = append(labels, ident.ContainerID, ident.PodUID, ident.QoS)
			}
			ch <- prometheus.MustNewConstMetric(t.conns, prometheus.CounterValue, float64(o.connections), labels...)
			ch <- prometheus.MustNewConstMetric(t.tw, prometheus.CounterValue, float64(o.timeWaits), labels...)
			ch <- prometheus.MustNewConstMetric(t.cw, prometheus.GaugeValue, float64(o.closeWaits), labels...)
		}
		if t.table == x.cgroups {
			// the cgroups counted by id, named now, added to the
			// series of their name
			merged := make(map[string]*owned, len(t.table.byKey))
			for k, o := range t.table.byKey {
				if id, ok := strings.CutPrefix(k, pendingPrefix); ok {
					n, _ := strconv.ParseUint(id, 10, 64)
					ident := x.cgroupOf(n)
					k = ident.Name
					if _, known := x.cgIdentity[k]; !known && k != cgroups.Unknown {
						x.cgIdentity[k] = ident
					}
				}
				sum := merged[k]
				if sum == nil {
					sum = &owned{}
					merged[k] = sum
				}
				sum.connections += o.connections
				sum.timeWaits += o.timeWaits
				sum.closeWaits += o.closeWaits
			}
			for k, o := range merged {
				send(k, o)
			}
			send(Other, &t.table.other)
			continue
		}
		for k, o := range t.table.byKey {
			send(k, o)
		}
		send(Other, &t.table.other)
	}
}
