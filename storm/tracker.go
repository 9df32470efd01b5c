// Package storm answers what a TIME_WAIT storm or a port exhaustion is
// made of: who creates the TIME_WAIT sockets, toward which destination,
// how fast, which side closes first, how close each destination is to
// running out of local ports, and what to change. A Tracker counts from
// the transitions; a Report joins its counts with a socket dump of the
// namespace (what `ss -tan state time-wait -o` reads) and the namespace's
// settings and counters (package netconf), and says what it means.
package storm

import (
	"net/netip"
	"time"

	"github.com/tcptrace/tcptrace/events"
)

// Group is a set of TIME_WAIT sockets with one cause: a client's toward
// one destination (LPort 0), or a server's on one listening port toward
// one client host (RPort 0).
type Group struct {
	Netns        uint32
	LAddr, RAddr netip.Addr
	LPort, RPort uint16
}

// Server says whether the group is a server's: the local side closed
// first as the server.
func (g Group) Server() bool { return g.RPort == 0 }

// Owner is a process that made TIME_WAITs.
type Owner struct {
	PID    uint32
	Comm   string
	Cgroup uint64
}

// maxOwners bounds the owners kept per group.
const maxOwners = 8

// counts is what the transitions tell of a group.
type counts struct {
	created uint64 // TIME_WAITs entered
	mark    uint64 // created at the last report
	// the first and the last TIME_WAIT entered since the last report:
	// the window the rate is over
	first, last time.Time
	failMark    uint64 // failures at the last report
	failures    uint64 // connects that found no free port
	handshakes  uint64 // client handshakes timed, and their time in SYN_SENT
	handshake   time.Duration
	owners      map[Owner]*ownerCounts
}

// ownerCounts is what one owner made in a group.
type ownerCounts struct {
	timeWaits, failures uint64
}

// owner is e's owner's counts, nil past maxOwners.
func (c *counts) owner(e *events.Event) *ownerCounts {
	o := Owner{PID: e.PID, Comm: e.CommString(), Cgroup: e.Cgroup}
	n := c.owners[o]
	if n == nil && len(c.owners) < maxOwners {
		n = &ownerCounts{}
		c.owners[o] = n
	}
	return n
}

// DefaultMaxGroups bounds the groups a Tracker keeps.
const DefaultMaxGroups = 4096

// Tracker counts TIME_WAIT entries, failed connects and handshake times
// per group, from the transitions. It is a stream.Consumer; its Write and
// the Report built from it run on the stream's goroutine.
type Tracker struct {
	groups map[Group]*counts
	// listened holds the ports seen listening, by namespace: a
	// TIME_WAIT on one is a server's. (A set of the listeners' children
	// would say it exactly, at two map operations per connection.)
	listened  map[portKey]struct{}
	maxGroups int
	// netns, if not 0, is the one namespace counted
	netns uint32
	// the ephemeral port range, once known (SetRange)
	portLow, portHigh uint16
	// Dropped counts the events of groups past maxGroups.
	Dropped uint64
}

// OnlyNetns counts the events of one namespace only: the one reported.
func (t *Tracker) OnlyNetns(netns uint32) { t.netns = netns }

// SetRange gives the namespace's ephemeral port range, for telling a
// server's TIME_WAIT on a port never seen listening (see server).
func (t *Tracker) SetRange(low, high int) {
	t.portLow, t.portHigh = uint16(max(low, 0)), uint16(min(high, 65535))
}

func (t *Tracker) inRange(port uint16) bool {
	return t.portHigh != 0 && port >= t.portLow && port <= t.portHigh
}

// server says whether a TIME_WAIT on lport toward rport is a server's:
// on a port seen listening, or, for one never seen, on a port out of the
// ephemeral range toward one in it. listening, if not nil, adds the
// ports a dump shows listening now. The report's dump and the
// transitions tell it alike.
func (t *Tracker) server(netns uint32, lport, rport uint16, listening map[uint16]bool) bool {
	if listening[lport] {
		return true
	}
	if _, ok := t.listened[portKey{netns, lport}]; ok {
		return true
	}
	return !t.inRange(lport) && t.inRange(rport)
}

type portKey struct {
	netns uint32
	port  uint16
}

// NewTracker returns a tracker of at most maxGroups groups (0: the
// default).
func NewTracker(maxGroups int) *Tracker {
	if maxGroups <= 0 {
		maxGroups = DefaultMaxGroups
	}
	return &Tracker{groups: map[Group]*counts{}, listened: map[portKey]struct{}{}, maxGroups: maxGroups}
}

func (t *Tracker) group(g Group) *counts {
	c := t.groups[g]
	if c == nil {
		if len(t.groups) >= t.maxGroups {
			t.Dropped++
			return nil
		}
		c = &counts{owners: map[Owner]*ownerCounts{}}
		t.groups[g] = c
	}
	return c
}

// Write counts one event.
func (t *Tracker) Write(e *events.Event) error {
	if t.netns != 0 && e.Netns != t.netns {
		return nil
	}
	switch {
	case e.New == events.Listen:
		t.listened[portKey{e.Netns, e.LPort}] = struct{}{}
	case e.Old == events.SynSent && e.New == events.Established:
		// only toward a destination already followed (a TIME_WAIT or a
		// failure made it): every destination a host ever connects to
		// would fill the table with what no report shows
		if c := t.groups[Group{Netns: e.Netns, LAddr: e.LAddr, RAddr: e.RAddr, RPort: e.RPort}]; c != nil && e.DwellKnown {
			c.handshakes++
			c.handshake += e.Dwell
		}
	case e.Old == events.SynSent && e.New == events.Close && e.Cause == events.CauseNoPort:
		// connect() chose the source address before it searched for
		// a port: the record still has it
		if c := t.group(Group{Netns: e.Netns, LAddr: e.LAddr, RAddr: e.RAddr, RPort: e.RPort}); c != nil {
			c.failures++
			if o := c.owner(e); o != nil {
				o.failures++
			}
			if e.DwellKnown {
				c.handshakes++
				c.handshake += e.Dwell
			}
		}
	case e.New == events.TimeWait:
		g := Group{Netns: e.Netns, LAddr: e.LAddr, RAddr: e.RAddr, RPort: e.RPort}
		if t.server(e.Netns, e.LPort, e.RPort, nil) {
			g = Group{Netns: e.Netns, LAddr: e.LAddr, RAddr: e.RAddr, LPort: e.LPort}
		}
		if c := t.group(g); c != nil {
			if c.created == c.mark {
				c.first = e.Time
			}
			c.last = e.Time
			c.created++
			if o := c.owner(e); o != nil {
				o.timeWaits++
			}
		}
	}
	return nil
}

// perS is the rate of TIME_WAITs entered since the last report, elapsed
// seconds ago: over the window they were made in, not the whole interval,
// so that a storm of 2 s in a run of 10 shows its own rate. n of them
// from first to last span n-1 gaps: the window is taken as n gaps, at
// least a second and at most the interval.
func (c *counts) perS(elapsed float64) float64 {
	n := float64(c.created - c.mark)
	if n == 0 {
		return 0
	}
	window := 1.0
	if n > 1 {
		window = max(c.last.Sub(c.first).Seconds()*n/(n-1), 1)
	}
	return n / min(window, elapsed)
}

// Seed takes what a snapshot taken as tracing began shows: the ports
// listening then (their TIME_WAITs are servers') and, set by the
// snapshot, the port range.
func (t *Tracker) Seed(s *Snapshot) {
	for port := range s.listening {
		t.listened[portKey{s.Netns, port}] = struct{}{}
	}
}

// Flush does nothing: reports are built on demand.
func (t *Tracker) Flush() error { return nil }
