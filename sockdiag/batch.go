package sockdiag

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/events"
)

// batchMax is the lookups written at once. The kernel answers each in an
// skb of its own, about 1 KB of the socket's receive buffer (212 KB by
// default) until read; an answer that finds the buffer full is dropped.
const batchMax = 64

// LookupMany looks up n sockets of one network namespace, as Lookup does
// each: ev(i) is the i-th, and fn(i, s, found) gets its answer. pid, if
// not 0, is a process likely to be in that namespace. The requests go out
// batchMax to a write, as netlink messages one after another, which the
// kernel answers in order: a few microseconds a socket, where Lookup's
// round trip costs several times that, and a dump of the namespace costs
// as much for every socket it lists.
func (p *Prober) LookupMany(netns, pid uint32, n int, ev func(i int) *events.Event, fn func(i int, s Socket, found bool)) error {
	if n == 0 {
		return nil
	}
	s, err := p.session(netns, pid)
	if err != nil {
		return fmt.Errorf("sock_diag lookups in netns %d: %w", netns, err)
	}
	defer s.end()
	const size = unix.NLMSG_HDRLEN + 56
	req := make([]byte, batchMax*size)
	le := binary.NativeEndian
	for start := 0; start < n; start += batchMax {
		count := min(n-start, batchMax)
		first := p.seq + 1
		p.seq += uint32(count)
		for k := range count {
			m := req[k*size : (k+1)*size]
			le.PutUint32(m[0:], size)
			le.PutUint16(m[4:], sockDiagByFamily)
			le.PutUint16(m[6:], unix.NLM_F_REQUEST)
			le.PutUint32(m[8:], first+uint32(k))
			le.PutUint32(m[12:], 0)
			putRequest(m[unix.NLMSG_HDRLEN:], ev(start+k))
		}
		if err := s.send(req[:count*size]); err != nil {
			return fmt.Errorf("sock_diag lookups in netns %d: %w", netns, err)
		}
		answered := 0
		for answered < count {
			b, err := s.recv()
			if err != nil {
				return fmt.Errorf("sock_diag lookups in netns %d: %w", netns, err)
			}
			k, err := parseAnswers(b, first, count, func(k int, s Socket, found bool) {
				fn(start+k, s, found)
			})
			if err != nil {
				return fmt.Errorf("sock_diag lookups in netns %d: %w", netns, err)
			}
			answered += k
		}
	}
	return nil
}

// parseAnswers reads the answers in b to the count lookups numbered from
// first, calls fn with each one's index, and says how many it read. An
// answer "no such socket" is found false; any other error fails.
func parseAnswers(b []byte, first uint32, count int, fn func(k int, s Socket, found bool)) (int, error) {
	le := binary.NativeEndian
	answered := 0
	for len(b) >= unix.NLMSG_HDRLEN {
		size := int(le.Uint32(b[0:]))
		typ := le.Uint16(b[4:])
		if size < unix.NLMSG_HDRLEN || size > len(b) {
			return answered, errors.New("truncated netlink message")
		}
		k := int(le.Uint32(b[8:]) - first)
		data := b[unix.NLMSG_HDRLEN:size]
		b = b[min(nlmAlign(size), len(b)):]
		if k < 0 || k >= count {
			continue // an answer to an earlier request, cut short
		}
		switch typ {
		case unix.NLMSG_ERROR:
			var errno unix.Errno
			if len(data) >= 4 {
				errno = unix.Errno(-int32(le.Uint32(data)))
			}
			if errno != 0 && errno != unix.ENOENT && errno != unix.ESTALE {
				return answered, errno
			}
			fn(k, Socket{}, false)
			answered++
		case sockDiagByFamily:
			var s Socket
			if len(data) >= 56 {
				s.State = events.State(data[1])
				s.Expires = time.Duration(le.Uint32(data[52:])) * time.Millisecond
			}
			fn(k, s, true)
			answered++
		}
	}
	return answered, nil
}
