package main

import (
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/internal/cli"
)

// The agent's flags, each read as its help says, with the shared ones.
func TestParseAgent(t *testing.T) {
	c, err := parseAgent([]string{"--listen", "0.0.0.0:9999", "--top-k", "5", "--ports", "3", "--destinations", "4",
		"--closewait-threshold", "1m", "--diagnose-every", "2s", "--recount-every", "5m", "--include-self",
		"--otlp-endpoint", "http://c:4318", "--otlp-protocol", "http/protobuf", "--otlp-interval", "10s", "-D", "5432"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	f, err := c.Filter()
	if err != nil {
		t.Fatal(err)
	}
	if c.listen != "0.0.0.0:9999" || c.topK != 5 || c.ports != 3 || c.dests != 4 || c.cwThreshold != time.Minute ||
		c.diagEvery != 2*time.Second || c.recountEvery != 5*time.Minute || !c.includeSelf || c.otlpEndpoint != "http://c:4318" ||
		c.otlpProtocol != "http/protobuf" || c.otlpInterval != 10*time.Second || len(f.RPorts) != 1 || f.RPorts[0] != 5432 {
		t.Errorf("parsed %+v", c)
	}
	if _, err := parseAgent([]string{"--help"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help: %v", err)
	}
}

// Each bad value is a usage error that says what is wanted.
func TestParseAgentErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--top-k", "0"}, "--top-k must be at least 1"},
		{[]string{"--ports", "-1"}, "--ports must be from 0 to"},
		{[]string{"--listen", "9464"}, `--listen "9464": want host:port`},
		{[]string{"--destinations", "100000"}, "--destinations must be from 0 to"},
		{[]string{"--diagnose-every", "10ms"}, "--diagnose-every must be at least 1s"},
		{[]string{"--recount-every", "0s"}, "--recount-every must be at least 1s"},
		{[]string{"--closewait-threshold", "-1s"}, "--closewait-threshold must not be negative"},
		{[]string{"--otlp-interval", "1ms"}, "--otlp-interval must be at least 1s"},
		{[]string{"--otlp-protocol", "udp"}, `--otlp-protocol "udp": want grpc or http/protobuf`},
		{[]string{"--diagnose-every", "5"}, `invalid value "5" for --diagnose-every: want a duration with a unit`},
		{[]string{"--bogus"}, "unknown flag --bogus"},
	} {
		_, err := parseAgent(tc.args, io.Discard)
		var uerr cli.UsageError
		if !errors.As(err, &uerr) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want a usage error containing %q", tc.args, err, tc.want)
		}
	}
}
