// Command floor measures what each piece of work costs a program on
// sock:inet_sock_set_state, the hook tcptrace runs on: the clock, a ring
// buffer record, socket storage, the owner, the cookie. It compiles
// floor.c once per piece (so it needs clang), attaches the variant and an
// empty control program, churns loopback connections pinned to CPU 0 in a
// fresh network namespace, and prints each program's run_time_ns / run_cnt
// with kernel.bpf_stats_enabled on. `make floor` runs it; README "Overhead"
// has a run.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// pieces, each measured alone on top of the "nothing" variant
var pieces = []struct{ define, what string }{
	{"", "nothing (a map lookup)"},
	{"CLOCK", "bpf_ktime_get_ns()"},
	{"RING_RESERVE", "a 104-byte record: reserve, copy, submit"},
	{"RING_OUTPUT", "a 104-byte record: bpf_ringbuf_output()"},
	{"STORAGE_LOOKUP", "socket storage lookup"},
	{"STORAGE_CREATE", "socket storage made at a socket's first transition"},
	{"COMM_HELPER", "bpf_get_current_comm()"},
	{"COMM_IN_PLACE", "task->comm read in place"},
	{"COOKIE", "bpf_get_socket_cookie()"},
	{"CGROUP", "the socket's cgroup id"},
	{"TUPLE", "netns, ports, IPv4 addresses"},
}

func main() {
	src := flag.String("src", "bench/floor/floor.c", "the variant program")
	inc := flag.String("I", ".", "where vmlinux.h is")
	clang := flag.String("clang", "clang-14", "the C compiler for BPF")
	churn := flag.String("churn", "./bin/churn", "the churn generator")
	dur := flag.Duration("d", 5*time.Second, "churn per piece")
	flag.Parse()
	if flag.NArg() > 0 || *dur <= 0 {
		fmt.Fprintln(os.Stderr, "floor: bad arguments (see floor -h)")
		os.Exit(2)
	}
	if err := run(*src, *inc, *clang, *churn, *dur); err != nil {
		fmt.Fprintf(os.Stderr, "floor: %v\n", err)
		os.Exit(1)
	}
}

func run(src, inc, clang, churn string, dur time.Duration) error {
	dir, err := os.MkdirTemp("", "floor")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return fmt.Errorf("enable BPF statistics: %w", err)
	}
	defer stats.Close()

	fmt.Printf("churn client-close pinned to CPU 0, %v per piece; ns per transition, run_time_ns / run_cnt\n\n", dur)
	fmt.Println("| piece | variant | control | variant - control | the piece alone |")
	fmt.Println("| --- | ---: | ---: | ---: | ---: |")
	var base float64
	for i, p := range pieces {
		obj := filepath.Join(dir, fmt.Sprintf("v%d.o", i))
		args := []string{"-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", "-I" + inc, "-I" + filepath.Join(inc, "bpf", "include"), "-c", src, "-o", obj}
		if p.define != "" {
			args = append(args, "-D"+p.define)
		}
		if out, err := exec.Command(clang, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s %s: %v: %s", clang, strings.Join(args, " "), err, out)
		}
		v, c, err := measure(obj, churn, dur)
		if err != nil {
			return fmt.Errorf("%s: %w", p.what, err)
		}
		if i == 0 {
			base = v - c
			fmt.Printf("| %s | %.0f | %.0f | %.0f | |\n", p.what, v, c, v-c)
			continue
		}
		fmt.Printf("| %s | %.0f | %.0f | %.0f | %.0f |\n", p.what, v, c, v-c, v-c-base)
	}
	return nil
}

// measure loads one variant with the control, churns, and returns both
// programs' ns per run.
func measure(obj, churn string, dur time.Duration) (variant, control float64, err error) {
	spec, err := ebpf.LoadCollectionSpec(obj)
	if err != nil {
		return 0, 0, err
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return 0, 0, err
	}
	defer coll.Close()
	// the variant first, as tcptrace's handle_set_state runs before its
	// rescue program
	for _, name := range []string{"variant", "control"} {
		l, err := link.AttachTracing(link.TracingOptions{Program: coll.Programs[name]})
		if err != nil {
			return 0, 0, fmt.Errorf("attach %s: %w", name, err)
		}
		defer l.Close()
	}
	rd, err := ringbuf.NewReader(coll.Maps["events"])
	if err != nil {
		return 0, 0, err
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		var rec ringbuf.Record
		for {
			if err := rd.ReadInto(&rec); errors.Is(err, os.ErrClosed) {
				return
			}
		}
	}()
	defer func() { rd.Close(); <-drained }()

	ns := fmt.Sprintf("tcptrace-floor-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return 0, 0, fmt.Errorf("ip netns add: %v: %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return 0, 0, fmt.Errorf("ip link set lo up: %v: %s", err, out)
	}
	before := make(map[string]*ebpf.ProgramStats)
	for _, name := range []string{"variant", "control"} {
		if before[name], err = coll.Programs[name].Stats(); err != nil {
			return 0, 0, err
		}
	}
	if out, err := exec.Command("ip", "netns", "exec", ns, "taskset", "-c", "0", churn, "-d", dur.String()).CombinedOutput(); err != nil {
		return 0, 0, fmt.Errorf("churn: %v: %s", err, out)
	}
	per := func(name string) (float64, error) {
		st, err := coll.Programs[name].Stats()
		if err != nil {
			return 0, err
		}
		n := st.RunCount - before[name].RunCount
		if n == 0 {
			return 0, fmt.Errorf("%s never ran", name)
		}
		return float64((st.Runtime - before[name].Runtime).Nanoseconds()) / float64(n), nil
	}
	if variant, err = per("variant"); err != nil {
		return 0, 0, err
	}
	control, err = per("control")
	return variant, control, err
}
