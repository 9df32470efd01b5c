package metrics

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"

	"github.com/tcptrace/tcptrace/aggregate"
	"github.com/tcptrace/tcptrace/events"
)

// SemconvState is a TCP state as OpenTelemetry's semantic conventions
// name it (network.connection.state): the kernel's name in lower case,
// with SYN_RECV as syn_received and FIN_WAITn as fin_wait_n.
func SemconvState(s events.State) string {
	switch s {
	case events.SynRecv, events.NewSynRecv:
		return "syn_received"
	case events.FinWait1:
		return "fin_wait_1"
	case events.FinWait2:
		return "fin_wait_2"
	}
	return strings.ToLower(s.String())
}

// OTLPOptions say where to push.
type OTLPOptions struct {
	// Endpoint is a URL (http://host:4318, grpc://host:4317) or host:port;
	// empty uses the OTEL_EXPORTER_OTLP_* environment variables.
	Endpoint string
	// Protocol is "grpc" or "http/protobuf"; empty takes
	// OTEL_EXPORTER_OTLP_PROTOCOL, else grpc.
	Protocol string
	Interval time.Duration
}

// PushOTLP pushes the exporter's metrics over OTLP every Interval with the
// OpenTelemetry Go SDK until the returned function shuts it down (which
// pushes once more).
func (x *Exporter) PushOTLP(ctx context.Context, o OTLPOptions) (shutdown func(context.Context) error, err error) {
	protocol := o.Protocol
	if protocol == "" {
		protocol = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	var exp sdkmetric.Exporter
	switch protocol {
	case "", "grpc":
		var opts []otlpmetricgrpc.Option
		if o.Endpoint != "" {
			endpoint, insecure, err := hostPort(o.Endpoint)
			if err != nil {
				return nil, err
			}
			opts = append(opts, otlpmetricgrpc.WithEndpoint(endpoint))
			if insecure {
				opts = append(opts, otlpmetricgrpc.WithInsecure())
			}
		}
		exp, err = otlpmetricgrpc.New(ctx, opts...)
	case "http/protobuf":
		var opts []otlpmetrichttp.Option
		if o.Endpoint != "" {
			opts = append(opts, otlpmetrichttp.WithEndpointURL(o.Endpoint))
		}
		exp, err = otlpmetrichttp.New(ctx, opts...)
	default:
		return nil, fmt.Errorf("OTLP protocol %q: want grpc or http/protobuf", protocol)
	}
	if err != nil {
		return nil, fmt.Errorf("OTLP exporter: %w", err)
	}
	if o.Interval <= 0 {
		o.Interval = 30 * time.Second
	}
	res, _ := resource.Merge(resource.Default(), resource.NewSchemaless(attribute.String("service.name", "tcptrace")))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithResource(res),
		sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp, sdkmetric.WithInterval(o.Interval),
			sdkmetric.WithProducer(&durations{x: x, start: time.Now()}))))
	if err := x.register(mp.Meter("github.com/tcptrace/tcptrace")); err != nil {
		mp.Shutdown(ctx)
		return nil, err
	}
	return mp.Shutdown, nil
}

// hostPort reads an endpoint for gRPC: a URL's host and whether it says
// plain text (http:// or grpc://), or host:port as given (TLS).
func hostPort(endpoint string) (string, bool, error) {
	if !strings.Contains(endpoint, "://") {
		return endpoint, false, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return "", false, fmt.Errorf("--otlp-endpoint %q: want a URL or host:port", endpoint)
	}
	return u.Host, u.Scheme == "http" || u.Scheme == "grpc", nil
}

// register makes the observable instruments, read from the exporter at
// each push as a scrape reads them.
func (x *Exporter) register(m metric.Meter) error {
	conns, err := m.Int64ObservableUpDownCounter("system.network.connection.count",
		metric.WithDescription("TCP connections in each state now, kept by the transitions"), metric.WithUnit("{connection}"))
	if err != nil {
		return err
	}
	transitions, err := m.Int64ObservableCounter("tcptrace.transitions",
		metric.WithDescription("TCP state transitions"), metric.WithUnit("{transition}"))
	if err != nil {
		return err
	}
	closes, err := m.Int64ObservableCounter("tcptrace.closes",
		metric.WithDescription("transitions to CLOSE, by cause"), metric.WithUnit("{connection}"))
	if err != nil {
		return err
	}
	twEntries, err := m.Int64ObservableCounter("tcptrace.timewait.entries",
		metric.WithDescription("connections that entered TIME_WAIT"), metric.WithUnit("{connection}"))
	if err != nil {
		return err
	}
	procConns, err := m.Int64ObservableCounter("tcptrace.process.connections",
		metric.WithDescription("new connections by owning process name"), metric.WithUnit("{connection}"))
	if err != nil {
		return err
	}
	procCW, err := m.Int64ObservableUpDownCounter("tcptrace.process.close_wait",
		metric.WithDescription("CLOSE_WAITs held now by owning process name"), metric.WithUnit("{connection}"))
	if err != nil {
		return err
	}
	lost, err := m.Int64ObservableCounter("tcptrace.events.lost",
		metric.WithDescription("transitions the kernel could not hand over"), metric.WithUnit("{event}"))
	if err != nil {
		return err
	}
	tcp := attribute.String("network.transport", "tcp")
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		x.mu.Lock()
		defer x.mu.Unlock()
		census := x.census.Families()
		for f := range 2 {
			fam := attribute.String("network.type", families[f])
			sockets := census[f]
			for st := 1; st < aggregate.States; st++ {
				if events.State(st) == events.Close {
					continue
				}
				o.ObserveInt64(conns, sockets[st], metric.WithAttributes(tcp, fam,
					attribute.String("network.connection.state", SemconvState(events.State(st)))))
			}
			for old := range aggregate.States {
				for nw := range aggregate.States {
					if c := x.transitions[f][old][nw]; c > 0 {
						o.ObserveInt64(transitions, int64(c), metric.WithAttributes(tcp, fam,
							attribute.String("tcptrace.state.old", SemconvState(events.State(old))),
							attribute.String("tcptrace.state.new", SemconvState(events.State(nw)))))
					}
				}
			}
			for c := 1; c < aggregate.Causes; c++ {
				o.ObserveInt64(closes, int64(x.closes[f][c]), metric.WithAttributes(tcp, fam, attribute.String("tcptrace.close.cause", events.Cause(c).String())))
			}
		}
		o.ObserveInt64(twEntries, int64(x.twEntries))
		o.ObserveInt64(lost, int64(x.lost))
		send := func(key string, v *owned) {
			a := metric.WithAttributes(attribute.String("process.executable.name", key))
			o.ObserveInt64(procConns, int64(v.connections), a)
			o.ObserveInt64(procCW, v.closeWaits, a)
		}
		for k, v := range x.comms.byKey {
			send(k, v)
		}
		send(Other, &x.comms.other)
		return nil
	}, conns, transitions, closes, twEntries, procConns, procCW, lost)
	return err
}

// durations hands the SDK the state-duration histograms as they are
// already kept (log2 buckets, cumulative since start): the API has no
// observable histograms, and recording each transition again through a
// synchronous one would cost every event.
type durations struct {
	x     *Exporter
	start time.Time
}

// Produce is sdkmetric.Producer's.
func (d *durations) Produce(context.Context) ([]metricdata.ScopeMetrics, error) {
	x := d.x
	x.mu.Lock()
	defer x.mu.Unlock()
	now := time.Now()
	bounds := make([]float64, lastBucket)
	for k := range lastBucket {
		bounds[k] = aggregate.BucketStart(k + 1).Seconds()
	}
	var points []metricdata.HistogramDataPoint[float64]
	for h, state := range otlpDurationStates {
		hist := &x.hist[h]
		counts := make([]uint64, lastBucket+1)
		for k, n := range hist.Buckets {
			counts[min(k, lastBucket)] += n
		}
		points = append(points, metricdata.HistogramDataPoint[float64]{
			Attributes: attribute.NewSet(attribute.String("tcptrace.state", state)),
			StartTime:  d.start, Time: now, Count: hist.Count, Sum: hist.Sum.Seconds(),
			Bounds: bounds, BucketCounts: counts,
		})
	}
	return []metricdata.ScopeMetrics{{
		Scope: instrumentation.Scope{Name: "github.com/tcptrace/tcptrace"},
		Metrics: []metricdata.Metrics{{
			Name:        "tcptrace.state.duration",
			Description: "time spent in a state before leaving it: syn_sent and syn_received are the handshakes, established a connection's lifetime",
			Unit:        "s",
			Data:        metricdata.Histogram[float64]{Temporality: metricdata.CumulativeTemporality, DataPoints: points},
		}},
	}}, nil
}

// otlpDurationStates names the histograms by the semantic conventions'
// state names.
var otlpDurationStates = [aggregate.Histograms]string{
	aggregate.ClientHandshake: "syn_sent",
	aggregate.ServerHandshake: "syn_received",
	aggregate.Lifetime:        "established",
	aggregate.CloseWait:       "close_wait",
	aggregate.FinWait2:        "fin_wait_2",
	aggregate.TimeWait:        "time_wait",
}
