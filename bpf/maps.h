/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Configuration, maps and counters: what every part of the program shares.
 * Included once, by tcptrace.c. */
#ifndef __TCPTRACE_MAPS_H
#define __TCPTRACE_MAPS_H

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_MPTCP 262

#define EPIPE 32
#define ECONNABORTED 103
#define ECONNRESET 104
#define ETIMEDOUT 110
#define ECONNREFUSED 111

/* bits of sk->__sk_common.skc_flags (enum sock_flags) */
#define SOCK_DEAD 0
#define SOCK_DONE 1

#define MAX_FILTER 64
#define MAX_OLD_LISTENERS 4096
#define MAX_EARLY_CHILDREN 65536

#define READ_ONCE(x) (*(volatile typeof(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile typeof(x) *)&(x) = (v))
#ifndef barrier
#define barrier() asm volatile("" ::: "memory")
#endif



/* configuration, set by the loader before load. The kernel filters only
 * on what is the same for every transition of a socket (family, namespace,
 * ports), so a socket is either all in or all out, and user space, which
 * follows each socket's owner and time in state (package sockets), never
 * misses a transition of one it shows. States, processes and command
 * names are filtered in user space. */
const volatile __u8 filter_family = 0; /* 0: any, else AF_INET or AF_INET6 */
const volatile __u32 filter_netns = 0;
const volatile bool filter_lport = false;
const volatile bool filter_rport = false;
/* wake user space only once this much is pending */
const volatile __u64 wakeup_bytes = 256 * 1024;

/* A listener's owner: the kernel copies it to each child it clones. In
 * a child, holder is the last process noted sending on it (note_holder),
 * 0 until one does. listener is 0 in a child whose listener's owner is not
 * known (storage made for the child alone, see child_early()). */
struct owner {
	__u64 cgroup;
	__u64 listener; /* the listener's cookie */
	__u32 pid;
	__u32 holder;
	char comm[TASK_COMM_LEN];
	/* in a child: when its LISTEN -> SYN_RECV was put off because the
	 * kernel reported it before the child had its own identity
	 * (child_early()); 0 once it is recorded */
	__u64 born;
};

/* the record type, named here so bpf2go emits it for the decoder's tests */
const struct event *event_type __attribute__((unused));
const struct holder *holder_type __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20); /* resized by the loader */
} events SEC(".maps");

/* Socket storage for listeners only. BPF_F_CLONE: the kernel copies a
 * listener's entry to each child it clones from it, before the child's
 * LISTEN -> SYN_RECV. That is how a server's child learns its listener's
 * owner, exactly (SO_REUSEPORT listeners share a port, so a table keyed by
 * port could not tell them apart), at no cost to this program. Everything
 * else a socket carries from one transition to the next (its owner, the
 * time it entered its state) user space keeps: making storage for every
 * client socket cost this program about 1.1 us per socket. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, struct owner);
} listeners SEC(".maps");

/* Listeners from before the tracer that a holders dump found, by socket
 * address, with their first holder: name_sockets moves each into the
 * listener's storage. LRU: what a dump leaves behind (a listener gone
 * meanwhile) is pushed out by the next. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_OLD_LISTENERS);
	__type(key, __u64);
	__type(value, struct owner);
} old_listeners SEC(".maps");

/* Without socket storage (legacy, see compat.h): the children put off
 * (put_off_child() in tcptrace.c), by socket address, with the time they
 * were reported. A child is in it for the few microseconds between its
 * LISTEN -> SYN_RECV and its next transition, which every child makes (to
 * ESTABLISHED, or to CLOSE if the kernel gives it up). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_EARLY_CHILDREN);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, __u64);
} early_born SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Per CPU: records made but not yet in the ring. Writing a record to the
 * ring costs about 110 ns under churn on both CPUs (the ring's lock and
 * positions, fresh cache lines, two helper calls, each return through the
 * SRSO thunk); filling a slot here costs a few, and the ring takes BATCH
 * records at once. Records wait here until the batch is full or user space
 * runs flush_staging on the CPU (about every 50 ms), so they reach the
 * ring out of time order across CPUs. Each carries its CPU (src), and
 * each CPU's staged records reach the ring in time order: user space puts
 * them back in order by the latest time each CPU has reached (package
 * order). */
struct staging {
	__u32 n;       /* records in ev */
	__u32 busy;    /* a program is filling ev or writing it out */
	__u64 unwoken; /* bytes this CPU wrote since it last woke the reader */
	/* the network namespace this CPU saw last, see netns_of() */
	__u64 net_cookie;
	__u32 net_inum;
	__u32 src;     /* this CPU + 1, set by flush_staging */
	struct event ev[BATCH + 1]; /* + 1: flush_staging's mark */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct staging);
} staging SEC(".maps");

/* per CPU: the socket a RST was just sent from. A keepalive, orphan or
 * FIN_WAIT2 timer sends its RST and closes the socket at once, in the same
 * softirq, so the note is read by the very next transition on this CPU,
 * which clears it. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} reset_sent SEC(".maps");

/* per CPU and per stack (task, interrupt): the call of the tracepoint
 * handle_set_state last ran for, see rescue_set_state */
struct ran {
	__u64 ctx;
	__u64 sk;
	__u32 states;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct ran);
} ran SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_FILTER);
	__type(key, __u16);
	__type(value, __u8);
} lport_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_FILTER);
	__type(key, __u16);
	__type(value, __u8);
} rport_filter SEC(".maps");

static __always_inline void count(__u32 idx, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &idx);

	if (c)
		*c += n;
}
#endif /* __TCPTRACE_MAPS_H */
