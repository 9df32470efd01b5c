package loader

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// A Feature is something the program uses where the kernel has it; where
// it has not, tcptrace does what Without says. Each is found by a probe of
// the kernel (its BTF, or a program load), never from its version number:
// distributions backport.
type Feature struct {
	Name    string // short, the agent's label: send_notes, btf_cast
	Needs   string // what the kernel must have, and the Linux release that brought it
	Without string // what tcptrace does instead
	Has     bool
}

// Warning is the line said at start when the kernel lacks f.
func (f Feature) Warning() string {
	return fmt.Sprintf("this kernel has no %s: %s", f.Needs, f.Without)
}

// Features says which of the program's optional features this kernel has.
func Features() ([]Feature, error) {
	kernel, err := btf.LoadKernelSpec()
	if err != nil {
		return nil, fmt.Errorf("read kernel BTF: %w", err)
	}
	return probeFeatures(kernel)
}

func probeFeatures(kernel *btf.Spec) ([]Feature, error) {
	cookies, err := probeHelper(kernel, asm.FnGetSocketCookie)
	if err != nil {
		return nil, err
	}
	task, err := probeHelper(kernel, asm.FnGetCurrentTaskBtf)
	if err != nil {
		return nil, err
	}
	return []Feature{{
		Name:    "socket_cookies",
		Needs:   "socket cookies, BTF tasks and socket storage in tracing programs (Linux 5.11 and 5.12)",
		Without: "sockets are named by their kernel address (sock), a server connection's listener is found by its port, and where several processes listen on it, its owner by dumps of open files",
		Has:     cookies && task,
	}, {
		Name:    "send_notes",
		Needs:   "sock:sock_send_length tracepoint (Linux 6.3)",
		Without: "who holds a server connection is found by dumps of open files, after its handshake and when its peer closes, instead of at its first send",
		Has:     hasNotes(kernel),
	}, {
		Name:    "btf_cast",
		Needs:   "bpf_rdonly_cast kfunc (Linux 6.2)",
		Without: "transitions an arriving segment makes are timed when the program runs, about a microsecond after TCP's own clock, and two fields are read through helpers (a few tens of ns more per transition)",
		Has:     hasFunc(kernel, "bpf_rdonly_cast"),
	}}, nil
}

func hasFunc(kernel *btf.Spec, name string) bool {
	var fn *btf.Func
	return kernel.TypeByName(name, &fn) == nil
}

// the floor: what the program cannot do without, each with the release
// that brought it
var floor = []struct {
	what string
	has  func(*btf.Spec) (bool, error)
}{
	{"BPF ring buffers (Linux 5.8)", func(*btf.Spec) (bool, error) {
		err := features.HaveMapType(ebpf.RingBuf)
		if errors.Is(err, ebpf.ErrNotSupported) {
			return false, nil
		}
		return err == nil, err
	}},
	{"test runs of raw tracepoint programs on a chosen CPU (Linux 5.10)", func(*btf.Spec) (bool, error) {
		return probeRunOnCPU()
	}},
	{"sock:inet_sock_set_state and tcp:tcp_send_reset for BTF-typed programs", func(k *btf.Spec) (bool, error) {
		return hasTracepoint(k, "inet_sock_set_state") && hasTracepoint(k, "tcp_send_reset"), nil
	}},
}

// probeHelper loads a program on sock:inet_sock_set_state that calls fn
// with the socket as its argument: the verifier refuses a helper a
// tracing program may not call as an unknown or invalid function.
func probeHelper(kernel *btf.Spec, fn asm.BuiltinFunc) (bool, error) {
	prog, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Type:       ebpf.Tracing,
		AttachType: ebpf.AttachTraceRawTp,
		AttachTo:   "inet_sock_set_state",
		License:    "GPL",
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R1, asm.R1, 0, asm.DWord), // the socket
			fn.Call(),
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
	}, ebpf.ProgramOptions{KernelTypes: kernel})
	if err == nil {
		prog.Close()
		return true, nil
	}
	var verr *ebpf.VerifierError
	if errors.As(err, &verr) {
		log := strings.Join(verr.Log, "\n")
		if strings.Contains(log, "invalid func") || strings.Contains(log, "unknown func") {
			return false, nil
		}
	}
	return false, fmt.Errorf("probe for %v: %w", fn, err)
}

// probeRunOnCPU runs an empty raw_tp program on CPU 0, as Settle runs
// flush_staging on every CPU: kernels before 5.10 cannot.
func probeRunOnCPU() (bool, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.RawTracepoint,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return false, fmt.Errorf("probe for test runs on a CPU: %w", err)
	}
	defer prog.Close()
	_, err = prog.Run(&ebpf.RunOptions{Flags: unix.BPF_F_TEST_RUN_ON_CPU, CPU: 0})
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.Errno(524) /* ENOTSUPP */), errors.Is(err, ebpf.ErrNotSupported):
		return false, nil
	}
	return false, fmt.Errorf("probe for test runs on a CPU: %w", err)
}

// checkFloor names, in one line, what this kernel lacks of the floor.
func checkFloor(kernel *btf.Spec) error {
	var missing []string
	for _, f := range floor {
		ok, err := f.has(kernel)
		if err != nil {
			return err
		}
		if !ok {
			missing = append(missing, f.what)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	release := "this kernel"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		release = "kernel " + strings.TrimSpace(string(b))
	}
	return fmt.Errorf("%s has no %s: tcptrace needs them (Linux 5.10 or later; see README \"Kernels\")", release, strings.Join(missing, ", "))
}
