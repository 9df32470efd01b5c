package sockdiag

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/events"
)

// The request is struct inet_diag_req_v2 for one exact socket: family,
// TCP, every state, ports in network order, addresses, cookie.
func TestRequest(t *testing.T) {
	e := &events.Event{Family: 4, LAddr: netip.MustParseAddr("10.0.0.1"), RAddr: netip.MustParseAddr("10.0.0.2"),
		LPort: 8080, RPort: 43210, Sock: 0x1122334455667788}
	got := request(e)
	want := []byte{
		2, 6, 0, 0, 0xff, 0xff, 0xff, 0xff, // AF_INET, IPPROTO_TCP, ext, pad, states
		0x1f, 0x90, 0xa8, 0xca, // sport 8080, dport 43210
		10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // src
		10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // dst
		0, 0, 0, 0, // interface
		0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // cookie, low word first
	}
	if !bytes.Equal(got, want) {
		t.Errorf("request\n got  %v\n want %v", got, want)
	}
	e6 := *e
	e6.Family, e6.LAddr, e6.Sock = 6, netip.MustParseAddr("::1"), 0
	got = request(&e6)
	if got[0] != 10 || got[27] != 1 || !bytes.Equal(got[48:56], bytes.Repeat([]byte{0xff}, 8)) {
		t.Errorf("IPv6 request without cookie: %v", got)
	}
}

// A dump's messages are read in place: each inet_diag_msg's cookie,
// connection, state and timer; answers to an earlier dump are skipped; NLMSG_DONE ends it.
func TestParseDump(t *testing.T) {
	msg := func(typ uint16, seq uint32, data []byte) []byte {
		b := make([]byte, nlmAlign(unix.NLMSG_HDRLEN+len(data)))
		binary.NativeEndian.PutUint32(b[0:], uint32(unix.NLMSG_HDRLEN+len(data)))
		binary.NativeEndian.PutUint16(b[4:], typ)
		binary.NativeEndian.PutUint32(b[8:], seq)
		copy(b[unix.NLMSG_HDRLEN:], data)
		return b
	}
	diag := func(cookie uint64, state byte, expiresMs uint32) []byte {
		d := make([]byte, 72)
		d[0], d[1] = unix.AF_INET, state
		binary.BigEndian.PutUint16(d[4:], 8080)
		binary.BigEndian.PutUint16(d[6:], 41000+uint16(cookie&0xff))
		copy(d[8:], []byte{127, 0, 0, 1})
		copy(d[24:], []byte{127, 0, 0, 2})
		binary.NativeEndian.PutUint32(d[44:], uint32(cookie))
		binary.NativeEndian.PutUint32(d[48:], uint32(cookie>>32))
		binary.NativeEndian.PutUint32(d[52:], expiresMs)
		return d
	}
	var b []byte
	b = append(b, msg(sockDiagByFamily, 7, diag(0x1122334455667788, 6, 1500))...)
	b = append(b, msg(sockDiagByFamily, 6, diag(9, 6, 0))...) // an earlier dump's
	b = append(b, msg(sockDiagByFamily, 7, diag(10, 5, 0))...)
	b = append(b, msg(unix.NLMSG_DONE, 7, make([]byte, 4))...)
	var got []MiniSocket
	done, err := parseDump(b, 7, func(d []byte) { got = append(got, miniSocket(d)) })
	if err != nil || !done {
		t.Fatalf("done %v, err %v", done, err)
	}
	l := netip.MustParseAddr("127.0.0.1").As16()
	r := netip.MustParseAddr("127.0.0.2").As16()
	want := []MiniSocket{
		{Cookie: 0x1122334455667788, LPort: 8080, RPort: 41000 + 0x88, LAddr: l, RAddr: r,
			Socket: Socket{State: events.TimeWait, Expires: 1500 * time.Millisecond}},
		{Cookie: 10, LPort: 8080, RPort: 41010, LAddr: l, RAddr: r, Socket: Socket{State: events.FinWait2}},
	}
	if !slices.Equal(got, want) {
		t.Errorf("parsed %+v, want %+v", got, want)
	}
	errno := make([]byte, 4)
	e := -int32(unix.ENOENT)
	binary.NativeEndian.PutUint32(errno, uint32(e))
	if _, err := parseDump(msg(unix.NLMSG_ERROR, 7, errno), 7, func([]byte) {}); !errors.Is(err, unix.ENOENT) {
		t.Errorf("error message: %v, want ENOENT", err)
	}
	if _, err := parseDump(b[:10], 7, func([]byte) {}); err != nil {
		t.Errorf("a short read is not an error, got %v", err)
	}
}

// --netns takes a path, a name of ip netns or an inode that a namespace
// in use has; anything else is refused with what to give instead.
func TestNetnsInode(t *testing.T) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	for _, arg := range []string{"/proc/self/ns/net", strconv.FormatUint(st.Ino, 10)} {
		if ino, err := NetnsInode(arg); err != nil || uint64(ino) != st.Ino {
			t.Errorf("%s: %d, %v; want %d", arg, ino, err, st.Ino)
		}
	}
	for arg, want := range map[string]string{
		"12345":                "no process and no /run/netns entry is in it",
		"tt-no-such-namespace": "no /run/netns/tt-no-such-namespace (ip netns list shows the names",
		"/etc/passwd":          "not a namespace file",
	} {
		if _, err := NetnsInode(arg); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error with %q", arg, err, want)
		}
	}
}
