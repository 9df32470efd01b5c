package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tcptrace/tcptrace/cgroups"
	"github.com/tcptrace/tcptrace/events"
)

func ev(sock uint64, comm string, cgroup uint64, old, new events.State, dwell time.Duration, cause events.Cause) *events.Event {
	e := &events.Event{Kind: events.Transition, Sock: sock, PID: 1, Cgroup: cgroup, Family: 4, Old: old, New: new,
		Dwell: dwell, DwellKnown: dwell > 0, Cause: cause}
	copy(e.Comm[:], comm)
	return e
}

func cgroupName(id uint64) cgroups.Identity {
	return map[uint64]cgroups.Identity{7: {Name: "web.service"}, 8: {Name: "db.service"},
		9: {Name: "container:4f9c3b6a1d2e", ContainerID: "4f9c3b6a1d2e", PodUID: "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9", QoS: "burstable"}}[id]
}

// Counters per transition and cause, sockets per state, TIME_WAIT
// entries and durations; per process name the first TopK have series
// and the rest count as other; a CLOSE_WAIT goes down on the series it
// went up on.
func TestExporter(t *testing.T) {
	x := New(2, cgroupName)
	for _, e := range []*events.Event{
		ev(1, "curl", 7, events.Close, events.SynSent, 0, 0),
		ev(1, "curl", 7, events.SynSent, events.Established, 50*time.Microsecond, 0),
		ev(1, "curl", 7, events.Established, events.FinWait1, time.Millisecond, 0),
		ev(1, "curl", 7, events.FinWait1, events.FinWait2, time.Millisecond, 0),
		ev(1, "curl", 7, events.FinWait2, events.TimeWait, time.Millisecond, 0),
		ev(2, "nginx", 8, events.Listen, events.SynRecv, 0, 0),
		ev(2, "nginx", 8, events.SynRecv, events.Established, 5*time.Microsecond, 0),
		ev(2, "nginx", 8, events.Established, events.CloseWait, time.Millisecond, 0),
		ev(3, "third", 8, events.Close, events.SynSent, 0, 0),
		ev(3, "third", 8, events.SynSent, events.Close, 30*time.Microsecond, events.CauseRefused),
	} {
		x.Write(e)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(x)
	want := `
# HELP tcptrace_process_close_wait_sockets CLOSE_WAITs held now by owning process name: the peer closed, the process has not.
# TYPE tcptrace_process_close_wait_sockets gauge
tcptrace_process_close_wait_sockets{comm="curl"} 0
tcptrace_process_close_wait_sockets{comm="nginx"} 1
tcptrace_process_close_wait_sockets{comm="other"} 0
# HELP tcptrace_process_connections_total New connections (connect() or a listener's child) by owning process name; past the first names, "other".
# TYPE tcptrace_process_connections_total counter
tcptrace_process_connections_total{comm="curl"} 1
tcptrace_process_connections_total{comm="nginx"} 1
tcptrace_process_connections_total{comm="other"} 1
# HELP tcptrace_timewait_entries_total Connections that entered TIME_WAIT.
# TYPE tcptrace_timewait_entries_total counter
tcptrace_timewait_entries_total 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tcptrace_process_close_wait_sockets",
		"tcptrace_process_connections_total", "tcptrace_timewait_entries_total"); err != nil {
		t.Error(err)
	}
	// the CLOSE_WAIT ends: its series goes back to 0
	x.Write(ev(2, "nginx", 8, events.CloseWait, events.LastAck, 300*time.Millisecond, 0))
	x.Write(ev(2, "nginx", 8, events.LastAck, events.Close, time.Millisecond, events.CauseClosed))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				// an empty label is no label, as Prometheus takes it
				if l.GetValue() != "" {
					key += "," + l.GetName() + "=" + l.GetValue()
				}
			}
			switch {
			case m.Counter != nil:
				values[key] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				values[key] = m.GetGauge().GetValue()
			case m.Histogram != nil:
				values[key+",count"] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	for key, want := range map[string]float64{
		"tcptrace_process_close_wait_sockets,comm=nginx":                0,
		"tcptrace_cgroup_close_wait_sockets,cgroup=db.service":          0,
		"tcptrace_cgroup_connections_total,cgroup=db.service":           2,
		"tcptrace_cgroup_connections_total,cgroup=web.service":          1,
		"tcptrace_transitions_total,family=ipv4,new=syn_sent,old=close": 2,
		"tcptrace_transitions_total,family=ipv4,new=close,old=last_ack": 1,
		"tcptrace_closes_total,cause=refused,family=ipv4":               1,
		"tcptrace_closes_total,cause=closed,family=ipv4":                1,
		"tcptrace_sockets,family=ipv4,state=time_wait":                  1,
		"tcptrace_sockets,family=ipv4,state=close_wait":                 0,
		"tcptrace_state_duration_seconds,state=syn_sent,count":          1,
		"tcptrace_state_duration_seconds,state=close_wait,count":        1,
		"tcptrace_state_duration_seconds,state=established,count":       2,
	} {
		if got, ok := values[key]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", key, got, ok, want)
		}
	}
}

// A scrape costs the series, not the sockets: 100,000 sockets in
// TIME_WAIT are one gauge.
func BenchmarkScrape(b *testing.B) {
	x := New(0, cgroupName)
	for i := range uint64(100000) {
		x.Write(ev(i, "churn", 7, events.FinWait2, events.TimeWait, time.Millisecond, 0))
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(x)
	b.ResetTimer()
	for range b.N {
		if _, err := reg.Gather(); err != nil {
			b.Fatal(err)
		}
	}
}

// Per listening port, when asked for: a listener's children count by its
// port, the first ports have series, then other; a client's ephemeral
// port never counts; without CountPorts there is no port series at all.
func TestPorts(t *testing.T) {
	child := func(sock uint64, port uint16) *events.Event {
		e := ev(sock, "nginx", 8, events.Listen, events.SynRecv, 0, 0)
		e.LPort = port
		return e
	}
	server := func(sock uint64, port uint16, old, new events.State) *events.Event {
		e := ev(sock, "nginx", 8, old, new, time.Millisecond, 0)
		e.LPort = port
		return e
	}
	x := New(0, cgroupName)
	x.CountPorts(2)
	for _, e := range []*events.Event{
		child(1, 80), server(1, 80, events.SynRecv, events.Established), server(1, 80, events.Established, events.CloseWait),
		child(2, 443), server(2, 443, events.SynRecv, events.Established), server(2, 443, events.Established, events.FinWait1),
		server(2, 443, events.FinWait1, events.FinWait2), server(2, 443, events.FinWait2, events.TimeWait),
		child(3, 8080), // a third port: other
		// a client: its local port is ephemeral and never counts
		server(4, 40000, events.Established, events.CloseWait),
	} {
		x.Write(e)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(x)
	want := `
# HELP tcptrace_port_close_wait_sockets Server connections in CLOSE_WAIT now, by listening port.
# TYPE tcptrace_port_close_wait_sockets gauge
tcptrace_port_close_wait_sockets{port="443"} 0
tcptrace_port_close_wait_sockets{port="80"} 1
tcptrace_port_close_wait_sockets{port="other"} 0
# HELP tcptrace_port_connections_total New server connections by listening port (--ports); past the first ports, "other".
# TYPE tcptrace_port_connections_total counter
tcptrace_port_connections_total{port="443"} 1
tcptrace_port_connections_total{port="80"} 1
tcptrace_port_connections_total{port="other"} 1
# HELP tcptrace_port_timewait_entries_total Server connections that entered TIME_WAIT (the server closed first), by listening port.
# TYPE tcptrace_port_timewait_entries_total counter
tcptrace_port_timewait_entries_total{port="443"} 1
tcptrace_port_timewait_entries_total{port="80"} 0
tcptrace_port_timewait_entries_total{port="other"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tcptrace_port_close_wait_sockets",
		"tcptrace_port_connections_total", "tcptrace_port_timewait_entries_total"); err != nil {
		t.Error(err)
	}
	// off by default
	y := New(0, cgroupName)
	y.Write(child(1, 80))
	if n, err := testutil.GatherAndCount(prometheusRegistry(y), "tcptrace_port_connections_total"); err != nil || n != 0 {
		t.Errorf("%d port series without CountPorts, %v", n, err)
	}
}

func prometheusRegistry(c prometheus.Collector) *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(c)
	return r
}

// The kernel features in use: one gauge each, 1 where the kernel has it;
// none before the tracer is loaded.
func TestKernelFeatures(t *testing.T) {
	x := New(0, cgroupName)
	if n, err := testutil.GatherAndCount(prometheusRegistry(x), "tcptrace_kernel_feature"); err != nil || n != 0 {
		t.Fatalf("%d feature series before load, %v", n, err)
	}
	x.SetFeatures([]Feature{{Name: "send_notes", Has: false}, {Name: "btf_cast", Has: true}})
	want := `
# HELP tcptrace_kernel_feature Optional kernel features the tracer uses: 1 where this kernel has it, 0 where tcptrace does without (see the warning at start and README "Kernels").
# TYPE tcptrace_kernel_feature gauge
tcptrace_kernel_feature{feature="btf_cast"} 1
tcptrace_kernel_feature{feature="send_notes"} 0
`
	if err := testutil.GatherAndCompare(prometheusRegistry(x), strings.NewReader(want), "tcptrace_kernel_feature"); err != nil {
		t.Error(err)
	}
}

// A pod's container's series carry its id, the pod's UID and QoS class;
// a unit's carry none (empty, which Prometheus drops).
func TestCgroupLabels(t *testing.T) {
	x := New(4, cgroupName)
	x.Write(ev(1, "api", 9, events.Close, events.SynSent, 0, 0))
	x.Write(ev(2, "curl", 7, events.Close, events.SynSent, 0, 0))
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(x)
	want := `
# HELP tcptrace_cgroup_connections_total New connections by the owner's cgroup (the systemd unit or container); past the first cgroups, "other". A container's have its id and, in a Kubernetes pod, the pod's UID and QoS class.
# TYPE tcptrace_cgroup_connections_total counter
tcptrace_cgroup_connections_total{cgroup="container:4f9c3b6a1d2e",container_id="4f9c3b6a1d2e",pod_uid="0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9",qos_class="burstable"} 1
tcptrace_cgroup_connections_total{cgroup="other",container_id="",pod_uid="",qos_class=""} 0
tcptrace_cgroup_connections_total{cgroup="web.service",container_id="",pod_uid="",qos_class=""} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tcptrace_cgroup_connections_total"); err != nil {
		t.Error(err)
	}
}

// A cgroup made since the last walk of the tree is counted under its id
// and named at the scrape: a container's first connections are its own.
func TestCgroupNamedLate(t *testing.T) {
	known := false
	x := New(4, func(id uint64) cgroups.Identity {
		if !known {
			return cgroups.Identity{Name: cgroups.Unknown}
		}
		return cgroupName(id)
	})
	x.Write(ev(1, "api", 9, events.Close, events.SynSent, 0, 0))
	known = true
	x.Write(ev(2, "api", 9, events.Close, events.SynSent, 0, 0))
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(x)
	want := `
# HELP tcptrace_cgroup_connections_total New connections by the owner's cgroup (the systemd unit or container); past the first cgroups, "other". A container's have its id and, in a Kubernetes pod, the pod's UID and QoS class.
# TYPE tcptrace_cgroup_connections_total counter
tcptrace_cgroup_connections_total{cgroup="container:4f9c3b6a1d2e",container_id="4f9c3b6a1d2e",pod_uid="0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9",qos_class="burstable"} 2
tcptrace_cgroup_connections_total{cgroup="other",container_id="",pod_uid="",qos_class=""} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tcptrace_cgroup_connections_total"); err != nil {
		t.Error(err)
	}
}
