//go:build ignore
// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* tcptrace: every TCP state transition, attributed to the owning process.
 *
 * Attached as tp_btf to sock:inet_sock_set_state (no tracefs needed, and the
 * tracepoint's own field assignment never runs), plus tcp:tcp_send_reset to
 * tell why a connection closed. See
 * ../shared/KERNEL.md for what the kernel reports, measured. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "tcptrace.h"

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

#define READ_ONCE(x) (*(volatile typeof(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile typeof(x) *)&(x) = (v))
#ifndef barrier
#define barrier() asm volatile("" ::: "memory")
#endif

char LICENSE[] SEC("license") = "Dual BSD/GPL";

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
 * 0 until one does. */
struct owner {
	__u64 cgroup;
	__u64 listener; /* the listener's cookie */
	__u32 pid;
	__u32 holder;
	char comm[TASK_COMM_LEN];
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

/* Bytes this CPU wrote since it last woke the reader decide the wakeup:
 * asking the ring instead reads the consumer position, a cache line the
 * reader writes after every batch. */
static __always_inline __u64 wakeup(struct staging *st, __u64 bytes)
{
	if ((st->unwoken += bytes) < wakeup_bytes)
		return BPF_RB_NO_WAKEUP;
	st->unwoken = 0;
	return BPF_RB_FORCE_WAKEUP;
}

/* The staging's busy flag, held while a program fills the staging or
 * writes it out. A call that finds it held interrupted the holder on this
 * CPU, and must not touch the staging. */
static __always_inline void hold(struct staging *st)
{
	WRITE_ONCE(st->busy, 1);
	barrier();
}

static __always_inline void let_go(struct staging *st)
{
	barrier();
	WRITE_ONCE(st->busy, 0);
}

/* st->ev[0..n) to the ring, in one record, of which records are
 * transitions (the rest a mark); st->busy is held */
static __always_inline void write_out(struct staging *st, __u32 n, __u32 records)
{
	__u64 size = (__u64)n * sizeof(struct event);

	if (n == 0 || n > BATCH + 1)
		return;
	if (bpf_ringbuf_output(&events, st->ev, size, wakeup(st, size)) < 0)
		count(COUNTER_LOST, records);
}

/* the staging's next free slot; st->busy is held */
static __always_inline struct event *next_slot(struct staging *st)
{
	__u32 n = st->n;

	if (n >= BATCH) /* never: for the verifier */
		n = 0;
	return &st->ev[n];
}

/* the slot next_slot gave is filled: the batch goes to the ring once it
 * is full; st->busy is held */
static __always_inline void slot_filled(struct staging *st)
{
	__u32 n = st->n + 1;

	if (n >= BATCH) {
		write_out(st, BATCH, BATCH);
		n = 0;
	}
	st->n = n;
}

/* the owner is the task: the process's id, cgroup and name, not the
 * thread's (prctl(PR_SET_NAME) renames a thread): what ps and ss -p show */
static __always_inline void set_owner(struct event *e, struct task_struct *task)
{
	e->cgroup = task->cgroups->dfl_cgrp->kn->id;
	e->pid = task->tgid;
	__builtin_memcpy(e->comm, task->group_leader->comm, TASK_COMM_LEN);
}

/* what user space needs to follow connections through their timewait
 * mini-sockets (package timewait), even where the port filters drop it:
 * where one starts, a close that tells a local peer's parked FIN_WAIT2 got
 * the peer's FIN, and a handshake that may take over a followed tuple */
static __always_inline bool for_follower(int old, int new, __u8 kind, __u8 cause)
{
	return kind == KIND_PARKED || new == STATE_TIME_WAIT ||
	       (old == TCP_LAST_ACK && cause == CAUSE_CLOSED) ||
	       old == TCP_SYN_SENT || old == TCP_SYN_RECV;
}

/* the port filters. A child's ports are not set at LISTEN -> SYN_RECV, nor
 * a client's local port at CLOSE -> SYN_SENT: those pass, and user space,
 * which applies every filter again, decides once it knows them. */
static __always_inline bool ports_wanted(__u16 sport, __u16 dport, bool child)
{
	if (child)
		return true;
	if (filter_lport && sport && !bpf_map_lookup_elem(&lport_filter, &sport))
		return false;
	if (filter_rport && !bpf_map_lookup_elem(&rport_filter, &dport))
		return false;
	return true;
}

static __always_inline bool v4mapped(const __u8 *a)
{
	for (int i = 0; i < 10; i++)
		if (a[i])
			return false;
	return a[10] == 0xff && a[11] == 0xff;
}

static __always_inline __u8 close_cause(struct sock *sk, int old, bool rst_sent)
{
	int err = sk->sk_err;

	if (old == TCP_LISTEN)
		return CAUSE_CLOSED;
	if (err == ECONNREFUSED)
		return CAUSE_REFUSED;
	/* tcp_reset() sets these before the socket goes to CLOSE */
	if (err == ECONNRESET || err == EPIPE)
		return CAUSE_RESET_RECEIVED;
	/* a keepalive or orphan timeout sends its RST before the transition */
	if (rst_sent)
		return CAUSE_RESET_SENT;
	if (err == ETIMEDOUT)
		return CAUSE_TIMEOUT;
	if (err == ECONNABORTED) /* tcp_abort(), e.g. ss -K */
		return CAUSE_RESET_SENT;
	if (err)
		return CAUSE_UNREACHABLE;
	switch (old) {
	case TCP_ESTABLISHED:
	case TCP_CLOSE_WAIT:
	case TCP_FIN_WAIT1:
	case TCP_FIN_WAIT2:
	case TCP_SYN_RECV:
		/* no orderly path leads from these straight to CLOSE: it is an
		 * abort (SO_LINGER 0, unread data, disconnect), whose RST the
		 * kernel sends just after this transition */
		return CAUSE_RESET_SENT;
	}
	return CAUSE_CLOSED;
}

/* transitions that only a system call on the socket makes, so the current
 * task owns the socket; all others may run in softirq, in any task */
static __always_inline bool by_owner(int old, int new)
{
	return new == TCP_SYN_SENT || new == TCP_LISTEN ||
	       (old == TCP_ESTABLISHED && new == TCP_FIN_WAIT1) ||
	       (old == TCP_SYN_RECV && new == TCP_FIN_WAIT1) ||
	       (old == TCP_CLOSE_WAIT && new == TCP_LAST_ACK) ||
	       (old == TCP_LISTEN && new == TCP_CLOSE);
}

/* a BTF cast that costs nothing (Linux 6.2); older kernels read through
 * helpers instead */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;
#ifndef bpf_ksym_exists
#define bpf_ksym_exists(sym) (!!(sym))
#endif

/* TCP reads the clock itself when it begins to process an arriving segment
 * (tcp_mstamp_refresh() keeps the time in tp->tcp_clock_cache), and these
 * transitions are made only there, by that segment: reading TCP's time
 * saves a clock read (about 42 ns). The time is when processing of the
 * segment began, a microsecond or so before the transition itself. Every
 * transition that a system call or an error can also make reads the clock. */
static __always_inline bool segment_made(int old, int new, __u8 cause, __u64 skflags)
{
	return (old == TCP_SYN_SENT && new == TCP_ESTABLISHED) ||
	       (old == TCP_SYN_RECV && new == TCP_ESTABLISHED) ||
	       (old == TCP_ESTABLISHED && new == TCP_CLOSE_WAIT) ||
	       (old == TCP_FIN_WAIT1 && (new == TCP_FIN_WAIT2 || new == TCP_CLOSING)) ||
	       new == STATE_TIME_WAIT ||
	       /* the ACK of our FIN, after close(): an abort in close()
	        * comes before the socket is orphaned (SOCK_DEAD) */
	       (old == TCP_LAST_ACK && new == TCP_CLOSE && cause == CAUSE_CLOSED &&
		(skflags & (1 << SOCK_DEAD)));
}

static __always_inline __u64 clock_for(struct sock *sk, int old, int new, __u8 cause, __u64 skflags)
{
	struct tcp_sock *tp;

	if (bpf_ksym_exists(bpf_rdonly_cast) && segment_made(old, new, cause, skflags)) {
		tp = bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct tcp_sock));
		return tp->tcp_clock_cache;
	}
	return bpf_ktime_get_ns();
}

/* the local port at CLOSE, where skc_num is already zeroed: inet_sport
 * keeps it */
static __always_inline __u16 closed_port(struct sock *sk)
{
	struct inet_sock *inet;

	if (bpf_ksym_exists(bpf_rdonly_cast)) {
		inet = bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct inet_sock));
		return bpf_ntohs(inet->inet_sport);
	}
	return bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
}

/* The namespace's inode number shares a cache line with its reference
 * count, which every socket's creation and end write, on every CPU: under
 * churn, reading it was a quarter of this program's time. Its cookie (set
 * once, never reused) lies far from it, so each CPU keeps the inode number
 * of the namespace it saw last, by cookie. Only a call that holds the
 * staging (not one that interrupted the holder) touches that cache. */
static __always_inline __u32 netns_of(struct sock *sk, struct staging *st, bool cached)
{
	struct net *net = sk->__sk_common.skc_net.net;
	__u64 cookie;

	if (!cached)
		return net->ns.inum;
	cookie = net->net_cookie;
	if (cookie != st->net_cookie || !cookie) {
		st->net_inum = net->ns.inum;
		st->net_cookie = cookie;
	}
	return st->net_inum;
}

/* what fill() needs besides the socket: worked out by record() */
struct transition {
	__u64 now;
	__u64 skflags;
	__u16 family;
	__u16 sport;
	__u16 dport;
	__u8 oldstate;
	__u8 newstate;
	__u8 cause;
	__u8 kind;
	__u32 netns;
	bool child;
	bool rst_sent;
};

/* One record. It carries the owner and its cgroup only where the kernel
 * knows the owner: the current task in a system call, or a child's
 * listener's. User space carries them to the socket's other transitions
 * and works out the time in each state (package sockets). */
static __always_inline void fill(struct event *e, struct sock *sk, struct transition *t,
				 struct task_struct *task, __u32 src)
{
	__u64 cookie;
	struct owner *o;

	e->ts_ns = t->now;
	/* the cookie is made by the first call of the helper and then kept
	 * in the socket: read it in place after that */
	cookie = sk->__sk_common.skc_cookie.counter;
	e->cookie = cookie ? cookie : bpf_get_socket_cookie(sk);
	e->ref = 0;
	e->netns = t->netns;
	e->sport = t->sport;
	e->dport = t->dport;
	e->oldstate = t->oldstate;
	e->newstate = t->newstate;
	e->cause = t->cause;
	e->kind = t->kind;
	e->flags = 0;
	e->retrans = 0;
	e->src = src;
	e->bytes_received = 0;
	if (t->family == AF_INET) {
		e->family = AF_INET;
		__builtin_memset(e->saddr, 0, sizeof(e->saddr));
		__builtin_memset(e->daddr, 0, sizeof(e->daddr));
		__builtin_memcpy(e->saddr, &sk->__sk_common.skc_rcv_saddr, 4);
		__builtin_memcpy(e->daddr, &sk->__sk_common.skc_daddr, 4);
	} else {
		e->family = AF_INET6;
		__builtin_memcpy(e->saddr, &sk->__sk_common.skc_v6_rcv_saddr, 16);
		__builtin_memcpy(e->daddr, &sk->__sk_common.skc_v6_daddr, 16);
		/* a dual-stack socket talking IPv4 is shown as IPv4 */
		if (v4mapped(e->daddr) || v4mapped(e->saddr)) {
			e->family = AF_INET;
			e->flags = FLAG_V4MAPPED;
			__builtin_memcpy(e->saddr, &e->saddr[12], 4);
			__builtin_memcpy(e->daddr, &e->daddr[12], 4);
			__builtin_memset(&e->saddr[4], 0, 12);
			__builtin_memset(&e->daddr[4], 0, 12);
		}
	}

	/* who owns the socket: a close that aborts a live (not orphaned)
	 * socket, or one that never connected, is a system call too. The
	 * task's fields are read in place: bpf_get_current_comm() costs
	 * about 60 ns here, two loads about 15. The cgroup is the owner's,
	 * read from the task like its comm: the socket's own cgroup pointer
	 * (the same, unless the socket was handed to a process in another
	 * cgroup) lies on a line of the socket that nothing else here reads,
	 * and loading it was a sixth of this program's time under churn. */
	if (t->child) {
		o = bpf_sk_storage_get(&listeners, sk, 0, 0);
		if (o) {
			e->cgroup = o->cgroup;
			e->pid = o->pid;
			e->ref = o->listener;
			__builtin_memcpy(e->comm, o->comm, TASK_COMM_LEN);
		} else {
			/* a listener from before the tracer: the child,
			 * just copied from it, has its cgroup */
			e->cgroup = sk->sk_cgrp_data.cgroup->kn->id;
			e->pid = 0;
			__builtin_memset(e->comm, 0, TASK_COMM_LEN);
		}
	} else if (by_owner(t->oldstate, t->newstate) ||
		   (t->newstate == TCP_CLOSE && !t->rst_sent && !(t->skflags & (1 << SOCK_DEAD)) &&
		    (t->cause == CAUSE_RESET_SENT ||
		     (t->oldstate == TCP_SYN_SENT &&
		      (t->cause == CAUSE_CLOSED || t->cause == CAUSE_NO_PORT))))) {
		if (!task)
			task = bpf_get_current_task_btf();
		set_owner(e, task);
		if (t->newstate == TCP_LISTEN) {
			o = bpf_sk_storage_get(&listeners, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
			if (o) {
				o->cgroup = e->cgroup;
				o->listener = e->cookie;
				o->pid = e->pid;
				o->holder = 0;
				__builtin_memcpy(o->comm, e->comm, TASK_COMM_LEN);
			}
		}
	} else {
		e->cgroup = 0;
		e->pid = 0;
		__builtin_memset(e->comm, 0, TASK_COMM_LEN);
	}

	/* a connection's end, or its hand-off to a timewait mini-socket:
	 * what it carried, for tcptrace life, read while the full socket is
	 * still there; two transitions in eleven come here */
	if (t->newstate == TCP_CLOSE || t->newstate == STATE_TIME_WAIT) {
		struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);

		if (tp) {
			e->ref = tp->bytes_acked;
			e->bytes_received = tp->bytes_received;
			__u32 retrans = tp->total_retrans;

			e->retrans = retrans > 0xffff ? 0xffff : retrans;
		}
	}
}

/* One transition, filtered, then staged, or if direct (this call
 * interrupted one that holds the staging) written straight to the ring. */
static __always_inline void record(struct sock *sk, int oldstate, int newstate,
				   struct task_struct *task, struct staging *st, bool direct)
{
	struct transition t = {};
	struct event *e;
	__u64 *rst;
	bool handoff;
	__u32 zero = 0;

	rst = bpf_map_lookup_elem(&reset_sent, &zero);
	if (rst && *rst) {
		t.rst_sent = newstate == TCP_CLOSE && *rst == (__u64)sk;
		*rst = 0;
	}

	/* an AF_INET6 socket may talk IPv4 (v4-mapped), which is shown as
	 * IPv4: only user space can drop that one */
	t.family = sk->__sk_common.skc_family;
	if (filter_family == AF_INET6 && t.family == AF_INET)
		return;
	t.netns = netns_of(sk, st, !direct);
	if (filter_netns && t.netns != filter_netns)
		return;

	t.sport = sk->__sk_common.skc_num;
	if (!t.sport && newstate == TCP_CLOSE)
		t.sport = closed_port(sk);
	t.dport = bpf_ntohs(sk->__sk_common.skc_dport);
	t.child = oldstate == TCP_LISTEN && newstate == TCP_SYN_RECV;

	t.skflags = sk->__sk_common.skc_flags;
	t.kind = KIND_STATE;
	t.cause = CAUSE_NONE;
	/* the kernel says FIN_WAIT2/CLOSING -> CLOSE when it hands the
	 * connection to a timewait mini-socket: after the peer's FIN
	 * (SOCK_DONE), or for an orphan whose FIN was acked (SOCK_DEAD) */
	handoff = newstate == TCP_CLOSE && !t.rst_sent && !sk->sk_err &&
		  ((oldstate == TCP_CLOSING && (t.skflags & (1 << SOCK_DONE))) ||
		   (oldstate == TCP_FIN_WAIT2 &&
		    (t.skflags & ((1 << SOCK_DONE) | (1 << SOCK_DEAD)))));
	if (newstate == TCP_CLOSE && !handoff)
		t.cause = close_cause(sk, oldstate, t.rst_sent);
	/* connect() sets SYN_SENT before it looks for a local port, and
	 * CLOSE, with the port still 0, when it finds none */
	if (t.cause == CAUSE_CLOSED && oldstate == TCP_SYN_SENT && !t.sport)
		t.cause = CAUSE_NO_PORT;
	if (handoff && (t.skflags & (1 << SOCK_DONE))) {
		/* the peer's FIN is in: TIME_WAIT starts now */
		newstate = STATE_TIME_WAIT;
	} else if (handoff) {
		/* orphan, our FIN acked, no FIN from the peer yet: the
		 * mini-socket waits in FIN_WAIT2, where no tracepoint fires.
		 * User space follows it and reports how it ends. */
		t.kind = KIND_PARKED;
	}
	t.oldstate = oldstate;
	t.newstate = newstate;

	if (t.kind == KIND_PARKED || !ports_wanted(t.sport, t.dport, t.child)) {
		if (!for_follower(oldstate, newstate, t.kind, t.cause))
			return;
		if (t.kind == KIND_STATE)
			t.kind = KIND_HINT;
	}

	t.now = clock_for(sk, oldstate, newstate, t.cause, t.skflags);
	if (direct) {
		e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
		if (!e) {
			count(COUNTER_LOST, 1);
			return;
		}
		fill(e, sk, &t, task, 0);
		bpf_ringbuf_submit(e, wakeup(st, sizeof(*e)));
		return;
	}
	fill(next_slot(st), sk, &t, task, st->src);
	slot_filled(st);
}

static __always_inline int on_state(struct sock *sk, int oldstate, int newstate,
				    struct task_struct *task)
{
	struct staging *st;
	__u32 zero = 0;

	if (sk->sk_protocol != IPPROTO_TCP || oldstate == newstate)
		return 0;
	st = bpf_map_lookup_elem(&staging, &zero);
	if (!st)
		return 0;
	if (READ_ONCE(st->busy)) {
		/* this call interrupted one that holds the staging (a softirq
		 * in a system call's transition, see rescue_set_state) */
		record(sk, oldstate, newstate, task, st, true);
		return 0;
	}
	/* held before the clock is read: user space takes a staging found
	 * not held as holding every record timed before flush_staging ran */
	hold(st);
	record(sk, oldstate, newstate, task, st, false);
	let_go(st);
	return 0;
}

/* The kernel does not run a program that is already running on the same
 * CPU. A transition in a softirq that interrupts handle_set_state (running
 * in a task, with bottom halves enabled) would be skipped, and lost. So a
 * second copy of the program, rescue_set_state, is attached after it and
 * handles the transition only if handle_set_state did not run for it.
 *
 * To know that without a third program, handle_set_state leaves a note of
 * the call it ran for: the ctx pointer, which is the same for both programs
 * within one call of the tracepoint (the kernel builds the argument array
 * on the stack of the same function, called twice from the same frame), the
 * socket and the states. rescue_set_state takes its note back if it is
 * there, and otherwise handles the transition. The note goes to a slot per
 * stack: calls on the task's stack never nest within each other, nor do
 * softirqs, which run on the interrupt stack; so a nested call never
 * overwrites a note that the call it interrupted has still to take. (Where
 * a softirq runs on the task's own stack, in ksoftirqd, it cannot be
 * interrupted by another.) Whatever is still missed is counted: recursion
 * misses minus rescues. */
static __always_inline struct ran *note_slot(void *ctx, struct task_struct *task)
{
	/* the task's stack is THREAD_SIZE long; x86's irq_stack is as long */
	__u64 size = bpf_core_type_exists(struct irq_stack) ?
		     bpf_core_type_size(struct irq_stack) : 16384;
	__u32 slot = (__u64)ctx - (__u64)task->stack < size ? 0 : 1;

	return bpf_map_lookup_elem(&ran, &slot);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(handle_set_state, struct sock *sk, int oldstate, int newstate)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct ran *r = note_slot(ctx, task);

	if (r) {
		r->ctx = (__u64)ctx;
		r->sk = (__u64)sk;
		r->states = oldstate << 8 | newstate;
	}
	return on_state(sk, oldstate, newstate, task);
}

/* is r the note of this call? */
static __always_inline bool noted(struct ran *r, void *ctx, struct sock *sk, __u32 states)
{
	return r && r->ctx == (__u64)ctx && r->sk == (__u64)sk && r->states == states;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(rescue_set_state, struct sock *sk, int oldstate, int newstate)
{
	__u32 states = oldstate << 8 | newstate;
	__u32 task_slot = 0, irq_slot = 1;
	struct ran *r;

	/* Both slots are looked at rather than working out which stack this
	 * is, which takes a helper call: a note on the other stack never
	 * matches, its ctx lies on that stack. */
	r = bpf_map_lookup_elem(&ran, &task_slot);
	if (!noted(r, ctx, sk, states))
		r = bpf_map_lookup_elem(&ran, &irq_slot);
	if (noted(r, ctx, sk, states)) {
		r->ctx = 0;
		return 0;
	}
	count(COUNTER_RESCUED, 1);
	return on_state(sk, oldstate, newstate, NULL);
}

/* a KIND_HOLDER record: task's process holds sk now */
static __always_inline void fill_holder(struct event *e, struct sock *sk, struct task_struct *task,
					__u32 src)
{
	__builtin_memset(e, 0, sizeof(*e));
	e->kind = KIND_HOLDER;
	e->ts_ns = bpf_ktime_get_ns();
	e->cookie = sk->__sk_common.skc_cookie.counter;
	e->src = src;
	set_owner(e, task);
}

/* A server's connection is owned by whoever accepted it, or was handed
 * it (fork, SCM_RIGHTS), which no state transition shows: the process
 * that answers on it does. Sends only, not receives: a receive comes
 * after a segment from the peer, processed on whichever CPU took it,
 * and reading the child's storage there cost 500 ns a call under churn
 * (make bench), against about 100 for a send; a server that never
 * answers is found by the holders dump instead. Only a server's children carry the
 * listeners storage (cloned from their listener), so for every other
 * socket this costs a protocol check and one pointer load; for a child,
 * a compare, and a record only when the holder is another process than
 * the last one noted, or than the listener's maker at first: once per
 * connection for a prefork worker or a daemon's, never for a server that
 * accepts what it listens on. */
static __always_inline void note_holder(struct sock *sk)
{
	struct task_struct *task;
	struct staging *st;
	struct owner *o;
	struct event *e;
	__u32 zero = 0, tgid;

	if (!sk || sk->sk_protocol != IPPROTO_TCP)
		return;
	o = bpf_sk_storage_get(&listeners, sk, 0, 0);
	/* no cookie: no transition of it was recorded (the filters) */
	if (!o || !sk->__sk_common.skc_cookie.counter)
		return;
	task = bpf_get_current_task_btf();
	tgid = task->tgid;
	/* the listener's own storage has listener == its cookie; a child's
	 * has its listener's. The process that made the listener taking its
	 * connection is the common case (a single-process server): user
	 * space learns it once per listener, and no record is written. */
	if (o->holder == tgid || (!o->holder && o->pid == tgid) ||
	    o->listener == sk->__sk_common.skc_cookie.counter)
		return;
	o->holder = tgid;
	st = bpf_map_lookup_elem(&staging, &zero);
	if (!st)
		return;
	if (READ_ONCE(st->busy)) {
		e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
		if (!e) {
			count(COUNTER_LOST, 1);
			return;
		}
		fill_holder(e, sk, task, 0);
		bpf_ringbuf_submit(e, wakeup(st, sizeof(*e)));
		return;
	}
	hold(st);
	fill_holder(next_slot(st), sk, task, st->src);
	slot_filled(st);
	let_go(st);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(note_send, struct sock *sk, int ret, int flags)
{
	note_holder(sk);
	return 0;
}

#define S_IFMT 00170000
#define S_IFSOCK 0140000

/* Every open file of a TCP socket, with the process that holds it: run by
 * user space when tracing starts (sockets older than the tracer) and when
 * it must find who holds a socket no transition named. A listener from
 * before the tracer gets the listeners storage here, so that its children
 * name it. */
SEC("iter/task_file")
int dump_holders(struct bpf_iter__task_file *ctx)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct task_struct *leader;
	struct holder h = {};
	struct socket *sock;
	struct sock *sk, *sub;
	struct owner *o;

	if (!task || !file)
		return 0;
	if ((file->f_inode->i_mode & S_IFMT) != S_IFSOCK)
		return 0;
	sock = bpf_sock_from_file(file);
	if (!sock)
		return 0;
	sk = sock->sk;
	if (!sk || sk->sk_type != 1 /* SOCK_STREAM */)
		return 0;
	if (sk->sk_protocol == IPPROTO_MPTCP) {
		/* an MPTCP socket (Go listens with MPTCP by default) holds a
		 * plain TCP socket, its first subflow: that is the one the
		 * tracepoint reports. Read through helpers: the verifier
		 * does not follow that pointer. */
		sub = BPF_CORE_READ((struct mptcp_sock *)sk, first);
		if (!sub || BPF_CORE_READ(sub, sk_protocol) != IPPROTO_TCP)
			return 0;
		h.cookie = BPF_CORE_READ(sub, __sk_common.skc_cookie.counter);
		h.netns = BPF_CORE_READ(sub, __sk_common.skc_net.net, ns.inum);
		h.lport = BPF_CORE_READ(sub, __sk_common.skc_num);
		h.state = BPF_CORE_READ(sub, __sk_common.skc_state);
		h.family = BPF_CORE_READ(sub, __sk_common.skc_family);
		h.dport = bpf_ntohs(BPF_CORE_READ(sub, __sk_common.skc_dport));
		if (h.family == AF_INET) {
			bpf_core_read(h.saddr, 4, &sub->__sk_common.skc_rcv_saddr);
			bpf_core_read(h.daddr, 4, &sub->__sk_common.skc_daddr);
		} else {
			bpf_core_read(h.saddr, 16, &sub->__sk_common.skc_v6_rcv_saddr);
			bpf_core_read(h.daddr, 16, &sub->__sk_common.skc_v6_daddr);
		}
	} else if (sk->sk_protocol == IPPROTO_TCP) {
		h.cookie = bpf_get_socket_cookie(sk);
		h.netns = sk->__sk_common.skc_net.net->ns.inum;
		h.lport = sk->__sk_common.skc_num;
		h.state = sk->__sk_common.skc_state;
		h.family = sk->__sk_common.skc_family;
	} else {
		return 0;
	}
	leader = task->group_leader;
	h.start_ns = leader->start_time;
	h.cgroup = task->cgroups->dfl_cgrp->kn->id;
	h.pid = task->tgid;
	h.fd = ctx->fd;
	__builtin_memcpy(h.comm, leader->comm, TASK_COMM_LEN);
	if (h.state == TCP_LISTEN && sk->sk_protocol == IPPROTO_TCP) {
		o = bpf_sk_storage_get(&listeners, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (o && !o->listener) {
			o->cgroup = h.cgroup;
			o->listener = h.cookie;
			o->pid = h.pid;
			__builtin_memcpy(o->comm, h.comm, TASK_COMM_LEN);
		}
	}
	bpf_seq_write(ctx->meta->seq, &h, sizeof(h));
	return 0;
}

/* Run by user space on each CPU (BPF_PROG_TEST_RUN with
 * BPF_F_TEST_RUN_ON_CPU, from an IPI or with preemption off): writes out
 * what the CPU has staged, followed by a mark with the time. Every record
 * of this CPU timed before the mark is then in the ring before it: those
 * staged are in this write or earlier ones; a call that interrupted a
 * holder wrote its record at once; and a holder that has read the clock
 * but not staged its record yet holds the staging, when this returns 1
 * and user space tries again later. */
SEC("raw_tp")
int flush_staging(void *ctx)
{
	struct staging *st;
	struct event *m;
	__u32 zero = 0, n;

	st = bpf_map_lookup_elem(&staging, &zero);
	if (!st)
		return 0;
	st->src = bpf_get_smp_processor_id() + 1;
	if (READ_ONCE(st->busy))
		return 1;
	hold(st);
	n = st->n;
	if (n > BATCH) /* never: for the verifier */
		n = 0;
	m = &st->ev[n];
	__builtin_memset(m, 0, sizeof(*m));
	m->kind = KIND_MARK;
	m->src = st->src;
	m->ts_ns = bpf_ktime_get_ns();
	/* the kernel's tick count with it: user space places the timer
	 * wheel's buckets in time from it, to check timewait mini-sockets
	 * just after the wheel expires them */
	m->cookie = bpf_jiffies64();
	write_out(st, n + 1, n);
	st->n = 0;
	let_go(st);
	return 0;
}

/* an active reset from a full socket; when it comes before the socket
 * goes to CLOSE (keepalive, orphan and FIN_WAIT2 timers, memory pressure)
 * it explains the close. A reset received needs no program: tcp_reset()
 * sets sk_err before the close. */
SEC("tp_btf/tcp_send_reset")
int BPF_PROG(handle_send_reset, struct sock *sk)
{
	__u32 zero = 0;
	__u64 *rst;

	if (!sk)
		return 0;
	rst = bpf_map_lookup_elem(&reset_sent, &zero);
	if (rst)
		*rst = (__u64)sk;
	return 0;
}
