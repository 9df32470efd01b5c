// Command run is `make bench`: it measures what tracing costs the kernel's
// connection churn, in the two shapes users have: blocking threads that
// saturate the CPUs, and an event loop over epoll bound by latency. For
// each it alternates runs with no tracer, with `tcptrace --json` and with
// text output, each writing every event to a file, so that drift of the
// machine cancels out, and for the event loop also with a kernel filter
// that drops every record. Then it measures the BPF program's cost per
// event, a burst at the highest rate the churn makes, and a TIME_WAIT
// storm whose TIME_WAITs expire (tcp_tw_reuse=0) rather than being reused.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/tcptrace/tcptrace/loader"
	"golang.org/x/sys/unix"
)

type config struct {
	tcptrace, churn string
	pairs           int
	dur             time.Duration
	loopPairs       int
	loopDur         time.Duration
	storm           time.Duration
	stormRate       float64
	stormTargets    int
	soak            time.Duration
	mode            string
	clients         int
	burst           time.Duration
	burstMode       string
	burstClients    int
	dir             string
	costOnly        bool
}

func main() {
	var c config
	flag.StringVar(&c.tcptrace, "tcptrace", "./tcptrace", "the tcptrace binary")
	flag.StringVar(&c.churn, "churn", "./bin/churn", "the churn binary")
	flag.IntVar(&c.pairs, "pairs", 3, "runs of each kind, alternated (0: only the storm)")
	flag.DurationVar(&c.dur, "d", 30*time.Second, "churn per run")
	flag.IntVar(&c.loopPairs, "loop-pairs", 7, "event-loop runs of each kind, alternated (0: none)")
	flag.DurationVar(&c.loopDur, "loop-d", 10*time.Second, "event-loop churn per run")
	flag.DurationVar(&c.storm, "storm", 110*time.Second, "the TIME_WAIT expiry storm's length, past 60 s (0: none)")
	flag.Float64Var(&c.stormRate, "storm-rate", 800, "the storm's connections per second: as many TIME_WAITs expire each second once 60 s have passed")
	flag.IntVar(&c.stormTargets, "storm-targets", 4, "server addresses in the storm, so that connect() finds free ports at that rate")
	flag.DurationVar(&c.soak, "soak", 0, "instead of the rest: tcptrace agent under the storm's churn for this long (at least 10m for the README's figures)")
	flag.StringVar(&c.mode, "mode", "client-close", "churn mode")
	flag.IntVar(&c.clients, "c", 4, "churn clients")
	flag.DurationVar(&c.burst, "burst", time.Second, "length of the burst run")
	flag.StringVar(&c.burstMode, "burst-mode", "rst", "churn mode of the burst: the most transitions per second")
	flag.IntVar(&c.burstClients, "burst-c", 8, "churn clients in the burst")
	flag.StringVar(&c.dir, "dir", os.TempDir(), "where tcptrace's output files go (removed after each run)")
	flag.BoolVar(&c.costOnly, "cost-only", false, "only the BPF cost per transition (three 10 s runs of the blocking churn with tcptrace --json)")
	flag.Parse()
	if err := run(&c); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

// result is one churn run.
type result struct {
	connRate float64
	events   uint64 // tcptrace's count
	lost     uint64
	secs     float64       // of churn
	cpu      time.Duration // after start-up: from the churn's start to the exit
	startCPU time.Duration // loading and attaching, before the churn
	maxRSS   int64         // KiB
	switches int64         // tcptrace's context switches, voluntary or not
	wall     float64
}

// shape is how the churn is written.
type shape struct {
	name  string
	loop  bool
	pairs int
	dur   time.Duration
	kinds []string
}

func run(c *config) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root: run it with sudo")
	}
	if c.soak > 0 {
		return soak(c)
	}
	if c.costOnly {
		// the BPF cost alone, as make test-kernels' guests can measure
		costs, statsRun, err := measureCost(c)
		if err != nil {
			return err
		}
		fmt.Printf("%s, %s: BPF ns/event %.0f (median)\n", kernelRelease(), cpuModel(), costs[1].total)
		printCost(costs, statsRun)
		return nil
	}
	if c.pairs == 0 {
		// the storm alone
		return storm(c)
	}
	shapes := []shape{{name: "blocking", pairs: c.pairs, dur: c.dur, kinds: []string{"untraced", "json", "text", "stats", "agent"}}}
	if c.loopPairs > 0 {
		shapes = append(shapes, shape{name: "event loop", loop: true, pairs: c.loopPairs, dur: c.loopDur,
			kinds: []string{"untraced", "json", "text", "stats", "agent", "dropped"}})
	}
	var tables []string
	for _, sh := range shapes {
		t, err := measureShape(c, sh)
		if err != nil {
			return err
		}
		tables = append(tables, t)
	}

	costs, statsRun, err := measureCost(c)
	if err != nil {
		return err
	}
	nsPerEvent := costs[1].total

	burst, err := churnRun(c, "json", c.burstMode, c.burstClients, c.burst, false)
	if err != nil {
		return fmt.Errorf("burst run: %w", err)
	}

	fmt.Printf("\n%s, %s, %s\n", time.Now().Format("2006-01-02"), kernelRelease(), cpuModel())
	for _, t := range tables {
		fmt.Print(t)
	}
	fmt.Printf("BPF ns/event: %.0f (below).\n", nsPerEvent)
	printCost(costs, statsRun)
	fmt.Printf("Burst: %v of churn -mode %s -c %d with tcptrace --json: %.0f conn/s, %.0f events/s, %d lost, peak RSS %.1f MiB.\n",
		c.burst, c.burstMode, c.burstClients, burst.connRate, float64(burst.events)/burst.secs, burst.lost, float64(burst.maxRSS)/1024)
	if c.storm > 0 {
		return storm(c)
	}
	return nil
}

// measureCost runs the churn with tcptrace --json three times, with the
// kernel's run-time statistics on for these runs only, and returns what
// the programs cost in each, sorted: the cost varies by a quarter from
// one run to the next.
func measureCost(c *config) ([]cost, result, error) {
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, result{}, fmt.Errorf("enable BPF statistics: %w", err)
	}
	defer stats.Close()
	var costs []cost
	var statsRun result
	for range 3 {
		var cs cost
		statsRun, err = churnRunWith(c, "json", c.mode, false, c.clients, 10*time.Second, func() error {
			cs, err = bpfCost()
			return err
		})
		if err != nil {
			return nil, result{}, fmt.Errorf("statistics run: %w", err)
		}
		costs = append(costs, cs)
	}
	slices.SortFunc(costs, func(a, b cost) int { return int(a.total - b.total) })
	return costs, statsRun, nil
}

func printCost(costs []cost, statsRun result) {
	fmt.Printf("\nBPF ns/event: run_time_ns / run_cnt over every tcptrace program, per transition, with kernel.bpf_stats_enabled=1, median of 3 runs of 10 s (%d events, %.0f conn/s in the last; off again after).\n",
		statsRun.events, statsRun.connRate)
	for _, cs := range costs {
		fmt.Printf("  run: %.0f ns/event;", cs.total)
		for _, n := range programs {
			if ns, ok := cs.perRun[n]; ok {
				fmt.Printf(" %s %.0f ns/run", n, ns)
			}
		}
		fmt.Println()
	}
}

// measureShape alternates the shape's kinds of run and returns its table.
func measureShape(c *config, sh shape) (string, error) {
	res := map[string][]result{}
	fmt.Printf("churn %s, %s, %d clients, %v per run, %d runs of each, alternated\n", c.mode, sh.name, c.clients, sh.dur, sh.pairs)
	for i := range sh.pairs {
		for _, k := range sh.kinds {
			r, err := churnRunWith(c, k, c.mode, sh.loop, c.clients, sh.dur, nil)
			if err != nil {
				return "", fmt.Errorf("%s %s run %d: %w", sh.name, k, i+1, err)
			}
			fmt.Printf("  run %d %-8s %8.0f conn/s", i+1, k, r.connRate)
			if k != "untraced" {
				fmt.Printf("  %9d events  %d lost", r.events, r.lost)
			}
			fmt.Println()
			res[k] = append(res[k], r)
		}
	}
	var b strings.Builder
	base := median(res["untraced"], func(r result) float64 { return r.connRate })
	fmt.Fprintf(&b, "\n%s churn (%s, %d clients, %d alternated runs of %v; ratio: median of the runs' ratios to the untraced run before them):\n\n", sh.name, c.mode, c.clients, sh.pairs, sh.dur)
	fmt.Fprintln(&b, "| run | conn/s | vs untraced | range | events/s | lost | CPU s per M events | start-up CPU s | switches/s | peak RSS |")
	fmt.Fprintln(&b, "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
	fmt.Fprintf(&b, "| untraced | %.0f | 100%% | | | | | | | |\n", base)
	for _, k := range sh.kinds[1:] {
		rs := res[k]
		ratios := make([]result, len(rs))
		lo, hi := 1e9, 0.0
		for i, r := range rs {
			ratios[i].connRate = r.connRate / res["untraced"][i].connRate
			lo, hi = min(lo, ratios[i].connRate), max(hi, ratios[i].connRate)
		}
		var lost uint64
		var rss int64
		for _, r := range rs {
			lost += r.lost
			rss = max(rss, r.maxRSS)
		}
		label := "`tcptrace --" + k + " > file`"
		switch k {
		case "stats":
			label = "`tcptrace stats --interval 1s > file`"
		case "agent":
			label = "`tcptrace agent`"
		case "dropped":
			label = "`tcptrace -L 1` (kernel drops every record)"
		}
		fmt.Fprintf(&b, "| %s | %.0f | %.3f | %.3f-%.3f | %.0f | %d | %.2f | %.2f | %.0f | %.1f MiB |\n",
			label, median(rs, func(r result) float64 { return r.connRate }),
			median(ratios, func(r result) float64 { return r.connRate }), lo, hi,
			median(rs, func(r result) float64 { return float64(r.events) / r.secs }),
			lost,
			median(rs, func(r result) float64 {
				if r.events == 0 {
					return 0
				}
				return r.cpu.Seconds() / float64(r.events) * 1e6
			}),
			median(rs, func(r result) float64 { return r.startCPU.Seconds() }),
			median(rs, func(r result) float64 { return float64(r.switches) / r.wall }),
			float64(rss)/1024)
	}
	fmt.Fprintln(&b)
	return b.String(), nil
}

func median(rs []result, f func(result) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func churnRun(c *config, kind, mode string, clients int, dur time.Duration, _ bool) (result, error) {
	return churnRunWith(c, kind, mode, false, clients, dur, nil)
}

// churnRunWith runs the churn in a new network namespace, traced as kind
// says; during is called after the churn, while tcptrace still runs.
func churnRunWith(c *config, kind, mode string, loop bool, clients int, dur time.Duration, during func() error) (result, error) {
	var r result
	ns := fmt.Sprintf("tcpbench-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return r, fmt.Errorf("ip netns add: %v: %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return r, fmt.Errorf("ip link: %v: %s", err, out)
	}

	var tracer *exec.Cmd
	var stderr strings.Builder
	if kind != "untraced" {
		f, err := os.CreateTemp(c.dir, "tcpbench-*.out")
		if err != nil {
			return r, err
		}
		defer os.Remove(f.Name())
		defer f.Close()
		args := []string{}
		switch kind {
		case "json":
			args = append(args, "--json")
		case "stats":
			// aggregates instead of lines, printed every second
			args = append(args, "stats", "--interval", "1s")
		case "agent":
			// the metrics, scraped by nobody: what keeping them costs
			args = append(args, "agent", "--listen", "127.0.0.1:0")
		case "dropped":
			// no socket has local port 1: the kernel filter drops
			// every record, leaving the programs and the settles
			args = append(args, "-L", "1")
		}
		tracer = exec.Command(c.tcptrace, args...)
		tracer.Stdout = f
		tracer.Stderr = &stderr
		if err := tracer.Start(); err != nil {
			return r, fmt.Errorf("start tcptrace: %w", err)
		}
		defer tracer.Process.Kill()
		if err := waitAttached(tracer.Process.Pid); err != nil {
			return r, fmt.Errorf("%w; stderr: %s", err, stderr.String())
		}
		// start-up (BTF, loading, the holders dump) is paid once: the
		// cost per event is what follows
		ticks, err := cpuTicks(tracer.Process.Pid)
		if err != nil {
			return r, err
		}
		r.startCPU = time.Duration(ticks) * time.Second / clockTicks
	}

	began := time.Now()
	cargs := []string{"netns", "exec", ns, c.churn, "-mode", mode, "-c", strconv.Itoa(clients), "-d", dur.String()}
	if loop {
		cargs = append(cargs, "-loop")
	}
	out, err := exec.Command("ip", cargs...).CombinedOutput()
	if err != nil {
		return r, fmt.Errorf("churn: %v: %s", err, out)
	}
	var n int
	if _, err := fmt.Sscanf(string(out), "connections/s: %f (%d in %fs", &r.connRate, &n, &r.secs); err != nil {
		return r, fmt.Errorf("churn output %q: %w", out, err)
	}
	if tracer == nil {
		return r, nil
	}
	if during != nil {
		if err := during(); err != nil {
			return r, err
		}
	}
	tracer.Process.Signal(os.Interrupt)
	if err := tracer.Wait(); err != nil {
		return r, fmt.Errorf("tcptrace: %v: %s", err, stderr.String())
	}
	summary := strings.TrimSpace(stderr.String())
	if i := strings.LastIndex(summary, "\n"); i >= 0 {
		summary = summary[i+1:]
	}
	if _, err := fmt.Sscanf(summary, "tcptrace: %d events, %d lost", &r.events, &r.lost); err != nil {
		return r, fmt.Errorf("tcptrace summary %q: %w", summary, err)
	}
	ru := tracer.ProcessState.SysUsage().(*syscall.Rusage)
	r.cpu = tracer.ProcessState.UserTime() + tracer.ProcessState.SystemTime() - r.startCPU
	r.maxRSS = ru.Maxrss
	r.switches = ru.Nvcsw + ru.Nivcsw
	r.wall = time.Since(began).Seconds()
	return r, nil
}

// waitAttached waits until the process holds all of tcptrace's BPF links.
func waitAttached(pid int) error {
	want, err := loader.ExpectedLinks()
	if err != nil {
		return err
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if loader.LinksHeld(pid) == want {
			return nil
		}
	}
	return errors.New("tcptrace did not attach within 10s")
}

// programs are tcptrace's BPF programs, as the kernel names them.
// The holder note runs on every socket send on the host, not per
// transition: its cost is counted per transition all the same.
var programs = []string{"handle_set_state", "rescue_set_state", "handle_send_reset", "flush_staging", "note_send"}

// cost is what the BPF programs took in one run.
type cost struct {
	total  float64            // ns per transition, all programs
	perRun map[string]float64 // ns per run of each program
}

// bpfCost sums run time over the newest tcptrace programs and divides by
// the transitions seen: the runs of handle_set_state and the runs the
// kernel skipped it for (which rescue_set_state handled).
func bpfCost() (cost, error) {
	c := cost{perRun: map[string]float64{}}
	newest := map[string]ebpf.ProgramID{}
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			break
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		info, err := p.Info()
		p.Close()
		if err != nil {
			continue
		}
		// the name from BTF, whole, or the kernel's 15 characters of it;
		// 5.10's handle_set_state is handle_set_state_510
		if info.Name == "handle_set_state_510" {
			info.Name = "handle_set_state"
		}
		for _, n := range programs {
			if (info.Name == n || len(info.Name) == 15 && strings.HasPrefix(n, info.Name)) && id > newest[n] {
				newest[n] = id
			}
		}
	}
	want := len(programs)
	if _, ok := newest["note_send"]; !ok {
		want-- // only where the kernel has sock:sock_send_length (6.3)
	}
	if _, ok := newest["rescue_set_state"]; !ok {
		want-- // not on 5.10, which has no recursion check to answer
	}
	if len(newest) != want {
		return c, fmt.Errorf("found %d of tcptrace's %d programs", len(newest), len(programs))
	}
	var runtime time.Duration
	var transitions uint64
	for n, id := range newest {
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			return c, err
		}
		st, err := p.Stats()
		p.Close()
		if err != nil {
			return c, fmt.Errorf("stats of %s: %w", n, err)
		}
		runtime += st.Runtime
		if st.RunCount > 0 {
			c.perRun[n] = float64(st.Runtime.Nanoseconds()) / float64(st.RunCount)
		}
		if n == "handle_set_state" {
			transitions = st.RunCount + st.RecursionMisses
		}
	}
	if transitions == 0 {
		return c, errors.New("no transitions counted")
	}
	c.total = float64(runtime.Nanoseconds()) / float64(transitions)
	return c, nil
}

func kernelRelease() string {
	var u unix.Utsname
	unix.Uname(&u)
	return "Linux " + unix.ByteSliceToString(u.Release[:])
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	n := 0
	model := ""
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok {
			switch strings.TrimSpace(k) {
			case "processor":
				n++
			case "model name":
				model = strings.TrimSpace(v)
			}
		}
	}
	return fmt.Sprintf("%d x %s", n, model)
}
