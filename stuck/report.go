package stuck

import (
	"cmp"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tcptrace/tcptrace/cgroups"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/netconf"
	"github.com/tcptrace/tcptrace/sockdiag"
)

// DefaultThreshold is how long a socket may stay in a watched state
// before it is reported: an application answers a peer's close in
// milliseconds; 30 s of CLOSE_WAIT is a leak.
const DefaultThreshold = 30 * time.Second

// Snapshot is what the namespace has now.
type Snapshot struct {
	Time     time.Time
	Netns    uint32
	Sockets  []sockdiag.Detail // the watched states and LISTEN
	Counters netconf.Counters
}

// DumpStates are the states a snapshot's dump asks for.
var DumpStates = sockdiag.States(append([]events.State{events.Listen}, Watched...)...)

// Take dumps netns's sockets in the watched states and its listeners, and
// reads its counters. pid, if not 0, is a process in the namespace.
func Take(p *sockdiag.Prober, netns, pid uint32) (*Snapshot, error) {
	s := &Snapshot{Time: time.Now(), Netns: netns}
	if err := p.Details(netns, pid, DumpStates, func(d *sockdiag.Detail) { s.Sockets = append(s.Sockets, *d) }); err != nil {
		return nil, err
	}
	var err error
	_, s.Counters, err = netconf.Read(netns, pid)
	return s, err
}

// Report is one refresh of `tcptrace closewait`. The README documents
// every key.
type Report struct {
	Time      time.Time `json:"time"`
	Threshold float64   `json:"threshold_s"`
	// Sockets are those in a watched state for at least the threshold,
	// oldest first
	Sockets   []Socket  `json:"sockets"`
	ByProcess []Process `json:"by_process"`
	// HandshakeFailures count failed connects by destination and failed
	// server handshakes by port, by cause, since tcptrace started
	HandshakeFailures []HandshakeFailure      `json:"handshake_failures"`
	Listeners         []Listener              `json:"listeners"`
	Counters          map[string]netconf.Rate `json:"counters"`
	Verdicts          []string                `json:"verdicts"`
}

// Socket is one socket stuck in a state.
type Socket struct {
	PID   uint32 `json:"pid"`
	Comm  string `json:"comm"`
	Unit  string `json:"unit"`
	State string `json:"state"`
	LAddr string `json:"laddr"`
	LPort uint16 `json:"lport"`
	RAddr string `json:"raddr"`
	RPort uint16 `json:"rport"`
	// Age in the state, seconds; AgeKnown false means it was already
	// there when tcptrace first saw it: the age is at least Age, the
	// longer of the time since then and, for a CLOSE_WAIT or FIN_WAIT2
	// full socket, the time since it last took an ACK from its peer
	// (sockdiag.Detail.LastAck)
	Age      float64 `json:"age_s"`
	AgeKnown bool    `json:"age_known"`
	// Orphan: a FIN_WAIT2 socket no process holds (closed here, its
	// peer has not closed; no inode, as ss shows it): not a leak of
	// this host's. PID is who closed it, if tcptrace saw it
	Orphan bool `json:"orphan"`
	// RecvQ and SendQ are ss's Recv-Q and Send-Q; in CLOSE_WAIT the
	// kernel counts the peer's FIN in Recv-Q as one byte. Unread is the
	// data received and never read, the FIN left out: how a leak is
	// confirmed by hand
	RecvQ  uint32 `json:"recv_q"`
	SendQ  uint32 `json:"send_q"`
	Unread uint32 `json:"unread_bytes"`
}

// Process sums one process's stuck sockets in one state.
type Process struct {
	PID    uint32  `json:"pid"`
	Comm   string  `json:"comm"`
	Unit   string  `json:"unit"`
	State  string  `json:"state"`
	Count  int     `json:"count"`
	Oldest float64 `json:"oldest_s"`
	// OldestKnown false: the oldest's age is a lower bound (Socket.AgeKnown)
	OldestKnown bool   `json:"oldest_known"`
	Unread      uint64 `json:"unread_bytes"`
}

// HandshakeFailure counts one destination's failed connects (Side
// "client") or one port's failed server handshakes (Side "server").
type HandshakeFailure struct {
	Side   string            `json:"side"`
	RAddr  string            `json:"raddr,omitempty"`
	RPort  uint16            `json:"rport,omitempty"`
	LPort  uint16            `json:"lport,omitempty"`
	Total  uint64            `json:"total"`
	Causes map[string]uint64 `json:"causes"`
}

// Listener is one listening socket's accept queue.
type Listener struct {
	LAddr string `json:"laddr"`
	LPort uint16 `json:"lport"`
	PID   uint32 `json:"pid"`
	Comm  string `json:"comm"`
	// Queued connections wait for accept(); Backlog is the queue's size
	Queued  uint32 `json:"queued"`
	Backlog uint32 `json:"backlog"`
	Full    bool   `json:"full"`
}

var reportedCounters = []string{"ListenOverflows", "ListenDrops"}

// Reporter builds reports, keeping the counters for their rates.
type Reporter struct {
	tracker   *Tracker
	unit      func(uint64) string
	threshold time.Duration
	last      time.Time
	counters  netconf.Counters
}

// NewReporter reports on t the sockets stuck for threshold or more; unit
// names a cgroup (package cgroups).
func NewReporter(t *Tracker, unit func(uint64) string, threshold time.Duration, started time.Time) *Reporter {
	return &Reporter{tracker: t, unit: unit, threshold: threshold, last: started}
}

// Build makes the report of snap.
func (r *Reporter) Build(snap *Snapshot) *Report {
	t := r.tracker
	rep := &Report{Time: snap.Time, Threshold: r.threshold.Seconds(), Sockets: []Socket{}, ByProcess: []Process{},
		HandshakeFailures: []HandshakeFailure{}, Listeners: []Listener{}, Verdicts: []string{}}
	rep.Counters = netconf.Rates(snap.Counters, r.counters, reportedCounters, snap.Time.Sub(r.last).Seconds())
	seen := map[uint64]bool{}
	for i := range snap.Sockets {
		d := &snap.Sockets[i]
		id := t.idOf(d, snap.Netns, seen)
		if d.State == events.Listen {
			o := t.listeners[id]
			rep.Listeners = append(rep.Listeners, Listener{LAddr: d.LAddr.String(), LPort: d.LPort, PID: o.PID, Comm: o.Comm,
				Queued: d.RecvQ, Backlog: d.SendQ, Full: d.RecvQ > d.SendQ})
			continue
		}
		if !t.follows(d.State) {
			continue
		}
		seen[id] = true
		s := t.socks[id]
		if s == nil || s.state != d.State {
			// not seen entering it (a request socket, or a transition
			// filtered out): followed from now
			if len(t.socks) >= maxSockets {
				continue
			}
			var o Owner
			if s != nil {
				o = s.owner
			}
			s = &sock{state: d.State, since: snap.Time, owner: o}
			t.socks[id] = s
		}
		age := snap.Time.Sub(s.since)
		if !s.known && d.HasInfo && (d.State == events.CloseWait || d.State == events.FinWait2) {
			// it entered the state on taking an ACK (the peer's FIN,
			// or the one of ours): at least as long ago as the last
			age = max(age, d.LastAck)
		}
		if age < r.threshold {
			continue
		}
		rep.Sockets = append(rep.Sockets, Socket{PID: s.owner.PID, Comm: s.owner.Comm, Unit: r.unitOf(s.owner), State: d.State.String(),
			LAddr: d.LAddr.String(), LPort: d.LPort, RAddr: d.RAddr.String(), RPort: d.RPort,
			Age: age.Round(time.Millisecond).Seconds(), AgeKnown: s.known, Orphan: d.State == events.FinWait2 && (d.Inode == 0 || s.owner.PID == 0),
			RecvQ: d.RecvQ, SendQ: d.SendQ, Unread: unread(d)})
	}
	// what the dump no longer has left without a transition seen (a
	// filter, a lost record): forget it
	for c, s := range t.socks {
		if !seen[c] && s.since.Before(snap.Time) {
			t.drop(c)
		}
	}
	slices.SortFunc(rep.Sockets, bySocket)
	rep.ByProcess = byProcess(rep.Sockets)
	for k, n := range t.failures {
		if k.Netns != snap.Netns {
			continue
		}
		f := HandshakeFailure{Side: "client", RPort: k.RPort, LPort: k.LPort, Causes: map[string]uint64{}}
		if k.LPort != 0 {
			f.Side = "server"
		} else {
			f.RAddr = k.RAddr.String()
		}
		for c, v := range n {
			if v > 0 {
				f.Causes[events.Cause(c).String()] = v
				f.Total += v
			}
		}
		rep.HandshakeFailures = append(rep.HandshakeFailures, f)
	}
	slices.SortFunc(rep.HandshakeFailures, func(a, b HandshakeFailure) int {
		return cmp.Or(cmp.Compare(b.Total, a.Total), strings.Compare(a.RAddr, b.RAddr), cmp.Compare(a.RPort, b.RPort), cmp.Compare(a.LPort, b.LPort))
	})
	slices.SortFunc(rep.Listeners, func(a, b Listener) int {
		return cmp.Or(cmp.Compare(b.Queued, a.Queued), cmp.Compare(a.LPort, b.LPort), strings.Compare(a.LAddr, b.LAddr))
	})
	rep.Verdicts = append(rep.Verdicts, r.verdicts(rep)...)
	r.counters, r.last = snap.Counters, snap.Time
	return rep
}

func (r *Reporter) unitOf(o Owner) string {
	if o.Cgroup == 0 || r.unit == nil {
		return ""
	}
	// the root cgroup names nothing a person would look for
	if u := r.unit(o.Cgroup); u != cgroups.Unknown && u != "/" {
		return u
	}
	return ""
}

// stateRank orders the states for a person: a leak of this host's
// first, then what waits on peers
var stateRank = map[string]int{"CLOSE_WAIT": 0, "SYN_RECV": 1, "SYN_SENT": 2, "FIN_WAIT2": 3}

// bySocket orders the stuck sockets: by state (stateRank), those a
// process holds before those none does, then oldest first.
func bySocket(a, b Socket) int {
	return cmp.Or(cmp.Compare(stateRank[a.State], stateRank[b.State]), cmp.Compare(unheld(a.PID), unheld(b.PID)),
		cmp.Compare(b.Age, a.Age), cmp.Compare(a.PID, b.PID), cmp.Compare(a.LPort, b.LPort), cmp.Compare(a.RPort, b.RPort))
}

// unheld is 1 for a socket no process is known to hold, 0 for one held:
// held sort first
func unheld(pid uint32) int {
	if pid == 0 {
		return 1
	}
	return 0
}

// unread is the data in d's receive queue: in CLOSE_WAIT, the peer's FIN
// takes one of Recv-Q's bytes (rcv_nxt - copied_seq).
func unread(d *sockdiag.Detail) uint32 {
	if d.State == events.CloseWait && d.RecvQ > 0 {
		return d.RecvQ - 1
	}
	return d.RecvQ
}

// byProcess sums the sockets per process and state, most first.
func byProcess(socks []Socket) []Process {
	type key struct {
		pid   uint32
		state string
	}
	m := map[key]*Process{}
	for _, s := range socks {
		k := key{s.PID, s.State}
		p := m[k]
		if p == nil {
			p = &Process{PID: s.PID, Comm: s.Comm, Unit: s.Unit, State: s.State}
			m[k] = p
		}
		p.Count++
		if p.Count == 1 || s.Age > p.Oldest {
			p.Oldest, p.OldestKnown = s.Age, s.AgeKnown
		}
		p.Unread += uint64(s.Unread)
	}
	out := []Process{}
	for _, p := range m {
		out = append(out, *p)
	}
	slices.SortFunc(out, func(a, b Process) int {
		return cmp.Or(cmp.Compare(stateRank[a.State], stateRank[b.State]), cmp.Compare(unheld(a.PID), unheld(b.PID)),
			cmp.Compare(b.Count, a.Count), cmp.Compare(b.Oldest, a.Oldest), cmp.Compare(a.PID, b.PID))
	})
	return out
}

// verdicts says what the report means.
func (r *Reporter) verdicts(rep *Report) []string {
	var out []string
	for _, p := range rep.ByProcess {
		name := fmt.Sprintf("pid %d %s", p.PID, p.Comm)
		if p.PID == 0 {
			name = "no known process (closed, or opened before tcptrace and held by none it found)"
		}
		if p.Unit != "" && p.Unit != "/" {
			name += " (" + p.Unit + ")"
		}
		switch p.State {
		case "CLOSE_WAIT":
			out = append(out, fmt.Sprintf("%s holds %s in CLOSE_WAIT, the oldest for %s: their peers closed and it never called close() on them; %d unread bytes wait in their receive queues. Look for a code path that returns without closing the socket",
				name, conns(p.Count), AgeText(p.Oldest, p.OldestKnown), p.Unread))
		case "FIN_WAIT2":
			by := " by " + name
			if p.PID == 0 {
				by = " here (no process holds them any more)"
			}
			out = append(out, fmt.Sprintf("%s closed%s wait in FIN_WAIT2, the oldest for %s: their peers have not closed theirs (a peer that never calls close() holds them in CLOSE_WAIT); tcp_fin_timeout ends those already closed here",
				conns(p.Count), by, AgeText(p.Oldest, p.OldestKnown)))
		case "SYN_SENT":
			out = append(out, fmt.Sprintf("%s has %d connects unanswered, the oldest for %s: the destination drops SYNs (a firewall, a dead host)", name, p.Count, AgeText(p.Oldest, p.OldestKnown)))
		case "SYN_RECV":
			out = append(out, fmt.Sprintf("%d half-open connections, the oldest for %s: the clients never completed the handshake (a SYN flood, or replies that do not reach them)", p.Count, AgeText(p.Oldest, p.OldestKnown)))
		}
	}
	for _, f := range rep.HandshakeFailures {
		if n := f.Causes["no_port"]; n > 0 {
			out = append(out, fmt.Sprintf("%d connects to %s found no free local port (EADDRNOTAVAIL): see tcptrace timewait", n, net.JoinHostPort(f.RAddr, strconv.Itoa(int(f.RPort)))))
		}
	}
	for _, l := range rep.Listeners {
		if l.Full {
			owner := fmt.Sprintf("pid %d %s", l.PID, l.Comm)
			if l.PID == 0 {
				owner = "owner not known"
			}
			out = append(out, fmt.Sprintf("listener %s (%s) has a full accept queue (%d queued, backlog %d): it does not accept() fast enough; new connections are dropped (ListenOverflows +%.0f/s)",
				net.JoinHostPort(l.LAddr, strconv.Itoa(int(l.LPort))), owner, l.Queued, l.Backlog, rep.Counters["ListenOverflows"].PerS))
		}
	}
	if c := rep.Counters["ListenOverflows"]; c.PerS > 0 && !slices.ContainsFunc(rep.Listeners, func(l Listener) bool { return l.Full }) {
		out = append(out, fmt.Sprintf("accept queues overflowed %.0f times a second since the last report: a listener fell behind", c.PerS))
	}
	return out
}

func conns(n int) string {
	if n == 1 {
		return "1 connection"
	}
	return fmt.Sprintf("%d connections", n)
}

func ageText(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(time.Second).String()
}

// AgeText writes an age in seconds, marked "≥ " when it is a lower bound.
func AgeText(s float64, known bool) string {
	if known {
		return ageText(s)
	}
	return "≥ " + ageText(s)
}
