# tcptrace. `make build` needs only Go: the BPF object is committed.
# `make generate` needs clang 14 (Debian bookworm's; the libbpf headers are
# vendored in bpf/include) and, for vmlinux.h,
# bpftool: apt-get install -y clang-14 llvm bpftool

GO ?= go
# pinned: another clang emits a different object, and CI compares bytes
BPF_CLANG ?= clang-14
BPF_CFLAGS ?= -O2 -g -Wall -Werror
export BPF_CLANG BPF_CFLAGS

.PHONY: build image test test-kernels bench-kernels generate bpf vmlinux bench floor

# Two binaries: tcptrace, and tcptrace-agent, the agent with the exporters'
# libraries, which `tcptrace agent` runs in its place (go install
# ./cmd/... makes the same two). Static (CGO_ENABLED=0): the image is
# FROM scratch. -buildvcs=true: --version names the commit even where
# GOFLAGS turns the stamp off
build:
	CGO_ENABLED=0 $(GO) build -buildvcs=true -o . ./cmd/tcptrace ./cmd/tcptrace-agent

# The agent's OCI image, FROM scratch with the two static binaries, built
# with podman (no Docker daemon, no registry), tagged as
# deploy/daemonset.yaml names it. deploy/containers.conf is for hosts such
# as CI's (hybrid cgroups, systemd not PID 1).
IMAGE ?= ghcr.io/tcptrace/tcptrace:latest
image: build
	CONTAINERS_CONF=$(CURDIR)/deploy/containers.conf podman build -f deploy/Dockerfile -t $(IMAGE) .

# Kernel tests need root; they skip without BPF unless TCPTRACE_REQUIRE_BPF=1.
# One package at a time: the churn test takes both cores and must not share
# them with the compilation of other packages.
test:
	$(GO) test -count=1 -p 1 ./...

# The kernel tests on Debian's 5.10, 6.1, 6.12 and 6.18 kernels, each
# booted under qemu (software emulation): vm/test-kernels fetches the
# kernel packages (apt-get download, into /var/tmp/tcptrace-vm) and prints
# a table of the results. Needs root, qemu-system-x86 and busybox-static;
# about 20 minutes. KERNELS="6.1 6.12" picks some.
test-kernels:
	vm/test-kernels $(KERNELS)

# The BPF cost per transition on the same kernels (make bench's
# -cost-only, three 10 s runs each; emulated times, to compare kernels
# with each other). About 3 minutes a kernel.
bench-kernels:
	vm/bench-kernels $(KERNELS)

# Regenerates vmlinux.h from this machine's kernel, then the BPF objects.
generate: vmlinux bpf

# The exact command that produced the committed vmlinux.h (Linux 6.18).
vmlinux:
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > vmlinux.h

# Compiles bpf/tcptrace.c into loader/tcptrace_bpfel.{o,go}.
bpf:
	cd loader && $(GO) generate ./...

# The overhead benchmark: the blocking and the event-loop churn, untraced,
# with tcptrace --json and with text output, alternated; then BPF cost per
# event, a 1 s burst and the TIME_WAIT expiry storm. Needs root; about 15
# minutes (BENCH_FLAGS=-pairs=0: the storm alone). README "Overhead" has a
# real run.
bench: build
	$(GO) build -o bin/churn ./bench/churn
	$(GO) build -o bin/bench ./bench/run
	./bin/bench -tcptrace ./tcptrace -churn ./bin/churn $(BENCH_FLAGS)

# What each piece of the program's work costs in the hook: builds
# bench/floor/floor.c once per piece with $(BPF_CLANG), measures it against
# an empty program under pinned churn. Needs root and clang; about 1 minute.
floor:
	$(GO) build -o bin/churn ./bench/churn
	$(GO) build -o bin/floor ./bench/floor
	taskset -c 1 ./bin/floor -clang $(BPF_CLANG) -churn ./bin/churn
