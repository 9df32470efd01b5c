package storm

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tcptrace/tcptrace/cgroups"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/netconf"
	"github.com/tcptrace/tcptrace/sockdiag"
)

// DefaultWarnPct is the share of a destination's usable port range, in
// TIME_WAIT or in use, past which a report warns: connect() slows down
// well before the range is full, as it searches for a free port.
const DefaultWarnPct = 80

// serverVerdictMin is how many TIME_WAITs on one server port make a
// verdict: a few are every server's normal.
const serverVerdictMin = 100

// timeWaitLen is the kernel's TCP_TIMEWAIT_LEN: a TIME_WAIT created now
// is gone in 60 s, so a steady rate r keeps r × 60 of them.
const timeWaitLen = 60 * time.Second

// Snapshot is what the namespace has now, by a dump of its sockets,
// counted by group as the dump goes (a storm's 50,000 TIME_WAITs are a
// few groups, not 50,000 records to keep), and its settings and
// counters.
type Snapshot struct {
	Time     time.Time
	Netns    uint32
	Settings netconf.Settings
	Counters netconf.Counters
	// TWSize is a TIME_WAIT socket's size in the kernel, bytes
	TWSize int

	timeWaits int
	listening map[uint16]bool
	groups    map[Group]*dumped
	live      map[Group]int
	ports     map[uint16]*dumped // servers' TIME_WAITs by port
	tracker   *Tracker
}

// NewSnapshot starts a snapshot of netns at the time given, with its
// settings and counters; t, if not nil, says which ports were seen
// listening.
func NewSnapshot(at time.Time, netns uint32, st netconf.Settings, c netconf.Counters, t *Tracker) *Snapshot {
	s := &Snapshot{Time: at, Netns: netns, Settings: st, Counters: c, TWSize: twSize(),
		listening: map[uint16]bool{}, groups: map[Group]*dumped{}, live: map[Group]int{}, ports: map[uint16]*dumped{}}
	if t == nil {
		t = NewTracker(1)
	}
	t.SetRange(st.PortLow, st.PortHigh)
	s.tracker = t
	return s
}

// Add counts one socket of the dump. The kernel dumps the listeners
// first (its listening hash, then the established one), so a TIME_WAIT
// on a listening port is known for a server's when it comes.
func (s *Snapshot) Add(d *sockdiag.Detail) {
	switch d.State {
	case events.Close:
	case events.Listen:
		s.listening[d.LPort] = true
	case events.TimeWait:
		s.timeWaits++
		g := Group{Netns: s.Netns, LAddr: d.LAddr, RAddr: d.RAddr, RPort: d.RPort}
		if s.server(d) {
			g = Group{Netns: s.Netns, LAddr: d.LAddr, RAddr: d.RAddr, LPort: d.LPort}
			p := s.ports[d.LPort]
			if p == nil {
				p = &dumped{}
				s.ports[d.LPort] = p
			}
			p.add(d)
		}
		c := s.groups[g]
		if c == nil {
			c = &dumped{}
			s.groups[g] = c
		}
		c.add(d)
	default:
		// a FIN_WAIT2 mini-socket, like any live connection, holds its
		// local port
		s.live[Group{Netns: s.Netns, LAddr: d.LAddr, RAddr: d.RAddr, RPort: d.RPort}]++
	}
}

func (s *Snapshot) server(d *sockdiag.Detail) bool {
	return s.tracker.server(s.Netns, d.LPort, d.RPort, s.listening)
}

// Take dumps netns's TCP sockets (both families) into a snapshot, with
// its settings and counters; also, if not nil, sees every socket of the
// dump. pid, if not 0, is a process in the namespace.
func Take(p *sockdiag.Prober, t *Tracker, netns, pid uint32, also func(*sockdiag.Detail)) (*Snapshot, error) {
	st, c, err := netconf.Read(netns, pid)
	if err != nil {
		return nil, err
	}
	s := NewSnapshot(time.Now(), netns, st, c, t)
	err = p.Details(netns, pid, sockdiag.AllStates, func(d *sockdiag.Detail) {
		s.Add(d)
		if also != nil {
			also(d)
		}
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// twSize reads the size of a TIME_WAIT socket from /proc/slabinfo, or
// says 256, its size on x86-64 Linux 6.
func twSize() int {
	b, err := os.ReadFile("/proc/slabinfo")
	if err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) > 3 && f[0] == "tw_sock_TCP" {
				if n, err := strconv.Atoi(f[3]); err == nil && n > 0 {
					return n
				}
			}
		}
	}
	return 256
}

// Report is one refresh of `tcptrace timewait`. The README documents
// every key.
type Report struct {
	Time          time.Time               `json:"time"`
	Interval      float64                 `json:"interval_s"`
	TimeWaitTotal int                     `json:"timewait_total"`
	Destinations  []Destination           `json:"destinations"`
	ServerPorts   []ServerPort            `json:"server_ports"`
	Settings      Settings                `json:"settings"`
	Counters      map[string]netconf.Rate `json:"counters"`
	Verdicts      []Verdict               `json:"verdicts"`
}

// Destination is a group of TIME_WAIT sockets: a client's toward one
// remote address and port, or a server's on one port toward one client
// host.
type Destination struct {
	LAddr string `json:"laddr"`
	RAddr string `json:"raddr"`
	RPort uint16 `json:"rport,omitempty"`
	LPort uint16 `json:"lport,omitempty"`
	// TimeWait is how many exist now, by the dump; Live how many other
	// connections (any state but LISTEN and TIME_WAIT) take a local
	// port toward the same destination
	TimeWait int `json:"timewait"`
	Live     int `json:"live"`
	// the least and most time left before they go, seconds
	ExpiresMin float64 `json:"expires_min_s"`
	ExpiresMax float64 `json:"expires_max_s"`
	// Created counts the TIME_WAITs entered since tcptrace started;
	// CreatedPerS since the last report, over the window they were made
	// in (from the first to the last, at least 1 s), and Expected the
	// count that
	// rate keeps in steady state (× 60 s)
	Created     uint64  `json:"created"`
	CreatedPerS float64 `json:"created_per_s"`
	Expected    int     `json:"expected_timewait"`
	// ActiveCloser is the side that closed first, whose side keeps the
	// TIME_WAIT: "client" or "server"
	ActiveCloser string       `json:"active_closer"`
	Owners       []OwnerCount `json:"owners"`
	// PortRangeUsedPct: TIME_WAIT and live connections toward this
	// destination over the usable ports; a client's only
	PortRangeUsedPct *float64 `json:"port_range_used_pct"`
	ConnectFailures  uint64   `json:"connect_failures"`
	// HandshakeMs: the mean time connects spent in SYN_SENT, failed
	// ones included (their port search)
	HandshakeMs float64 `json:"handshake_ms"`
}

// OwnerCount is a process that made TIME_WAITs, or failed connects,
// toward a destination: Count TIME_WAITs, ConnectFailures connects that
// found no free port.
type OwnerCount struct {
	PID             uint32 `json:"pid"`
	Comm            string `json:"comm"`
	Unit            string `json:"unit"`
	Count           uint64 `json:"count"`
	ConnectFailures uint64 `json:"connect_failures"`
}

// ServerPort sums a server's TIME_WAITs on one local port.
type ServerPort struct {
	Port        uint16  `json:"port"`
	Listening   bool    `json:"listening"`
	TimeWait    int     `json:"timewait"`
	Created     uint64  `json:"created"`
	CreatedPerS float64 `json:"created_per_s"`
	MemoryBytes int     `json:"memory_bytes"`
	// ClearsAt is when the last of them goes; absent with none
	ClearsAt *time.Time `json:"clears_at,omitempty"`
}

// Settings are the sysctls read in the namespace.
type Settings struct {
	TWReuse       int    `json:"tcp_tw_reuse"`
	MaxTWBuckets  int    `json:"tcp_max_tw_buckets"`
	FinTimeout    int    `json:"tcp_fin_timeout"`
	PortRange     [2]int `json:"ip_local_port_range"`
	ReservedPorts string `json:"ip_local_reserved_ports"`
	UsablePorts   int    `json:"usable_ports"`
}

// reportedCounters are the counters a report carries.
var reportedCounters = []string{"TCPTimeWaitOverflow", "TWRecycled", "TWKilled", "TW"}

// Verdict is a conclusion in plain words, with its severity: "warning"
// (something fails or will) or "info".
type Verdict struct {
	Severity string `json:"severity"`
	Text     string `json:"text"`
}

// Reporter builds reports from a tracker and snapshots, keeping what a
// rate needs from one report to the next.
type Reporter struct {
	tracker  *Tracker
	unit     func(cgroup uint64) string
	warnPct  float64
	last     time.Time
	counters netconf.Counters
}

// NewReporter reports on t; unit names a cgroup (package cgroups).
func NewReporter(t *Tracker, unit func(uint64) string, warnPct float64, started time.Time) *Reporter {
	if warnPct <= 0 {
		warnPct = DefaultWarnPct
	}
	return &Reporter{tracker: t, unit: unit, warnPct: warnPct, last: started}
}

// Start sets when counting began: the first report's rates are over the
// time since.
func (r *Reporter) Start(at time.Time) { r.last = at }

// dumped is what the dump says of a group.
type dumped struct {
	timeWait int
	live     int
	min, max time.Duration
}

func (d *dumped) add(s *sockdiag.Detail) {
	if d.timeWait == 0 || s.Expires < d.min {
		d.min = s.Expires
	}
	d.max = max(d.max, s.Expires)
	d.timeWait++
}

// Build makes the report of snap and what the tracker counted since the
// last report.
func (r *Reporter) Build(snap *Snapshot) *Report {
	t := r.tracker
	elapsed := snap.Time.Sub(r.last).Seconds()
	if elapsed <= 0 {
		elapsed = 1
	}
	st := &snap.Settings
	rep := &Report{Time: snap.Time, Interval: elapsed, Destinations: []Destination{}, ServerPorts: []ServerPort{}, Verdicts: []Verdict{},
		Settings: Settings{TWReuse: st.TWReuse, MaxTWBuckets: st.MaxTWBuckets, FinTimeout: st.FinTimeout,
			PortRange: [2]int{st.PortLow, st.PortHigh}, ReservedPorts: st.Reserved, UsablePorts: st.UsablePorts()}}
	rep.Counters = netconf.Rates(snap.Counters, r.counters, reportedCounters, elapsed)

	rep.TimeWaitTotal = snap.timeWaits
	groups := make(map[Group]*dumped, len(snap.groups))
	for g, d := range snap.groups {
		groups[g] = d
	}
	byPort := map[uint16]*ServerPort{}
	for port, d := range snap.ports {
		serverPort(byPort, port, snap.listening).TimeWait = d.timeWait
	}
	listening, live := snap.listening, snap.live
	for g, c := range t.groups {
		if g.Netns != snap.Netns {
			continue
		}
		if _, ok := groups[g]; !ok && (c.created > 0 || c.failures > 0) {
			groups[g] = &dumped{}
		}
		if g.Server() {
			sp := serverPort(byPort, g.LPort, listening)
			sp.Created += c.created
			sp.CreatedPerS += c.perS(elapsed)
		}
	}

	usable := st.UsablePorts()
	for g, d := range groups {
		c := t.groups[g]
		dst := Destination{LAddr: addr(g.LAddr), RAddr: addr(g.RAddr), RPort: g.RPort, LPort: g.LPort,
			TimeWait: d.timeWait, ExpiresMin: d.min.Seconds(), ExpiresMax: d.max.Seconds(), ActiveCloser: "client", Owners: []OwnerCount{}}
		if g.Server() {
			dst.ActiveCloser = "server"
		} else {
			dst.Live = live[g]
			pct := 0.0
			if usable > 0 {
				pct = 100 * float64(d.timeWait+dst.Live) / float64(usable)
			}
			dst.PortRangeUsedPct = &pct
		}
		if c != nil {
			dst.Created = c.created
			dst.CreatedPerS = c.perS(elapsed)
			dst.ConnectFailures = c.failures
			if c.handshakes > 0 {
				dst.HandshakeMs = float64(c.handshake) / float64(c.handshakes) / 1e6
			}
			for o, n := range c.owners {
				dst.Owners = append(dst.Owners, OwnerCount{PID: o.PID, Comm: o.Comm, Unit: r.unit(o.Cgroup), Count: n.timeWaits, ConnectFailures: n.failures})
			}
			slices.SortFunc(dst.Owners, func(a, b OwnerCount) int {
				return cmp.Or(cmp.Compare(b.Count+b.ConnectFailures, a.Count+a.ConnectFailures), cmp.Compare(a.PID, b.PID))
			})
		}
		dst.Expected = int(dst.CreatedPerS*timeWaitLen.Seconds() + 0.5)
		rep.Destinations = append(rep.Destinations, dst)
	}
	slices.SortFunc(rep.Destinations, func(a, b Destination) int {
		return cmp.Or(cmp.Compare(b.TimeWait, a.TimeWait), cmp.Compare(b.Created, a.Created), cmp.Compare(b.ConnectFailures, a.ConnectFailures),
			strings.Compare(a.RAddr, b.RAddr), cmp.Compare(a.RPort, b.RPort), cmp.Compare(a.LPort, b.LPort), strings.Compare(a.LAddr, b.LAddr))
	})
	for port, sp := range byPort {
		sp.MemoryBytes = sp.TimeWait * snap.TWSize
		if d := snap.ports[port]; d != nil && d.timeWait > 0 {
			at := snap.Time.Add(d.max).Truncate(time.Second).Add(time.Second)
			sp.ClearsAt = &at
		}
		rep.ServerPorts = append(rep.ServerPorts, *sp)
	}
	slices.SortFunc(rep.ServerPorts, func(a, b ServerPort) int {
		return cmp.Or(cmp.Compare(b.TimeWait, a.TimeWait), cmp.Compare(a.Port, b.Port))
	})

	rep.Verdicts = r.verdicts(rep, snap)

	for g, c := range t.groups {
		// nothing new and nothing left: forgotten, so that the table
		// holds what is going on, not every destination ever seen
		if _, held := snap.groups[g]; !held && g.Netns == snap.Netns && c.created == c.mark && c.failures == c.failMark {
			delete(t.groups, g)
			continue
		}
		c.mark, c.failMark = c.created, c.failures
	}
	r.counters = snap.Counters
	r.last = snap.Time
	return rep
}

func serverPort(m map[uint16]*ServerPort, port uint16, listening map[uint16]bool) *ServerPort {
	sp := m[port]
	if sp == nil {
		sp = &ServerPort{Port: port, Listening: listening[port]}
		m[port] = sp
	}
	return sp
}

func addr(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// verdicts says what the numbers of rep mean, most urgent first.
func (r *Reporter) verdicts(rep *Report, snap *Snapshot) []Verdict {
	var warn, info []Verdict
	st := &snap.Settings
	if c := rep.Counters["TCPTimeWaitOverflow"]; c.PerS > 0 {
		warn = append(warn, Verdict{"warning", fmt.Sprintf(
			"tcp_max_tw_buckets (%d) reached: new TIME_WAIT sockets are being dropped (TCPTimeWaitOverflow +%.0f/s); "+
				"their connections skip TIME_WAIT, so delayed segments of old connections may reach new ones",
			st.MaxTWBuckets, c.PerS)})
	} else if st.MaxTWBuckets > 0 && rep.TimeWaitTotal*10 >= st.MaxTWBuckets*9 {
		warn = append(warn, Verdict{"warning", fmt.Sprintf(
			"%d TIME_WAIT sockets, %.0f%% of tcp_max_tw_buckets (%d): past it, new ones are dropped",
			rep.TimeWaitTotal, 100*float64(rep.TimeWaitTotal)/float64(st.MaxTWBuckets), st.MaxTWBuckets)})
	}
	for i := range rep.Destinations {
		d := &rep.Destinations[i]
		if d.ActiveCloser != "client" {
			continue
		}
		dest := net.JoinHostPort(d.RAddr, strconv.Itoa(int(d.RPort)))
		pct := *d.PortRangeUsedPct
		expectedPct := 0.0
		if st.UsablePorts() > 0 {
			expectedPct = 100 * float64(d.Expected+d.Live) / float64(st.UsablePorts())
		}
		if d.ConnectFailures > 0 {
			warn = append(warn, Verdict{"warning", fmt.Sprintf(
				"connect() to %s failed %s for lack of a free local port (EADDRNOTAVAIL, \"Cannot assign requested address\"): %s; %d TIME_WAIT and %d live connections hold %.0f%% of the %d usable ports",
				dest, times(d.ConnectFailures), who(d.Owners), d.TimeWait, d.Live, pct, st.UsablePorts())})
		}
		if pct >= r.warnPct || expectedPct >= r.warnPct {
			fix := "reuse connections (keep-alive, pooling) or let the server close"
			if st.TWReuse == 0 {
				fix += "; net.ipv4.tcp_tw_reuse=1 lets connect() take a TIME_WAIT port safely (with TCP timestamps)"
			}
			outlook := fmt.Sprintf("%d expected at this rate, with the live ones %.0f%% of the port range for that destination", d.Expected, expectedPct)
			if expectedPct > 100 {
				with := ","
				if d.Live > 0 {
					with = fmt.Sprintf(", which with the %d live connections is", d.Live)
				}
				outlook = fmt.Sprintf("this rate would keep %d%s more than the %d usable ports: connects will fail with EADDRNOTAVAIL",
					d.Expected, with, st.UsablePorts())
			}
			if d.CreatedPerS == 0 {
				// none made since the last report: no rate to speak of
				warn = append(warn, Verdict{"warning", fmt.Sprintf(
					"client %s (%s) closed first %d connections to %s, none since the last report: %d TIME_WAIT still hold %.0f%% of the port range, the last for %.0f s more; %s",
					d.LAddr, who(d.Owners), d.Created, dest, d.TimeWait, pct, d.ExpiresMax, fix)})
			} else {
				warn = append(warn, Verdict{"warning", fmt.Sprintf(
					"client %s (%s) opens %.0f conn/s to %s and closes first: %d TIME_WAIT now (%.0f%% of the port range), %s; %s",
					d.LAddr, who(d.Owners), d.CreatedPerS, dest, d.TimeWait, pct, outlook, fix)})
			}
		}
		if d.HandshakeMs >= 1 && pct >= 50 {
			warn = append(warn, Verdict{"warning", fmt.Sprintf(
				"connects to %s spend %.1f ms in SYN_SENT on average with %.0f%% of the port range taken: the kernel searches the range for a free port, checking each against the TIME_WAIT sockets",
				dest, d.HandshakeMs, pct)})
		}
	}
	for _, sp := range rep.ServerPorts {
		switch {
		case !sp.Listening && sp.TimeWait > 0:
			warn = append(warn, Verdict{"warning", fmt.Sprintf(
				"port %d is held by %d TIME_WAIT sockets of the previous server: a listener restarting without SO_REUSEADDR cannot bind until %s",
				sp.Port, sp.TimeWait, sp.ClearsAt.Local().Format("15:04:05"))})
		case sp.TimeWait >= serverVerdictMin:
			info = append(info, Verdict{"info", fmt.Sprintf(
				"server port %d closes first: %d TIME_WAIT accumulate here (%.0f/s), harmless for the port range, %s of kernel memory; clients that close first would keep them instead",
				sp.Port, sp.TimeWait, sp.CreatedPerS, size(sp.MemoryBytes))})
		}
	}
	return append(append([]Verdict{}, warn...), info...)
}

// who names the owners of a destination, largest first.
func who(owners []OwnerCount) string {
	if len(owners) == 0 {
		return "owner not seen: made before tcptrace started"
	}
	var parts []string
	for i, o := range owners {
		if i == 3 {
			parts = append(parts, fmt.Sprintf("%d more", len(owners)-3))
			break
		}
		p := fmt.Sprintf("pid %d %s", o.PID, o.Comm)
		if o.Unit != "" && o.Unit != "/" && o.Unit != cgroups.Unknown {
			p += ", " + o.Unit
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, "; ")
}

func times(n uint64) string {
	if n == 1 {
		return "once"
	}
	return fmt.Sprintf("%d times", n)
}

func size(b int) string {
	switch {
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.0f KiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", b)
}
