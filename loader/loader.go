// Package loader owns the BPF objects and links: it checks the machine,
// loads the committed CO-RE object with the filters set, attaches it, reads
// its ring buffer and counts what the kernel could not deliver.
package loader

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/filter"
)

// Defaults for Options left zero.
const (
	DefaultRingSize    = 8 << 20
	DefaultWakeupBytes = 256 << 10
)

// ErrClosed is returned by ReadBatch after Close.
var ErrClosed = errRingClosed

// Options configure the program before it is loaded. Filters left empty
// let everything through.
type Options struct {
	RingSize    int    // ring buffer bytes: a power of two, at least a page
	WakeupBytes uint64 // pending bytes that wake the reader

	// Filter is the part of the trace's filter the program applies
	// (filter.Filter.Kernel); the stream applies the rest.
	Filter filter.Kernel
}

// objects are the maps and the programs every kernel loads.
type objects struct {
	tcptraceMaps
	HandleSendReset *ebpf.Program `ebpf:"handle_send_reset"`
	FlushStaging    *ebpf.Program `ebpf:"flush_staging"`
	DumpHolders     *ebpf.Program `ebpf:"dump_holders"`
}

// byCookie are the programs of kernels whose tracing programs name
// sockets by cookie (the socket_cookies feature); byAddress, the one
// that takes their place elsewhere (Linux 5.10: see bpf/compat.h).
// notes is the program that notes who holds a server's connection, on
// sock:sock_send_length (Linux 6.3). Each is loaded where the kernel
// has what it needs.
type (
	byCookie struct {
		HandleSetState *ebpf.Program `ebpf:"handle_set_state"`
		RescueSetState *ebpf.Program `ebpf:"rescue_set_state"`
		NameSockets    *ebpf.Program `ebpf:"name_sockets"`
	}
	byAddress struct {
		HandleSetState *ebpf.Program `ebpf:"handle_set_state_510"`
	}
	notes struct {
		NoteSend *ebpf.Program `ebpf:"note_send"`
	}
)

func (o *objects) Close() error {
	return errors.Join(o.tcptraceMaps.Close(), closeAll(o.HandleSendReset, o.FlushStaging, o.DumpHolders))
}

func closeAll(progs ...*ebpf.Program) error {
	var errs []error
	for _, p := range progs {
		if p != nil {
			errs = append(errs, p.Close())
		}
	}
	return errors.Join(errs...)
}

// Tracer is the loaded program, its links and its reader.
type Tracer struct {
	objs    objects
	cookies byCookie
	address byAddress
	notes   notes
	// the program on sock:inet_sock_set_state: cookies' or address'
	setState *ebpf.Program
	links    []link.Link
	ring     *ring
	// the last batch stopped at its size: read again before waiting
	more bool
	// records that could not be decoded
	bad atomic.Uint64
	// possible CPUs: Settle flushes each one's staging
	cpus int
	// what this kernel offers beyond the floor
	features []Feature
}

// Check tells whether this machine can run the tracer, as one error line
// that says what to do.
func Check() error {
	_, err := check()
	return err
}

// check returns the kernel's BTF, which loading needs too.
func check() (*btf.Spec, error) {
	if err := checkPrivileges(); err != nil {
		return nil, err
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		return nil, errors.New("this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): tcptrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")
	}
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return nil, fmt.Errorf("read kernel BTF: %w", err)
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock limit: %w", err)
	}
	if err := checkFloor(spec); err != nil {
		return nil, err
	}
	return spec, nil
}

func hasTracepoint(kernel *btf.Spec, tp string) bool {
	var fn *btf.Typedef
	return kernel.TypeByName("btf_trace_"+tp, &fn) == nil
}

// hasNotes says whether the kernel has sock:sock_send_length, where the
// note of who holds a server's connection attaches (Linux 6.3).
func hasNotes(kernel *btf.Spec) bool { return hasTracepoint(kernel, "sock_send_length") }

func checkPrivileges() error {
	if os.Geteuid() == 0 {
		return nil
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	has := func(c uint) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
	if has(unix.CAP_BPF) && has(unix.CAP_PERFMON) {
		return nil
	}
	return errors.New("needs root, or CAP_BPF and CAP_PERFMON: run it with sudo")
}

// Load checks the machine, then loads the program configured by opts. It
// does not attach.
func Load(opts Options) (*Tracer, error) {
	kernel, err := check()
	if err != nil {
		return nil, err
	}
	spec, err := loadTcptrace()
	if err != nil {
		return nil, fmt.Errorf("read embedded BPF object: %w", err)
	}
	if err := configure(spec, &opts); err != nil {
		return nil, err
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("count CPUs: %w", err)
	}
	features, err := probeFeatures(kernel)
	if err != nil {
		return nil, err
	}
	t := &Tracer{cpus: cpus, features: features}
	if err := t.load(spec, kernel); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load BPF program: the kernel's verifier refused it: %v", verr)
		}
		return nil, fmt.Errorf("load BPF program: %w", err)
	}
	// the parsed kernel BTF (tens of MB) is garbage now: give it back
	// rather than carry it as resident memory for the whole run
	kernel = nil
	debug.FreeOSMemory()
	if err := t.fillFilters(&opts); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// load loads the programs this kernel's features call for, and only
// those: the verifier refuses a program that calls a helper the kernel
// lacks, even one never attached.
func (t *Tracer) load(spec *ebpf.CollectionSpec, kernel *btf.Spec) error {
	var want []any
	if has(t.features, "socket_cookies") {
		want = append(want, &t.cookies)
		delete(spec.Programs, "handle_set_state_510")
	} else {
		want = append(want, &t.address)
		for _, name := range []string{"handle_set_state", "rescue_set_state", "name_sockets"} {
			delete(spec.Programs, name)
		}
	}
	if has(t.features, "send_notes") {
		want = append(want, &t.notes)
	} else {
		delete(spec.Programs, "note_send")
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		Programs: ebpf.ProgramOptions{KernelTypes: kernel},
	})
	if err != nil {
		return err
	}
	defer coll.Close()
	for _, to := range append(want, &t.objs) {
		if err := coll.Assign(to); err != nil {
			t.Close()
			return err
		}
	}
	t.setState = t.cookies.HandleSetState
	if t.setState == nil {
		t.setState = t.address.HandleSetState
	}
	return nil
}

// has says whether the kernel has the feature named.
func has(fs []Feature, name string) bool {
	for _, f := range fs {
		if f.Name == name {
			return f.Has
		}
	}
	return false
}

func configure(spec *ebpf.CollectionSpec, o *Options) error {
	if o.RingSize == 0 {
		o.RingSize = DefaultRingSize
	}
	if o.RingSize < os.Getpagesize() || o.RingSize&(o.RingSize-1) != 0 {
		return fmt.Errorf("ring buffer size %d: must be a power of two of at least %d bytes", o.RingSize, os.Getpagesize())
	}
	if o.WakeupBytes == 0 {
		o.WakeupBytes = DefaultWakeupBytes
	}
	if o.WakeupBytes > uint64(o.RingSize)/2 {
		o.WakeupBytes = uint64(o.RingSize) / 2
	}
	spec.Maps["events"].MaxEntries = uint32(o.RingSize)

	f := &o.Filter
	var family uint8
	switch f.Family {
	case 0:
	case 4:
		family = unix.AF_INET
	case 6:
		family = unix.AF_INET6
	default:
		return fmt.Errorf("address family %d: want 4 or 6", f.Family)
	}
	if len(f.LPorts) > filter.MaxValues || len(f.RPorts) > filter.MaxValues {
		return fmt.Errorf("at most %d values per filter", filter.MaxValues)
	}

	// states, processes and command names are filtered in user space
	// (filter.Filter.Match): see bpf/tcptrace.c
	set := map[string]any{
		"filter_family": family,
		"filter_netns":  f.Netns,
		"filter_lport":  len(f.LPorts) > 0,
		"filter_rport":  len(f.RPorts) > 0,
		"wakeup_bytes":  o.WakeupBytes,
	}
	for name, v := range set {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	return nil
}

func (t *Tracer) fillFilters(o *Options) error {
	one := uint8(1)
	for _, p := range o.Filter.LPorts {
		if err := t.objs.LportFilter.Put(p, one); err != nil {
			return fmt.Errorf("set local port filter: %w", err)
		}
	}
	for _, p := range o.Filter.RPorts {
		if err := t.objs.RportFilter.Put(p, one); err != nil {
			return fmt.Errorf("set remote port filter: %w", err)
		}
	}
	return nil
}

// ExpectedLinks is how many links Attach creates on this kernel: the
// program on sock:inet_sock_set_state, its rescue where the kernel names
// sockets by cookie (the kernels with the recursion check it answers),
// one on tcp:tcp_send_reset, and where the kernel has it (send_notes), one
// on sock:sock_send_length. A process running tcptrace is attached once
// it holds that many (LinksHeld).
func ExpectedLinks() (int, error) {
	fs, err := Features()
	if err != nil {
		return 0, err
	}
	n := 2
	if has(fs, "socket_cookies") {
		n++
	}
	if has(fs, "send_notes") {
		n++
	}
	return n, nil
}

// LinksHeld counts the BPF links process pid holds open: a process running
// tcptrace is attached once it holds ExpectedLinks of them.
func LinksHeld(pid int) int {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	fds, _ := os.ReadDir(dir)
	n := 0
	for _, fd := range fds {
		if target, err := os.Readlink(filepath.Join(dir, fd.Name())); err == nil && target == "anon_inode:bpf_link" {
			n++
		}
	}
	return n
}

// Attach starts tracing. tp_btf programs attach through BTF, so tracefs
// need not be mounted.
func (t *Tracer) Attach() error {
	var err error
	t.ring, err = newRing(t.objs.Events.FD(), int(t.objs.Events.MaxEntries()))
	if err != nil {
		return fmt.Errorf("open ring buffer: %w", err)
	}
	// records staged on a CPU reach the ring only when user space can
	// flush them: find out now rather than lose them at exit. Before the
	// programs run, this also puts every online CPU's first mark in the
	// ring ahead of any record, so the reader knows every CPU from the
	// start (package order).
	if _, err := t.Settle(); err != nil {
		return err
	}
	// the reset handler first, so no close loses its cause; then the two
	// programs of sock:inet_sock_set_state in the order the kernel must
	// call them (the order of attachment): see bpf/tcptrace.c
	for _, p := range []struct {
		prog *ebpf.Program
		name string
	}{
		{t.objs.HandleSendReset, "tcp:tcp_send_reset"},
		{t.setState, "sock:inet_sock_set_state"},
		{t.cookies.RescueSetState, "sock:inet_sock_set_state"},
		{t.notes.NoteSend, "sock:sock_send_length"},
	} {
		if p.prog == nil {
			continue
		}
		l, err := link.AttachTracing(link.TracingOptions{Program: p.prog, AttachType: ebpf.AttachTraceRawTp})
		if err != nil {
			return fmt.Errorf("attach %s: %w", p.name, err)
		}
		t.links = append(t.links, l)
	}
	return nil
}

// ReadBatch waits until the program wakes the reader, or at most wait,
// then decodes into evs what the ring holds, up to len(evs) events, and
// returns how many. A ring record holds one or more events (a CPU's staged
// batch), in time order within the record but not across records: see
// Settle. The program wakes the reader only once WakeupBytes are pending,
// so wait bounds the latency on a quiet system. It returns ErrClosed after
// Close. A record that cannot be decoded is counted as lost.
func (t *Tracer) ReadBatch(evs []events.Event, wait time.Duration) (int, error) {
	if !t.more {
		if err := t.ring.wait(wait); err != nil {
			return 0, err
		}
	}
	n := 0
	_, t.more = t.ring.read(len(evs)*events.RecordSize, func(rec []byte) {
		if len(rec)%events.RecordSize != 0 {
			t.bad.Add(1)
			return
		}
		for ; len(rec) > 0; rec = rec[events.RecordSize:] {
			if err := evs[n].Decode(rec); err != nil {
				t.bad.Add(1)
				continue
			}
			n++
		}
	})
	return n, nil
}

// Settle has every CPU write out the records it has staged, followed by
// a mark (flush_staging, run on each CPU): once the reader has read a
// CPU's mark, it holds every record of that CPU timed before the mark
// (package order). ok is false if some CPU's staging was in use, and
// wrote no mark: then try again later.
func (t *Tracer) Settle() (ok bool, err error) {
	ok = true
	for cpu := range t.cpus {
		ret, err := t.objs.FlushStaging.Run(&ebpf.RunOptions{
			Flags: unix.BPF_F_TEST_RUN_ON_CPU,
			CPU:   uint32(cpu),
		})
		switch {
		case errors.Is(err, unix.ENXIO):
			// an offline CPU runs no programs
		case err != nil:
			return false, fmt.Errorf("flush CPU %d's staged records: %w", cpu, err)
		case ret != 0:
			ok = false
		}
	}
	return ok, nil
}

// SendNotes says whether the program notes who sends on a server
// connection (sock:sock_send_length): where not, hand-offs show only in
// holders dumps.
func (t *Tracer) SendNotes() bool { return t.notes.NoteSend != nil }

// Features says which optional features the program uses on this kernel
// (Has), and what it does where a feature is missing.
func (t *Tracer) Features() []Feature { return t.features }

// Wake makes a waiting ReadBatch return.
func (t *Tracer) Wake() {
	t.ring.wake()
}

// Detach stops new events; what is in the ring can still be read.
func (t *Tracer) Detach() error {
	var errs []error
	for i := len(t.links) - 1; i >= 0; i-- {
		errs = append(errs, t.links[i].Close())
	}
	t.links = nil
	return errors.Join(errs...)
}

// Close releases everything, in reverse order of acquisition.
func (t *Tracer) Close() error {
	errs := []error{t.Detach()}
	if t.ring != nil {
		errs = append(errs, t.ring.close())
	}
	errs = append(errs, t.objs.Close(), closeAll(t.cookies.HandleSetState, t.cookies.RescueSetState,
		t.cookies.NameSockets, t.address.HandleSetState, t.notes.NoteSend))
	return errors.Join(errs...)
}

// Holders lists every open file of a TCP socket on the host, with the
// process that holds it, by running the dump_holders iterator over every
// task's files. It costs a walk of every open file on the host: a few
// milliseconds per hundred thousand. A walk of every TCP socket
// (name_sockets) comes before it, to give every socket the cookie the
// dump reads, and after it, to give each listener it found that predates
// the tracer its storage, so that its children name it.
//
// Where records name sockets by address (no socket_cookies feature), so
// do the holders: there is no sockets iterator then.
func (t *Tracer) Holders() ([]events.Holder, error) {
	name := t.cookies.NameSockets
	if name != nil {
		if _, err := runIter(name, "the sockets iterator"); err != nil {
			return nil, err
		}
	}
	raw, err := runIter(t.objs.DumpHolders, "the holders iterator")
	if err != nil {
		return nil, err
	}
	if name != nil {
		if _, err := runIter(name, "the sockets iterator"); err != nil {
			return nil, err
		}
	}
	hs := make([]events.Holder, len(raw)/events.HolderSize)
	for i := range hs {
		if err := hs[i].DecodeHolder(raw[i*events.HolderSize:]); err != nil {
			return nil, err
		}
		if name == nil {
			hs[i].Sock = hs[i].Addr
		}
	}
	return hs, nil
}

// runIter runs an iterator program once and returns what it wrote.
func runIter(prog *ebpf.Program, what string) ([]byte, error) {
	it, err := link.AttachIter(link.IterOptions{Program: prog})
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", what, err)
	}
	defer it.Close()
	rd, err := it.Open()
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", what, err)
	}
	defer rd.Close()
	raw, err := io.ReadAll(rd)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	return raw, nil
}

// Counts are what the kernel side could not deliver or follow.
type Counts struct {
	// Lost: records dropped because the ring was full, plus transitions
	// the kernel skipped because the program was already running on that
	// CPU and the nested program did not handle either.
	Lost uint64
	// Rescued: transitions the kernel skipped handle_set_state for,
	// because an interrupt came while it ran, handled by rescue_set_state.
	Rescued uint64
}

// Counts reads the loss counters.
func (t *Tracer) Counts() (Counts, error) {
	var c Counts
	sum := func(idx uint32) (uint64, error) {
		var per []uint64
		if err := t.objs.Counters.Lookup(idx, &per); err != nil {
			return 0, fmt.Errorf("read counter %d: %w", idx, err)
		}
		var n uint64
		for _, v := range per {
			n += v
		}
		return n, nil
	}
	var err error
	if c.Lost, err = sum(counterLost); err != nil {
		return c, err
	}
	c.Lost += t.bad.Load()
	// runs of handle_set_state the kernel skipped and rescue_set_state
	// did not take over are lost transitions
	st, err := t.setState.Stats()
	if err != nil {
		return c, fmt.Errorf("read program stats: %w", err)
	}
	if c.Rescued, err = sum(counterRescued); err != nil {
		return c, err
	}
	if st.RecursionMisses > c.Rescued {
		c.Lost += st.RecursionMisses - c.Rescued
	}
	return c, nil
}

// indexes of the counters map, as in bpf/tcptrace.h
const (
	counterLost    = 0
	counterRescued = 1
)

// Monotonic reads CLOCK_MONOTONIC, the kernel's bpf_ktime_get_ns clock.
func Monotonic() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// WallClock maps the kernel's monotonic timestamps to wall-clock time.
type WallClock struct {
	base time.Time
	mono uint64
}

// NewWallClock reads both clocks now.
func NewWallClock() *WallClock {
	c := &WallClock{}
	c.Sync()
	return c
}

// Sync rereads both clocks, to follow steps of the wall clock.
func (c *WallClock) Sync() {
	c.mono = Monotonic()
	c.base = time.Now()
}

// Time converts a monotonic timestamp.
func (c *WallClock) Time(mono uint64) time.Time {
	return c.base.Add(time.Duration(int64(mono) - int64(c.mono)))
}

// Pending is the number of bytes waiting in the ring.
func (t *Tracer) Pending() int {
	return t.ring.pending()
}
