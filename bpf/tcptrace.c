//go:build ignore
// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* tcptrace: every TCP state transition, attributed to the owning process.
 *
 * Attached as tp_btf to sock:inet_sock_set_state (no tracefs needed, and the
 * tracepoint's own field assignment never runs), plus tcp:tcp_send_reset to
 * tell why a connection closed. See
 * ../shared/KERNEL.md for what the kernel reports, measured.
 *
 * This file holds the programs and record(), which decides what a
 * transition is; the headers hold one concern each: maps.h (configuration,
 * maps, counters), compat.h (kernel differences), staging.h (staging and
 * flush), cause.h (why a connection closed), owner.h (who owns a socket),
 * record.h (filters, clock, filling a record), rescue.h (transitions the
 * kernel's recursion check skips), holders.h (who holds a server's
 * connection). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "tcptrace.h"
#include "maps.h"
#include "compat.h"
#include "staging.h"
#include "cause.h"
#include "owner.h"
#include "record.h"
#include "rescue.h"
#include "holders.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";


/* Set once a child's LISTEN -> SYN_RECV was seen before the child had an
 * identity (child_early()): from then on, a child's next transition looks
 * for the record it put off. Never set on kernels that report children
 * whole, which pay nothing for it. Read by the loader, too. */
__u32 early_children = 0;

/* A child reported before it has its identity: its record waits in its own
 * storage (cloned from its listener's, or made here for a child of a
 * listener from before the tracer), or without socket storage (legacy) in
 * early_born, until its next transition. false if there is no room for
 * it: the transition is counted lost rather than recorded under its
 * listener's identity. */
static __always_inline bool put_off_child(struct sock *sk, bool legacy)
{
	__u64 now = bpf_ktime_get_ns(), key = (__u64)sk;
	struct owner *o;

	if (legacy) {
		if (bpf_map_update_elem(&early_born, &key, &now, BPF_ANY))
			return false;
	} else {
		o = bpf_sk_storage_get(&listeners, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!o)
			return false;
		o->born = now;
	}
	if (!READ_ONCE(early_children))
		WRITE_ONCE(early_children, 1);
	return true;
}

/* when the child sk was reported, if put_off_child() kept its record, and
 * forgets it; 0 if not */
static __always_inline __u64 take_put_off(struct sock *sk, bool legacy)
{
	__u64 key = (__u64)sk, born, *b;
	struct owner *o;

	if (legacy) {
		b = bpf_map_lookup_elem(&early_born, &key);
		if (!b)
			return 0;
		born = *b;
		bpf_map_delete_elem(&early_born, &key);
		return born;
	}
	o = bpf_sk_storage_get(&listeners, sk, 0, 0);
	if (!o)
		return 0;
	born = o->born;
	o->born = 0;
	return born;
}

/* one record of t, staged, or if direct written straight to the ring */
static __always_inline void emit(struct sock *sk, struct transition *t, struct task_struct *task,
				 struct staging *st, bool direct, bool legacy)
{
	struct event *e = slot_begin(st, direct);

	if (!e)
		return;
	fill(e, sk, t, task, slot_src(st, direct), legacy);
	slot_end(st, e, direct);
}

/* Before a child's first transition after LISTEN -> SYN_RECV: the record
 * put_off_child() kept, now that the child has its cookie, ports and
 * addresses, at the time it was reported. */
static __always_inline void emit_put_off(struct sock *sk, struct transition *now,
					 struct staging *st, bool direct, bool legacy)
{
	struct transition t = *now;

	t.now = take_put_off(sk, legacy);
	if (!t.now)
		return;
	t.oldstate = TCP_LISTEN;
	t.newstate = TCP_SYN_RECV;
	t.child = true;
	t.rst_sent = false;
	t.kind = KIND_STATE;
	t.cause = CAUSE_NONE;
	emit(sk, &t, NULL, st, direct, legacy);
}

/* One transition, filtered, then staged, or if direct (this call
 * interrupted one that holds the staging) written straight to the ring.
 * legacy: for kernels without cookies, tasks or storage in tracing
 * programs (compat.h). */
static __always_inline void record(struct sock *sk, int oldstate, int newstate,
				   struct task_struct *task, struct staging *st, bool direct,
				   bool legacy)
{
	struct transition t = {};
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
	t.netns = netns_of(sk, st, !direct, legacy);
	if (filter_netns && t.netns != filter_netns)
		return;

	t.child = oldstate == TCP_LISTEN && newstate == TCP_SYN_RECV;
	if (t.child && child_early(sk)) {
		if (!put_off_child(sk, legacy))
			count(COUNTER_LOST, 1);
		return;
	}
	t.sport = sk->__sk_common.skc_num;
	if (!t.sport && newstate == TCP_CLOSE)
		t.sport = inet_sport_of(sk);
	t.dport = bpf_ntohs(sk->__sk_common.skc_dport);
	if (oldstate == TCP_SYN_RECV && READ_ONCE(early_children))
		emit_put_off(sk, &t, st, direct, legacy);

	t.skflags = sk->__sk_common.skc_flags;
	t.kind = KIND_STATE;
	t.cause = CAUSE_NONE;
	handoff = handed_off(sk, oldstate, newstate, t.rst_sent, t.skflags);
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
	emit(sk, &t, task, st, direct, legacy);
}

static __always_inline int on_state(struct sock *sk, int oldstate, int newstate,
				    struct task_struct *task, bool legacy)
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
		record(sk, oldstate, newstate, task, st, true, legacy);
		return 0;
	}
	/* held before the clock is read: user space takes a staging found
	 * not held as holding every record timed before flush_staging ran */
	hold(st);
	record(sk, oldstate, newstate, task, st, false, legacy);
	let_go(st);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(handle_set_state, struct sock *sk, int oldstate, int newstate)
{
	struct task_struct *task = bpf_get_current_task_btf();

	note_ran(ctx, task, sk, oldstate, newstate);
	return on_state(sk, oldstate, newstate, task, false);
}

/* handle_set_state for Linux 5.10 (compat.h). It needs no rescue: before
 * 6.1 (commit 05b24ff9b2cf, "bpf: Prevent bpf program recursion for raw
 * tracepoint probes") the kernel runs a tracepoint's program even within
 * itself, and the staging's busy flag takes care of that. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(handle_set_state_510, struct sock *sk, int oldstate, int newstate)
{
	return on_state(sk, oldstate, newstate, NULL, true);
}

/* handles the transition only if handle_set_state did not: see rescue.h */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(rescue_set_state, struct sock *sk, int oldstate, int newstate)
{
	if (take_note(ctx, sk, oldstate, newstate))
		return 0;
	count(COUNTER_RESCUED, 1);
	return on_state(sk, oldstate, newstate, NULL, false);
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
	struct holder h = {};
	struct socket *sock;
	struct sock *sk;

	if (!task || !file)
		return 0;
	if ((file->f_inode->i_mode & S_IFMT) != S_IFSOCK)
		return 0;
	/* a socket's file keeps its struct socket here (sock_alloc_file());
	 * read rather than asked of bpf_sock_from_file(), which 5.10 lacks */
	sock = BPF_CORE_READ(file, private_data);
	sk = BPF_CORE_READ(sock, sk);
	if (!sk || BPF_CORE_READ(sk, sk_type) != 1 /* SOCK_STREAM */)
		return 0;
	if (BPF_CORE_READ(sk, sk_protocol) == IPPROTO_MPTCP) {
		/* an MPTCP socket (Go listens with MPTCP by default) holds
		 * a plain TCP socket, its first subflow: that is the one the
		 * tracepoint reports. 5.10's BTF has no struct mptcp_sock. */
		if (!bpf_core_field_exists(((struct mptcp_sock *)0)->first))
			return 0;
		sk = BPF_CORE_READ((struct mptcp_sock *)sk, first);
		if (!sk)
			return 0;
	}
	if (!read_socket(sk, &h))
		return 0;
	held_by(&h, task, ctx->fd);
	if (h.state == TCP_LISTEN)
		note_old_listener(sk, &h);
	bpf_seq_write(ctx->meta->seq, &h, sizeof(h));
	return 0;
}

/* Every TCP socket on the host, run by user space around dump_holders:
 * before it, to give every socket its cookie (dump_holders can only read
 * one), and after it, to give the listeners it found their storage. The
 * socket behind a file (socket->sk) is an untrusted pointer to the
 * verifier of 6.18, which neither the cookie helper nor the storage takes;
 * this iterator's sockets are trusted on every kernel. */
SEC("iter/tcp")
int name_sockets(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct tcp_sock *tp;
	struct owner *found, *o;
	__u64 cookie, key;

	if (!skc)
		return 0;
	/* NULL for timewait and request sockets */
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	cookie = bpf_get_socket_cookie(tp);
	if (skc->skc_state != TCP_LISTEN)
		return 0;
	key = (__u64)tp;
	found = bpf_map_lookup_elem(&old_listeners, &key);
	if (!found)
		return 0;
	o = bpf_sk_storage_get(&listeners, tp, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (o && !o->listener) {
		*o = *found;
		o->listener = cookie;
	}
	bpf_map_delete_elem(&old_listeners, &key);
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
/* A parked FIN_WAIT2 (an orphan's timewait mini-socket, see record())
 * that takes data answers with a reset and is freed with it
 * (tcp_timewait_state_process(): "new data after half-duplex close"), and
 * no transition says so: this record does, as it happens, for user
 * space's follower to end the connection with the cause it has. The
 * mini-socket shares sock_common with the socket it replaced, read
 * through probes: the verifier knows sk as a full socket. */
static __always_inline void write_mini_reset(struct sock *sk, struct staging *st, bool direct,
					     __u32 netns, __u16 family)
{
	struct event *e = slot_begin(st, direct);

	if (!e)
		return;
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	e->netns = netns;
	e->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	e->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	fill_addrs(e, sk, family);
	e->oldstate = TCP_FIN_WAIT2;
	e->newstate = TCP_CLOSE;
	e->cause = CAUSE_RESET_SENT;
	e->kind = KIND_MINI_RESET;
	e->src = slot_src(st, direct);
	slot_end(st, e, direct);
}

static __always_inline void note_mini_reset(struct sock *sk)
{
	struct inet_timewait_sock *tw = (struct inet_timewait_sock *)sk;
	struct staging *st;
	__u32 zero = 0, netns;
	__u16 family;

	if (BPF_CORE_READ(tw, tw_substate) != TCP_FIN_WAIT2)
		return;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (filter_family == AF_INET6 && family == AF_INET)
		return;
	netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	if (filter_netns && netns != filter_netns)
		return;
	st = bpf_map_lookup_elem(&staging, &zero);
	if (!st)
		return;
	/* direct a constant in each copy, as on_state() has it: the 5.10
	 * verifier cannot follow a record that may be the ring's or the
	 * staging's */
	if (READ_ONCE(st->busy)) {
		write_mini_reset(sk, st, true, netns, family);
		return;
	}
	hold(st);
	write_mini_reset(sk, st, false, netns, family);
	let_go(st);
}

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
	if (sk->__sk_common.skc_state == TCP_TIME_WAIT)
		note_mini_reset(sk);
	return 0;
}
