package sockdiag

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"

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

func TestNetnsInode(t *testing.T) {
	if n, err := NetnsInode("4026531840"); err != nil || n != 4026531840 {
		t.Errorf("inode: %d, %v", n, err)
	}
	if _, err := NetnsInode("/etc/hostname"); err == nil || !strings.Contains(err.Error(), "not a namespace file") {
		t.Errorf("a plain file: %v", err)
	}
	if _, err := NetnsInode("/nonexistent/ns"); err == nil {
		t.Error("a missing path was accepted")
	}
}
