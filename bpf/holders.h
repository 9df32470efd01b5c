/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Who holds a server's connection: the send notes, and what the holders
 * dump (the iter/task_file program in tcptrace.c) reads of each socket. */
#ifndef __TCPTRACE_HOLDERS_H
#define __TCPTRACE_HOLDERS_H

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
	bool direct;

	if (!sk || sk->sk_protocol != IPPROTO_TCP)
		return;
	o = bpf_sk_storage_get(&listeners, sk, 0, 0);
	/* no cookie: no transition of it was recorded (the filters); no
	 * listener: a child whose listener's owner is not known, which the
	 * holders dump names */
	if (!o || !o->listener || !sk->__sk_common.skc_cookie.counter)
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
	direct = READ_ONCE(st->busy);
	if (!direct)
		hold(st);
	e = slot_begin(st, direct);
	if (e) {
		fill_holder(e, sk, task, slot_src(st, direct));
		slot_end(st, e, direct);
	}
	if (!direct)
		let_go(st);
}

/* What the dump says of a TCP socket. Read through helpers: the socket
 * behind a file is a pointer the verifier does not follow on every kernel
 * (an MPTCP socket's subflow, and on the 6.18 of these machines
 * socket->sk itself). Its
 * cookie is read, not made (the cookie helper wants a pointer it trusts):
 * name_sockets gives one to every socket of the tracer's namespace before
 * the dump; a socket without one is found by its connection instead, and
 * so is every socket where records name sockets by address (compat.h),
 * when user space joins the dump with sock_diag's. */
static __always_inline bool read_socket(struct sock *sk, struct holder *h)
{
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return false;
	h->sk = (__u64)sk;
	h->cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	h->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	h->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	h->state = BPF_CORE_READ(sk, __sk_common.skc_state);
	h->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	h->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (h->family == AF_INET) {
		bpf_core_read(h->saddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(h->daddr, 4, &sk->__sk_common.skc_daddr);
	} else {
		bpf_core_read(h->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(h->daddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
	return true;
}

/* the process that holds the file: its thread group leader's start and
 * name, as ps shows */
static __always_inline void held_by(struct holder *h, struct task_struct *task, __u32 fd)
{
	struct task_struct *leader = task->group_leader;

	h->start_ns = leader->start_time;
	h->cgroup = task->cgroups->dfl_cgrp->kn->id;
	h->pid = task->tgid;
	h->fd = fd;
	__builtin_memcpy(h->comm, leader->comm, TASK_COMM_LEN);
}

/* A listener from before the tracer: the first holder the dump finds is
 * its owner, which name_sockets then puts in its storage, so that its
 * children name it. */
static __always_inline void note_old_listener(struct sock *sk, struct holder *h)
{
	struct owner o = {};
	__u64 key = (__u64)sk;

	o.cgroup = h->cgroup;
	o.pid = h->pid;
	__builtin_memcpy(o.comm, h->comm, TASK_COMM_LEN);
	bpf_map_update_elem(&old_listeners, &key, &o, BPF_NOEXIST);
}

#endif /* __TCPTRACE_HOLDERS_H */
