// Command tcptrace-agent is tcptrace agent: it serves Prometheus metrics
// of the host's TCP state transitions at /metrics, and pushes them over
// OTLP if asked, until SIGTERM. It is a binary of its own so that the
// exporters' libraries (client_golang, the OpenTelemetry SDK, gRPC) stay
// out of tcptrace, whose every page that package initialisation touches
// counts in the RSS of every command; tcptrace agent runs it in its place.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	// the zone database in the binary, as in tcptrace
	"sync/atomic"
	"time"
	_ "time/tzdata"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/cgroups"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/cli"
	"github.com/tcptrace/tcptrace/loader"
	"github.com/tcptrace/tcptrace/metrics"
	"github.com/tcptrace/tcptrace/sockdiag"
	"github.com/tcptrace/tcptrace/stream"
	"github.com/tcptrace/tcptrace/stuck"
)

// agentConfig is what the agent command's flags say.
type agentConfig struct {
	cli.Common
	listen       string
	topK         int
	ports        int
	otlpEndpoint string
	otlpProtocol string
	otlpInterval time.Duration
	dests        int
	cwThreshold  time.Duration
	diagEvery    time.Duration
	recountEvery time.Duration
	includeSelf  bool
}

func parseAgent(args []string, stderr io.Writer) (*agentConfig, error) {
	c := &agentConfig{}
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	c.Register(fs)
	fs.StringVar(&c.listen, "listen", "127.0.0.1:9464", "")
	fs.IntVar(&c.topK, "top-k", metrics.DefaultTopK, "")
	fs.IntVar(&c.ports, "ports", 0, "")
	fs.StringVar(&c.otlpEndpoint, "otlp-endpoint", "", "")
	fs.StringVar(&c.otlpProtocol, "otlp-protocol", "", "")
	fs.DurationVar(&c.otlpInterval, "otlp-interval", 30*time.Second, "")
	fs.IntVar(&c.dests, "destinations", 0, "")
	fs.DurationVar(&c.cwThreshold, "closewait-threshold", stuck.DefaultThreshold, "")
	fs.DurationVar(&c.diagEvery, "diagnose-every", metrics.DefaultDiagnoseEvery, "")
	fs.DurationVar(&c.recountEvery, "recount-every", cli.ReseedEvery, "")
	fs.BoolVar(&c.includeSelf, "include-self", false, "")
	if err := cli.ParseFlags(fs, args, agentUsage, stderr); err != nil {
		return nil, err
	}
	if err := c.Check(); err != nil {
		return nil, cli.Usage(err)
	}
	if c.topK < 1 {
		return nil, cli.Usage(errors.New("--top-k must be at least 1"))
	}
	if c.ports < 0 || c.ports > maxPorts {
		return nil, cli.Usage(fmt.Errorf("--ports must be from 0 to %d", maxPorts))
	}
	if _, _, err := net.SplitHostPort(c.listen); err != nil {
		return nil, cli.Usage(fmt.Errorf("--listen %q: want host:port", c.listen))
	}
	if c.dests < 0 || c.dests > maxDestinations {
		return nil, cli.Usage(fmt.Errorf("--destinations must be from 0 to %d", maxDestinations))
	}
	if c.diagEvery < time.Second {
		return nil, cli.Usage(errors.New("--diagnose-every must be at least 1s"))
	}
	if c.recountEvery < time.Second {
		return nil, cli.Usage(errors.New("--recount-every must be at least 1s"))
	}
	if c.cwThreshold < 0 {
		return nil, cli.Usage(errors.New("--closewait-threshold must not be negative"))
	}
	if c.otlpInterval < time.Second {
		return nil, cli.Usage(errors.New("--otlp-interval must be at least 1s"))
	}
	switch c.otlpProtocol {
	case "", "grpc", "http/protobuf":
	default:
		return nil, cli.Usage(fmt.Errorf("--otlp-protocol %q: want grpc or http/protobuf", c.otlpProtocol))
	}
	return c, nil
}

func main() {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	stopProfile := cli.Profile()
	cli.CoarseSleeps()
	cli.TightHeap()
	args := os.Args[1:]
	// tcptrace agent runs it as "tcptrace-agent agent ..."
	if len(args) > 0 && args[0] == "agent" {
		args = args[1:]
	}
	var err error
	if len(args) > 0 && (args[0] == "--version" || args[0] == "-version" || args[0] == "version") {
		fmt.Println(cli.Version())
	} else {
		err = runAgent(ctx, args, os.Stdout, os.Stderr)
	}
	stopProfile()
	cancel()
	cli.Exit(cli.InCommand("agent", err))
}

// runAgent serves the metrics until SIGINT or SIGTERM; SIGHUP is ignored.
func runAgent(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseAgent(args, stderr)
	if err != nil {
		return err
	}
	signal.Ignore(syscall.SIGHUP)
	// listen before loading: a port in use is said at once
	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", c.listen, err)
	}
	names := cgroups.New()
	x := metrics.New(c.topK, names.Identity)
	if c.ports > 0 {
		x.CountPorts(c.ports)
	}
	if !c.includeSelf {
		// its scrapes, pushes and dumps are not the host's traffic
		c.NotPIDs = []uint32{uint32(os.Getpid())}
	}
	f, err := c.Filter()
	if err != nil {
		ln.Close()
		return cli.Usage(err)
	}
	seed := func() {
		if !cli.Dumpable(f) {
			return
		}
		c, err := cli.CountSockets(f)
		if err != nil {
			fmt.Fprintf(stderr, "tcptrace: warning: %v\n", err)
			return
		}
		x.Reconcile(c.Apply)
	}
	netns := f.Netns
	if netns == 0 {
		if netns, err = sockdiag.SelfNetns(); err != nil {
			ln.Close()
			return err
		}
	}
	diag := metrics.NewDiagnosis(netns, c.diagEvery, c.topK, c.dests, c.cwThreshold, names.Name)
	defer diag.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(x, diag, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var ready atomic.Bool
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Timeout: 10 * time.Second}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if !ready.Load() {
			http.Error(w, "not attached yet", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 60 * time.Second, MaxHeaderBytes: 16 << 10}
	go srv.Serve(ln)
	// OTLP, when asked for by flag or by the SDK's environment
	if c.otlpEndpoint != "" || os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") != "" {
		shutdown, err := x.PushOTLP(ctx, metrics.OTLPOptions{Endpoint: c.otlpEndpoint, Protocol: c.otlpProtocol, Interval: c.otlpInterval})
		if err != nil {
			ln.Close()
			return err
		}
		defer func() {
			// one last push of what was counted
			shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := shutdown(shut); err != nil {
				fmt.Fprintf(stderr, "tcptrace: warning: OTLP: %v\n", err)
			}
		}()
	}
	defer func() {
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shut)
	}()
	lastSeed := time.Now()
	var diagErr error
	st, err := cli.Trace(ctx, &c.Common, stderr, cli.Hooks{Every: min(5*time.Second, c.diagEvery, c.recountEvery), OnStats: func(st stream.Stats) {
		ready.Store(true)
		x.SetStats(st.Lost, st.Untracked, st.Unknown)
		if time.Since(lastSeed) >= c.recountEvery {
			lastSeed = time.Now()
			seed()
		}
		diag.Refresh(time.Now())
		if err := diag.Err(); err != nil && (diagErr == nil || err.Error() != diagErr.Error()) {
			fmt.Fprintf(stderr, "tcptrace: warning: %v: the port-range and CLOSE_WAIT metrics are not current\n", err)
		}
		diagErr = diag.Err()
	}, OnAttach: func(fs []loader.Feature) {
		has := make([]metrics.Feature, len(fs))
		for i, f := range fs {
			has[i] = metrics.Feature{Name: f.Name, Has: f.Has}
		}
		x.SetFeatures(has)
		v, rev, goVersion := cli.Build()
		var uts unix.Utsname
		unix.Uname(&uts)
		x.SetBuild(v, rev, goVersion, unix.ByteSliceToString(uts.Release[:]))
		// the first count once attached: one that fails then (no
		// privilege) would be said before the failure itself
		seed()
		ready.Store(true)
		// only now: a failure to load or attach is the one line said
		fmt.Fprintf(stderr, "tcptrace: serving metrics on http://%s/metrics\n", ln.Addr())
	}, OnSeed: func(hs []events.Holder) {
		diag.Seed(hs)
		x.SeedHolders(hs, f.Match)
	}}, x, diag)
	cli.SayEnd(stderr, st, err)
	return err
}

// maxPorts caps --ports: three series each.
const maxPorts = 1024

// maxDestinations caps --destinations: four series each.
const maxDestinations = 100

const agentUsage = `Usage: tcptrace agent [flags]

Runs until SIGINT or SIGTERM (SIGHUP is ignored) and serves Prometheus
metrics of every TCP state transition at /metrics, and /healthz (200 once
attached). Counters and gauges are kept by the transitions, so a scrape
costs the same whatever the number of sockets; the sockets per state are
seeded from a socket dump at start and set again from one each minute.
It takes the filter and limit flags of tcptrace trace (tcptrace --help).
The README lists every metric.

  --listen ADDR       where to serve; default 127.0.0.1:9464 (loopback: say
                      another address explicitly, and see the README on
                      exposing it)
                        tcptrace agent --listen 127.0.0.1:9464
  --top-k N           process names and cgroups with series of their own,
                      the first seen; the rest count as "other"; default 20
                        tcptrace agent --top-k 50
  --ports N           also series per listening port (new server connections,
                      CLOSE_WAIT held, TIME_WAIT entered) for the first N ports
                      seen, then "other"; never client ports; default 0: off
                        tcptrace agent --ports 16
  --destinations N    also series per destination (source address, remote
                      address and port: TIME_WAIT now, created, port-range
                      use, connects without a free port) for the N with the
                      most TIME_WAIT; peer addresses as labels, so off by
                      default; at most 100
                        tcptrace agent --destinations 5
  --closewait-threshold D
                      CLOSE_WAIT held this long counts in
                      tcptrace_close_wait_stuck_sockets; default 30s
                        tcptrace agent --closewait-threshold 5m
  --diagnose-every D  how often to dump the namespace's sockets for the
                      port-range and CLOSE_WAIT metrics (never at a scrape);
                      default 15s
                        tcptrace agent --diagnose-every 1m
  --include-self      count the agent's own sockets too (its scrapes'
                      connections); by default they are left out
                        tcptrace agent --include-self
  --recount-every D   how often tcptrace_sockets is set again from a socket
                      dump of each namespace (between them the transitions
                      keep it); default 1m
                        tcptrace agent --recount-every 5m
  --otlp-endpoint URL also push the metrics over OTLP with the OpenTelemetry
                      SDK (or set OTEL_EXPORTER_OTLP_ENDPOINT and the other
                      OTEL_EXPORTER_OTLP_* variables); http:// or grpc://
                      is plain text
                        tcptrace agent --otlp-endpoint grpc://127.0.0.1:4317
  --otlp-protocol P   grpc or http/protobuf; default OTEL_EXPORTER_OTLP_PROTOCOL, else grpc
                        tcptrace agent --otlp-endpoint http://127.0.0.1:4318 --otlp-protocol http/protobuf
  --otlp-interval D   how often to push; default 30s
                        tcptrace agent --otlp-endpoint grpc://collector:4317 --otlp-interval 10s
`
