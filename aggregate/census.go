package aggregate

import "github.com/tcptrace/tcptrace/events"

// Census counts the sockets in each state now, per network namespace and
// address family: kept by the transitions, and set for a namespace from
// a dump of it (Set). A host-wide count reconciles each namespace with
// its own dump; a namespace no process is left in (none to enter it by)
// is counted by its transitions alone.
type Census struct {
	byNetns map[uint32]*[2][States]int64
}

// NewCensus returns an empty census.
func NewCensus() *Census { return &Census{byNetns: map[uint32]*[2][States]int64{}} }

// family indexes a Census's counts: 0 for IPv4, 1 for IPv6.
func family(f events.Family) int {
	if f == 6 {
		return 1
	}
	return 0
}

// Move counts e's socket out of its old state and into its new one, in
// its namespace.
func (c *Census) Move(e *events.Event) {
	n := c.byNetns[e.Netns]
	if n == nil {
		n = new([2][States]int64)
		c.byNetns[e.Netns] = n
	}
	Move(&n[family(e.Family)], e)
}

// Set sets a namespace's counts of one family from a dump of it.
func (c *Census) Set(netns uint32, f events.Family, perState [States]int64) {
	n := c.byNetns[netns]
	if n == nil {
		n = new([2][States]int64)
		c.byNetns[netns] = n
	}
	n[family(f)] = perState
}

// Forget drops the namespaces not in keep and with no socket counted: a
// namespace gone, whose sockets all closed.
func (c *Census) Forget(keep map[uint32]bool) {
	for ns, n := range c.byNetns {
		if keep[ns] {
			continue
		}
		empty := true
		for _, per := range n {
			for _, v := range per {
				empty = empty && v == 0
			}
		}
		if empty {
			delete(c.byNetns, ns)
		}
	}
}

// Families is the sum over the namespaces of each family's counts: IPv4
// first, then IPv6.
func (c *Census) Families() [2][States]int64 {
	var out [2][States]int64
	for _, n := range c.byNetns {
		for f := range n {
			for st, v := range n[f] {
				out[f][st] += v
			}
		}
	}
	return out
}

// Total is the sum over the namespaces and families.
func (c *Census) Total() [States]int64 {
	both := c.Families()
	for st, v := range both[1] {
		both[0][st] += v
	}
	return both[0]
}
