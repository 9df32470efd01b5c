package loader

// The committed outputs (tcptrace_bpfel.go, tcptrace_bpfel.o) mean building
// needs no clang; `make generate` reruns this with the pinned flags.
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags ${BPF_CFLAGS} -target bpfel -type event -type holder tcptrace ../bpf/tcptrace.c -- -I../bpf/include -I../bpf -I..
