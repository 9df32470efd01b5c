package stuck

import (
	"net/netip"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/sockdiag"
)

// conn is a connection in a namespace, from our side.
type conn struct {
	netns        uint32
	laddr, raddr netip.Addr
	lport, rport uint16
}

// dest is where a client connects to.
type dest struct {
	netns uint32
	raddr netip.Addr
	rport uint16
}

// names joins dumps with records where records name sockets by address
// (events.ByAddress: Linux 5.10): sock_diag shows cookies only, so a
// dumped socket is found by its connection. A client's CLOSE -> SYN_SENT
// comes before connect() picks its local port: it is found by its
// destination, where the clients waiting on it all have one owner.
type names struct {
	on      bool
	byConn  map[conn]uint64
	dialing map[dest][]uint64
}

func connOf(e *events.Event) conn {
	return conn{e.Netns, e.LAddr, e.RAddr, e.LPort, e.RPort}
}

// start says whether records name sockets by address, as id does.
func (n *names) start(id uint64) bool {
	if !n.on && events.ByAddress(id) {
		n.on, n.byConn, n.dialing = true, map[conn]uint64{}, map[dest][]uint64{}
	}
	return n.on
}

// listen learns a listener's address from its CLOSE -> LISTEN, and
// forgets it at its LISTEN -> CLOSE.
func (t *Tracker) listen(e *events.Event) {
	n := &t.names
	if !n.start(e.Sock) {
		return
	}
	if c := connOf(e); e.New == events.Listen {
		n.byConn[c] = e.Sock
	} else if n.byConn[c] == e.Sock {
		delete(n.byConn, c)
	}
}

// track learns the connection of a socket followed from record e.
func (t *Tracker) track(id uint64, s *sock, e *events.Event) {
	n := &t.names
	if !n.start(id) {
		return
	}
	if e.LPort != 0 {
		s.conn = connOf(e)
		n.byConn[s.conn] = id
		return
	}
	if e.New == events.SynSent {
		s.dest = dest{e.Netns, e.RAddr, e.RPort}
		n.dialing[s.dest] = append(n.dialing[s.dest], id)
	}
}

// drop stops following a socket.
func (t *Tracker) drop(id uint64) {
	s := t.socks[id]
	if s == nil {
		return
	}
	delete(t.socks, id)
	n := &t.names
	if !n.on {
		return
	}
	if n.byConn[s.conn] == id {
		delete(n.byConn, s.conn)
	}
	if ids := n.dialing[s.dest]; len(ids) > 0 {
		for i, x := range ids {
			if x == id {
				ids = append(ids[:i], ids[i+1:]...)
				break
			}
		}
		if len(ids) == 0 {
			delete(n.dialing, s.dest)
		} else {
			n.dialing[s.dest] = ids
		}
	}
}

// idOf names dumped socket d of namespace netns as the records do: its
// cookie, or where they name sockets by address, the socket of its
// connection. taken are the ids already given to other sockets of the
// same dump.
func (t *Tracker) idOf(d *sockdiag.Detail, netns uint32, taken map[uint64]bool) uint64 {
	n := &t.names
	if !n.on {
		return d.Cookie
	}
	if id, ok := n.byConn[conn{netns, d.LAddr, d.RAddr, d.LPort, d.RPort}]; ok {
		return id
	}
	if d.State != events.SynSent {
		return d.Cookie
	}
	ids := n.dialing[dest{netns, d.RAddr, d.RPort}]
	var pick uint64
	for _, id := range ids {
		if t.socks[id].owner != t.socks[ids[0]].owner {
			return d.Cookie // its owner is not known: followed from now
		}
		if pick == 0 && !taken[id] {
			pick = id
		}
	}
	if pick == 0 {
		return d.Cookie
	}
	return pick
}
