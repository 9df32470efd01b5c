//go:build ignore
// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* tcptrace: every TCP state transition, attributed to the owning process.
 *
 * Attached as tp_btf to sock:inet_sock_set_state (no tracefs needed, and the
 * tracepoint's own field assignment never runs), plus tcp:tcp_receive_reset
 * and tcp:tcp_send_reset to tell why a connection closed. See
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

#define EPIPE 32
#define ECONNABORTED 103
#define ECONNRESET 104
#define ETIMEDOUT 110
#define ECONNREFUSED 111

/* bits of sk->__sk_common.skc_flags (enum sock_flags) */
#define SOCK_DEAD 0
#define SOCK_DONE 1

#define MAX_FILTER 64

/* rst bits in struct sockinfo */
#define RST_RECEIVED 1
#define RST_SENT 2

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* configuration, set by the loader before load */
const volatile __u8 filter_family = 0; /* 0: any, else AF_INET or AF_INET6 */
const volatile __u32 filter_netns = 0;
const volatile __u32 filter_states = 0; /* bit per state; 0: all */
const volatile bool filter_pid = false;
const volatile bool filter_lport = false;
const volatile bool filter_rport = false;
const volatile bool filter_comm = false;
const volatile char comm_want[TASK_COMM_LEN] = {};
/* wake user space only once this much is pending */
const volatile __u64 wakeup_bytes = 256 * 1024;

/* what is remembered of a socket between its transitions */
struct sockinfo {
	__u64 ts_ns;   /* entry into the current state */
	__u64 cookie;
	__u64 held_ts; /* time of a LISTEN -> SYN_RECV held back */
	__u32 pid;
	__u16 sport; /* local port, which the kernel zeroes at CLOSE */
	__u8 rst;    /* RST_* seen while open */
	__u8 held;   /* a LISTEN -> SYN_RECV waits for the child's addresses */
	char comm[TASK_COMM_LEN];
};

/* a connection's addresses, ports and namespace */
struct tuple {
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 netns;
	__u16 sport;
	__u16 dport;
	__u8 family;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20); /* resized by the loader */
} events SEC(".maps");

/* per-socket state lives in the socket itself: no hashing, no capacity to
 * run out of, and the kernel frees it with the socket, so it is bounded by
 * the sockets that exist. (An LRU hash with a delete at every CLOSE cost
 * about 400 ns more per transition under churn.)
 *
 * BPF_F_CLONE: the kernel copies a listener's entry to each child it
 * clones from it, before the child's LISTEN -> SYN_RECV. That is how a
 * server's child learns its listener's owner, exactly (SO_REUSEPORT
 * listeners share a port, so a table keyed by port could not tell them
 * apart), and the kernel's clone path allocates the child's entry, which
 * costs this program about 1 us per socket when it has to do it itself. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, struct sockinfo);
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* room for the event being built: slot 0 for handle_set_state, 1 for
 * rescue_set_state, which may run while the first is midway */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct event);
} scratch SEC(".maps");

/* per CPU: bytes written since this CPU last woke the reader */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} unwoken SEC(".maps");

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
	__type(key, __u32);
	__type(value, __u8);
} pid_filter SEC(".maps");

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

static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &idx);

	if (c)
		(*c)++;
}

static __always_inline bool wanted(const struct event *e)
{
	if (filter_family && e->family != filter_family)
		return false;
	if (filter_netns && e->netns != filter_netns)
		return false;
	if (filter_states && !((filter_states >> (e->oldstate & 31)) & 1) &&
	    !((filter_states >> (e->newstate & 31)) & 1))
		return false;
	if (filter_pid && !bpf_map_lookup_elem(&pid_filter, &e->pid))
		return false;
	if (filter_lport && !bpf_map_lookup_elem(&lport_filter, &e->sport))
		return false;
	if (filter_rport && !bpf_map_lookup_elem(&rport_filter, &e->dport))
		return false;
	if (filter_comm) {
		for (int i = 0; i < TASK_COMM_LEN; i++) {
			if (e->comm[i] != comm_want[i])
				return false;
			if (!e->comm[i])
				break;
		}
	}
	return true;
}

/* what user space needs to follow connections through their timewait
 * mini-sockets (package timewait), even where the filters drop it: where
 * one starts, a close that tells a local peer's parked FIN_WAIT2 got the
 * peer's FIN, and a handshake that may take over a followed tuple */
static __always_inline bool for_follower(const struct event *e)
{
	return e->kind == KIND_PARKED || e->newstate == STATE_TIME_WAIT ||
	       (e->oldstate == TCP_LAST_ACK && e->cause == CAUSE_CLOSED) ||
	       e->oldstate == TCP_SYN_SENT || e->oldstate == TCP_SYN_RECV;
}

/* filter, then send; wake the reader only when a batch is pending. What
 * the filters drop but the follower needs goes as a KIND_HINT (a followed
 * connection and what resolves it share family and namespace). With no
 * filter set, the verifier removes all of it. */
static __always_inline void emit(struct event *e)
{
	__u64 flags = BPF_RB_NO_WAKEUP;
	__u8 kind = e->kind;
	__u32 zero = 0;
	__u64 *pending;
	struct event *r;

	if (kind == KIND_PARKED || !wanted(e)) {
		if (!for_follower(e) || (filter_family && e->family != filter_family) ||
		    (filter_netns && e->netns != filter_netns))
			return;
		if (kind == KIND_STATE)
			e->kind = KIND_HINT;
	}
	/* bytes this CPU wrote since it last woke the reader: asking the ring
	 * instead reads the consumer position, a cache line the reader
	 * writes after every record */
	pending = bpf_map_lookup_elem(&unwoken, &zero);
	if (pending && (*pending += sizeof(*e)) >= wakeup_bytes) {
		flags = BPF_RB_FORCE_WAKEUP;
		*pending = 0;
	}
	/* reserve and copy here rather than bpf_ringbuf_output(): the
	 * program's own copy is unrolled, the kernel's memcpy() is not, and
	 * the difference is about 10 ns per record (make floor) */
	r = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (r) {
		__builtin_memcpy(r, e, sizeof(*e));
		bpf_ringbuf_submit(r, flags);
	} else {
		count(COUNTER_LOST);
	}
	e->kind = kind;
}

static __always_inline bool v4mapped(const __u8 *a)
{
	for (int i = 0; i < 10; i++)
		if (a[i])
			return false;
	return a[10] == 0xff && a[11] == 0xff;
}

/* addresses, ports and namespace, read straight from the BTF-typed socket
 * (the verifier makes these loads fault-safe; no helper call). The local
 * port is skc_num, which the kernel zeroes on the way to CLOSE: there the
 * caller passes the port it remembered, else inet_sport, which keeps it, is
 * read (a helper call). Anywhere else inet_sport equals skc_num. */
static __always_inline void read_tuple(struct sock *sk, struct tuple *t, bool closing, __u16 known_port)
{
	__u16 family = sk->__sk_common.skc_family;

	t->netns = sk->__sk_common.skc_net.net->ns.inum;
	t->sport = sk->__sk_common.skc_num;
	if (!t->sport && closing) {
		t->sport = known_port;
		if (!t->sport)
			t->sport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	}
	t->dport = bpf_ntohs(sk->__sk_common.skc_dport);
	if (family == AF_INET) {
		t->family = AF_INET;
		__builtin_memcpy(t->saddr, &sk->__sk_common.skc_rcv_saddr, 4);
		__builtin_memcpy(t->daddr, &sk->__sk_common.skc_daddr, 4);
		return;
	}
	t->family = AF_INET6;
	__builtin_memcpy(t->saddr, &sk->__sk_common.skc_v6_rcv_saddr, 16);
	__builtin_memcpy(t->daddr, &sk->__sk_common.skc_v6_daddr, 16);
	/* a dual-stack socket talking IPv4 is shown as IPv4 */
	if (v4mapped(t->daddr) || v4mapped(t->saddr)) {
		t->family = AF_INET;
		__builtin_memcpy(t->saddr, &t->saddr[12], 4);
		__builtin_memcpy(t->daddr, &t->daddr[12], 4);
		__builtin_memset(&t->saddr[4], 0, 12);
		__builtin_memset(&t->daddr[4], 0, 12);
	}
}

static __always_inline void set_tuple(struct event *e, const struct tuple *t)
{
	__builtin_memcpy(e->saddr, t->saddr, 16);
	__builtin_memcpy(e->daddr, t->daddr, 16);
	e->sport = t->sport;
	e->dport = t->dport;
	e->family = t->family;
	e->netns = t->netns;
}

static __always_inline __u8 close_cause(struct sock *sk, int old, __u8 rst)
{
	int err = sk->sk_err;

	if (old == TCP_LISTEN)
		return CAUSE_CLOSED;
	if (err == ECONNREFUSED)
		return CAUSE_REFUSED;
	if ((rst & RST_RECEIVED) || err == ECONNRESET || err == EPIPE)
		return CAUSE_RESET_RECEIVED;
	/* a keepalive or orphan timeout sends its RST before the transition */
	if (rst & RST_SENT)
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

/* one transition; slot is the scratch slot to use */
static __always_inline int on_state(struct sock *sk, int oldstate, int newstate, __u32 slot)
{
	struct sockinfo fresh = {}, *si;
	struct task_struct *task;
	struct tuple t = {};
	__u8 cause;
	__u64 now, skflags;
	struct event *e;
	bool known, child, handoff;
	__u8 rst;

	if (sk->sk_protocol != IPPROTO_TCP || oldstate == newstate)
		return 0;
	e = bpf_map_lookup_elem(&scratch, &slot);
	if (!e)
		return 0;
	now = bpf_ktime_get_ns();

	/* a server's child comes with a copy of its listener's entry (see
	 * socks): only the owner in it is the child's */
	child = oldstate == TCP_LISTEN && newstate == TCP_SYN_RECV;
	si = bpf_sk_storage_get(&socks, sk, 0, 0);
	known = si != NULL && !child;
	if (!si)
		si = &fresh;
	rst = known ? si->rst : 0;

	/* skc_num is zeroed on the way to CLOSE; a reconnecting socket has
	 * no port yet at SYN_SENT */
	read_tuple(sk, &t, newstate == TCP_CLOSE, si->sport);
	__builtin_memset(e, 0, sizeof(*e));
	set_tuple(e, &t);
	e->ts_ns = now;
	e->kind = KIND_STATE;
	e->oldstate = oldstate;
	e->newstate = newstate;
	e->cgroup = sk->sk_cgrp_data.cgroup->kn->id;
	e->cookie = known ? si->cookie : bpf_get_socket_cookie(sk);
	if (known && !si->held) {
		e->dwell_ns = now - si->ts_ns;
		e->flags = FLAG_DWELL;
	}
	skflags = sk->__sk_common.skc_flags;
	/* the kernel says FIN_WAIT2/CLOSING -> CLOSE when it hands the
	 * connection to a timewait mini-socket: after the peer's FIN
	 * (SOCK_DONE), or for an orphan whose FIN was acked (SOCK_DEAD) */
	handoff = newstate == TCP_CLOSE && !rst && !sk->sk_err &&
		  ((oldstate == TCP_CLOSING && (skflags & (1 << SOCK_DONE))) ||
		   (oldstate == TCP_FIN_WAIT2 &&
		    (skflags & ((1 << SOCK_DONE) | (1 << SOCK_DEAD)))));
	if (newstate == TCP_CLOSE && !handoff)
		e->cause = close_cause(sk, oldstate, rst);

	/* who owns the socket: a close that aborts a live (not orphaned)
	 * socket, or one that never connected, is a system call too. The
	 * task's fields are read in place: bpf_get_current_comm() costs
	 * about 60 ns here, two loads about 15. */
	if (by_owner(oldstate, newstate) ||
	    (newstate == TCP_CLOSE && !rst && !(skflags & (1 << SOCK_DEAD)) &&
	     (e->cause == CAUSE_RESET_SENT ||
	      (oldstate == TCP_SYN_SENT && e->cause == CAUSE_CLOSED)))) {
		task = bpf_get_current_task_btf();
		si->pid = task->tgid;
		__builtin_memcpy(si->comm, task->comm, TASK_COMM_LEN);
	}
	e->pid = si->pid;
	__builtin_memcpy(e->comm, si->comm, TASK_COMM_LEN);

	/* the child's addresses are set only after LISTEN -> SYN_RECV:
	 * hold that record back until the child's next transition */
	if (child) {
		si->held = 1;
		si->held_ts = now;
		si->ts_ns = now;
		si->cookie = e->cookie;
		si->rst = 0;
		if (si == &fresh)
			bpf_sk_storage_get(&socks, sk, si, BPF_SK_STORAGE_GET_F_CREATE);
		return 0;
	}
	if (si->held) {
		cause = e->cause;
		e->ts_ns = si->held_ts;
		e->oldstate = TCP_LISTEN;
		e->newstate = TCP_SYN_RECV;
		e->cause = CAUSE_NONE;
		emit(e);
		si->held = 0;
		e->ts_ns = now;
		e->oldstate = oldstate;
		e->newstate = newstate;
		e->dwell_ns = now - si->ts_ns;
		e->flags = FLAG_DWELL;
		e->cause = cause;
	}

	if (newstate != TCP_CLOSE) {
		si->ts_ns = now;
		si->cookie = e->cookie;
		si->sport = t.sport;
		if (!known)
			bpf_sk_storage_get(&socks, sk, si, BPF_SK_STORAGE_GET_F_CREATE);
		emit(e);
		return 0;
	}

	/* to CLOSE: the storage stays until the kernel frees the socket; a
	 * socket that connects again starts from here */
	if (known) {
		si->ts_ns = now;
		si->rst = 0;
		si->held = 0;
	}

	if (handoff && (skflags & (1 << SOCK_DONE))) {
		/* the peer's FIN is in: TIME_WAIT starts now */
		e->newstate = STATE_TIME_WAIT;
	} else if (handoff) {
		/* orphan, our FIN acked, no FIN from the peer yet: the
		 * mini-socket waits in FIN_WAIT2, where no tracepoint fires.
		 * User space follows it and reports how it ends. */
		e->kind = KIND_PARKED;
	}
	emit(e);
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
static __always_inline struct ran *note_slot(void *ctx)
{
	struct task_struct *task = bpf_get_current_task_btf();
	/* the task's stack is THREAD_SIZE long; x86's irq_stack is as long */
	__u64 size = bpf_core_type_exists(struct irq_stack) ?
		     bpf_core_type_size(struct irq_stack) : 16384;
	__u32 slot = (__u64)ctx - (__u64)task->stack < size ? 0 : 1;

	return bpf_map_lookup_elem(&ran, &slot);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(handle_set_state, struct sock *sk, int oldstate, int newstate)
{
	struct ran *r = note_slot(ctx);

	if (r) {
		r->ctx = (__u64)ctx;
		r->sk = (__u64)sk;
		r->states = oldstate << 8 | newstate;
	}
	return on_state(sk, oldstate, newstate, 0);
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
	count(COUNTER_RESCUED);
	return on_state(sk, oldstate, newstate, 1);
}

/* tcp_reset() fires this before the socket goes to CLOSE */
SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(handle_receive_reset, struct sock *sk)
{
	struct sockinfo *si = bpf_sk_storage_get(&socks, sk, 0, 0);

	if (si)
		si->rst |= RST_RECEIVED;
	return 0;
}

/* an active reset from a full socket; when it comes before the socket
 * goes to CLOSE (timeouts, memory pressure) it explains the close */
SEC("tp_btf/tcp_send_reset")
int BPF_PROG(handle_send_reset, struct sock *sk)
{
	struct sockinfo *si;

	if (!sk)
		return 0;
	si = bpf_sk_storage_get(&socks, sk, 0, 0);
	if (si)
		si->rst |= RST_SENT;
	return 0;
}
