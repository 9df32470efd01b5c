package life

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"time"
)

// Format is how finished connections are written.
type Format int

const (
	Text Format = iota
	JSON
	CSV
)

// Writer writes finished connections.
type Writer struct {
	w      io.Writer
	format Format
	csv    *csv.Writer
	header bool
}

// NewWriter writes to w in format.
func NewWriter(w io.Writer, format Format) *Writer {
	lw := &Writer{w: w, format: format}
	if format == CSV {
		lw.csv = csv.NewWriter(w)
	}
	return lw
}

// columns of the text and CSV forms
var columns = []string{"TIME", "PID", "COMM", "ROLE", "LADDR", "LPORT", "RADDR", "RPORT", "TX_BYTES", "RX_BYTES", "RETRANS",
	"HANDSHAKE_MS", "MS", "END", "CLOSED_FIRST"}

func millis(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 3, 64) }

// connJSON is one connection as `tcptrace life --json` writes it.
type connJSON struct {
	Time        time.Time `json:"time"`
	Sock        string    `json:"sock"`
	PID         uint32    `json:"pid"`
	Comm        string    `json:"comm"`
	Role        string    `json:"role"`
	Family      string    `json:"family"`
	LAddr       string    `json:"laddr"`
	LPort       uint16    `json:"lport"`
	RAddr       string    `json:"raddr"`
	RPort       uint16    `json:"rport"`
	TxBytes     uint64    `json:"tx_bytes"`
	RxBytes     uint64    `json:"rx_bytes"`
	Retrans     uint32    `json:"retrans"`
	HandshakeMs *float64  `json:"handshake_ms"`
	Ms          float64   `json:"ms"`
	Whole       bool      `json:"whole"`
	End         string    `json:"end"`
	ClosedFirst string    `json:"closed_first"`
}

// Write writes one finished connection.
func (lw *Writer) Write(c *Conn) error {
	hs := "-"
	if c.Handshake > 0 {
		hs = millis(c.Handshake)
	}
	dur := millis(c.Duration)
	if !c.Whole {
		dur = ">" + dur // began before the trace
	}
	switch lw.format {
	case JSON:
		j := connJSON{Time: c.End.UTC(), Sock: strconv.FormatUint(c.Sock, 16), PID: c.PID, Comm: c.Comm, Role: c.Role.String(),
			Family: c.Family.String(), LAddr: c.LAddr.String(), LPort: c.LPort, RAddr: c.RAddr.String(), RPort: c.RPort,
			TxBytes: c.Sent, RxBytes: c.Received, Retrans: c.Retrans,
			Ms: float64(c.Duration) / 1e6, Whole: c.Whole, End: c.EndedBy, ClosedFirst: c.ClosedBy.String()}
		if c.Handshake > 0 {
			v := float64(c.Handshake) / 1e6
			j.HandshakeMs = &v
		}
		return json.NewEncoder(lw.w).Encode(j)
	case CSV:
		if !lw.header {
			lw.header = true
			if err := lw.csv.Write(columns); err != nil {
				return err
			}
		}
		lw.csv.Write([]string{c.End.UTC().Format(time.RFC3339Nano), strconv.FormatUint(uint64(c.PID), 10), c.Comm, c.Role.String(),
			c.LAddr.String(), strconv.Itoa(int(c.LPort)), c.RAddr.String(), strconv.Itoa(int(c.RPort)),
			strconv.FormatUint(c.Sent, 10), strconv.FormatUint(c.Received, 10), strconv.FormatUint(uint64(c.Retrans), 10),
			hs, dur, c.EndedBy, c.ClosedBy.String()})
		return lw.csv.Error()
	}
	if !lw.header {
		lw.header = true
		if _, err := fmt.Fprintf(lw.w, "%-15s %-6s %-15s %-6s %-21s %-21s %10s %10s %4s %8s %10s %-14s %s\n",
			"TIME", "PID", "COMM", "ROLE", "LADDR:LPORT", "RADDR:RPORT", "TX_BYTES", "RX_BYTES", "RETR", "HS_MS", "MS", "END", "CLOSED_FIRST"); err != nil {
			return err
		}
	}
	_, err := fmt.Fprintf(lw.w, "%-15s %-6d %-15s %-6s %-21s %-21s %10d %10d %4d %8s %10s %-14s %s\n",
		c.End.Format("15:04:05.000000"), c.PID, orDash(c.Comm), c.Role, addrPort(c.LAddr.String(), c.LPort, c.Family == 6),
		addrPort(c.RAddr.String(), c.RPort, c.Family == 6), c.Sent, c.Received, c.Retrans, hs, dur, c.EndedBy, c.ClosedBy)
	return err
}

// Flush writes out what the CSV writer buffers.
func (lw *Writer) Flush() error {
	if lw.csv != nil {
		lw.csv.Flush()
		return lw.csv.Error()
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func addrPort(a string, p uint16, v6 bool) string {
	if v6 {
		a = "[" + a + "]"
	}
	return a + ":" + strconv.Itoa(int(p))
}
