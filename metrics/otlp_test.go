package metrics

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	metricpb "go.opentelemetry.io/proto/otlp/metrics/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/tcptrace/tcptrace/events"
)

// receiver is an OTLP metrics service, as a collector runs it, in-process.
type receiver struct {
	colmetricpb.UnimplementedMetricsServiceServer
	mu       sync.Mutex
	requests []*colmetricpb.ExportMetricsServiceRequest
}

func (r *receiver) Export(_ context.Context, req *colmetricpb.ExportMetricsServiceRequest) (*colmetricpb.ExportMetricsServiceResponse, error) {
	r.mu.Lock()
	r.requests = append(r.requests, req)
	r.mu.Unlock()
	return &colmetricpb.ExportMetricsServiceResponse{}, nil
}

// points flattens the last request into metric name and attributes ->
// value.
func (r *receiver) points() map[string]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int64{}
	if len(r.requests) == 0 {
		return out
	}
	for _, rm := range r.requests[len(r.requests)-1].GetResourceMetrics() {
		for _, sm := range rm.GetScopeMetrics() {
			for _, m := range sm.GetMetrics() {
				var dps []*metricpb.NumberDataPoint
				switch d := m.GetData().(type) {
				case *metricpb.Metric_Sum:
					dps = d.Sum.GetDataPoints()
				case *metricpb.Metric_Gauge:
					dps = d.Gauge.GetDataPoints()
				case *metricpb.Metric_Histogram:
					// count, and the bucket that holds the values
					for _, hp := range d.Histogram.GetDataPoints() {
						key := m.GetName()
						for _, kv := range hp.GetAttributes() {
							key += "," + kv.GetKey() + "=" + kv.GetValue().GetStringValue()
						}
						out[key+",count"] = int64(hp.GetCount())
						for i, n := range hp.GetBucketCounts() {
							if n > 0 {
								out[key+",bucket"] = int64(i)
							}
						}
					}
				}
				for _, dp := range dps {
					key := m.GetName()
					attrs := map[string]string{}
					for _, kv := range dp.GetAttributes() {
						attrs[kv.GetKey()] = kv.GetValue().GetStringValue()
					}
					for _, k := range []string{"network.type", "network.connection.state", "tcptrace.state.old", "tcptrace.state.new", "tcptrace.close.cause", "process.executable.name"} {
						if v, ok := attrs[k]; ok {
							key += "," + k + "=" + v
						}
					}
					out[key] = dp.GetAsInt()
				}
			}
		}
	}
	return out
}

// The same counts reach an OTLP receiver over gRPC with the official SDK,
// states named by the semantic conventions.
func TestOTLP(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	rec := &receiver{}
	colmetricpb.RegisterMetricsServiceServer(srv, rec)
	go srv.Serve(l)
	defer srv.Stop()

	x := New(0, cgroupName)
	for _, e := range []*events.Event{
		ev(1, "curl", 7, events.Close, events.SynSent, 0, 0),
		ev(1, "curl", 7, events.SynSent, events.Established, 50*time.Microsecond, 0),
		ev(1, "curl", 7, events.Established, events.FinWait1, time.Millisecond, 0),
		ev(1, "curl", 7, events.FinWait1, events.FinWait2, time.Millisecond, 0),
		ev(1, "curl", 7, events.FinWait2, events.TimeWait, time.Millisecond, 0),
		ev(2, "nginx", 8, events.Listen, events.SynRecv, 0, 0),
		ev(2, "nginx", 8, events.SynRecv, events.Established, 5*time.Microsecond, 0),
		ev(2, "nginx", 8, events.Established, events.CloseWait, time.Millisecond, 0),
	} {
		x.Write(e)
	}
	shutdown, err := x.PushOTLP(context.Background(), OTLPOptions{Endpoint: "grpc://" + l.Addr().String(), Interval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]int64
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if got = rec.points(); len(got) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("nothing pushed")
		}
	}
	shutdown(context.Background())
	for key, want := range map[string]int64{
		"system.network.connection.count,network.type=ipv4,network.connection.state=time_wait":              1,
		"system.network.connection.count,network.type=ipv4,network.connection.state=close_wait":             1,
		"system.network.connection.count,network.type=ipv4,network.connection.state=syn_received":           0,
		"tcptrace.transitions,network.type=ipv4,tcptrace.state.old=fin_wait_2,tcptrace.state.new=time_wait": 1,
		"tcptrace.transitions,network.type=ipv4,tcptrace.state.old=listen,tcptrace.state.new=syn_received":  1,
		"tcptrace.timewait.entries":                                     1,
		"tcptrace.process.connections,process.executable.name=curl":     1,
		"tcptrace.process.close_wait,process.executable.name=nginx":     1,
		"tcptrace.closes,network.type=ipv4,tcptrace.close.cause=closed": 0,
		// the handshake's 50 us: the bucket from 32 to 64 us, the sixth
		"tcptrace.state.duration,tcptrace.state=syn_sent,count":     1,
		"tcptrace.state.duration,tcptrace.state=syn_sent,bucket":    5,
		"tcptrace.state.duration,tcptrace.state=syn_received,count": 1,
		"tcptrace.state.duration,tcptrace.state=time_wait,count":    0,
	} {
		if v, ok := got[key]; !ok || v != want {
			t.Errorf("%s = %d (present %v), want %d", key, v, ok, want)
		}
	}
}

func TestSemconvState(t *testing.T) {
	for st, want := range map[events.State]string{events.SynRecv: "syn_received", events.FinWait1: "fin_wait_1",
		events.FinWait2: "fin_wait_2", events.TimeWait: "time_wait", events.CloseWait: "close_wait", events.Established: "established",
		events.LastAck: "last_ack", events.Listen: "listen", events.SynSent: "syn_sent", events.Closing: "closing"} {
		if got := SemconvState(st); got != want {
			t.Errorf("%v: %q, want %q", st, got, want)
		}
	}
}

// Over OTLP/HTTP with protobuf, to the path a collector serves.
func TestOTLPHTTP(t *testing.T) {
	rec := &receiver{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/metrics" || r.Header.Get("Content-Type") != "application/x-protobuf" {
			http.Error(w, "unexpected "+r.URL.Path, http.StatusNotFound)
			return
		}
		body, _ := io.ReadAll(r.Body)
		req := &colmetricpb.ExportMetricsServiceRequest{}
		if err := proto.Unmarshal(body, req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rec.Export(r.Context(), req)
		b, _ := proto.Marshal(&colmetricpb.ExportMetricsServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(b)
	}))
	defer srv.Close()
	x := New(0, cgroupName)
	x.Write(ev(1, "curl", 7, events.FinWait2, events.TimeWait, time.Millisecond, 0))
	shutdown, err := x.PushOTLP(context.Background(), OTLPOptions{Endpoint: srv.URL + "/v1/metrics", Protocol: "http/protobuf", Interval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(context.Background())
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if got := rec.points(); got["tcptrace.timewait.entries"] == 1 &&
			got["system.network.connection.count,network.type=ipv4,network.connection.state=time_wait"] == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %v", rec.points())
		}
	}
}
