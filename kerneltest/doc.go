// Package kerneltest checks tcptrace against the real kernel: each test
// makes a network namespace, runs client and server as separate processes
// in it, and checks every transition the tracer reports, event by event.
// The tests need root and BPF; they skip without them unless
// TCPTRACE_REQUIRE_BPF=1, when they fail instead.
package kerneltest
