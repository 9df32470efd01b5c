package cli

import (
	"errors"
	"os"
	"time"

	"github.com/tcptrace/tcptrace/aggregate"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/filter"
	"github.com/tcptrace/tcptrace/sockdiag"
)

// ReseedEvery is how often the sockets per state are set again from a
// dump of each namespace.
const ReseedEvery = time.Minute

// Dumpable says whether a socket dump can apply f: it cannot tell owners
// or transitions. (NotPIDs, the agent's own sockets, it ignores: the
// dump counts them, a few.)
func Dumpable(f filter.Filter) bool {
	return len(f.PIDs) == 0 && f.Comm == "" && len(f.States) == 0 && f.Cgroups == nil
}

// Census is the sockets per state of each namespace a dump covered, by
// family.
type Census struct {
	counts []netnsCount
	dumped map[uint32]bool
}

type netnsCount struct {
	netns    uint32
	family   events.Family
	perState [aggregate.States]int64
}

// Apply sets c's namespaces in to, and forgets there the namespaces gone
// whose sockets all closed.
func (c *Census) Apply(to *aggregate.Census) {
	for _, n := range c.counts {
		to.Set(n.netns, n.family, n.perState)
	}
	to.Forget(c.dumped)
}

// CountSockets dumps, for each family f keeps, f's namespace, or without
// one every namespace a process is in or ip netns names: the transitions
// come from all of them, so each is reconciled with its own dump. A
// namespace gone before its dump is left to its transitions.
func CountSockets(f filter.Filter) (*Census, error) {
	var nss []sockdiag.Namespace
	if f.Netns != 0 {
		nss = []sockdiag.Namespace{{Inode: f.Netns}}
	} else {
		var err error
		if nss, err = sockdiag.Namespaces(); err != nil {
			return nil, err
		}
	}
	p := sockdiag.NewProber()
	defer p.Close()
	c := &Census{dumped: map[uint32]bool{}}
	for _, ns := range nss {
		for _, fam := range []events.Family{4, 6} {
			if f.Family != 0 && f.Family != uint8(fam) {
				continue
			}
			per, err := dumpStates(p, f, ns, fam)
			if errors.Is(err, sockdiag.ErrNoNamespace) || f.Netns == 0 && errors.Is(err, os.ErrPermission) {
				// gone, or not ours to enter (no CAP_SYS_ADMIN): its
				// count is its transitions'
				break
			}
			if err != nil {
				return nil, err
			}
			c.counts = append(c.counts, netnsCount{ns.Inode, fam, per})
			c.dumped[ns.Inode] = true
		}
		p.Release(ns.Inode)
	}
	return c, nil
}

// dumpStates counts the sockets of namespace ns per state, for one
// family, with f's port filters applied.
func dumpStates(p *sockdiag.Prober, f filter.Filter, ns sockdiag.Namespace, family events.Family) ([aggregate.States]int64, error) {
	var per [aggregate.States]int64
	err := p.Sockets(ns.Inode, ns.PID, uint8(family), func(s sockdiag.Listed) {
		if f.PortsMatch(s.LPort, s.RPort) &&
			s.State < aggregate.States && s.State != events.Close {
			per[s.State]++
		}
	})
	return per, err
}
