/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Who owns a socket: which transitions name their owner, and how a record
 * carries it. See ../shared/KERNEL.md: only a system call on the socket
 * runs in its owner; a server's child takes its listener's owner from the
 * listeners storage; user space carries owners to every other transition
 * and learns who accepted a child from note_holder() and the holders dump. */
#ifndef __TCPTRACE_OWNER_H
#define __TCPTRACE_OWNER_H

/* the owner is the task: the process's id, cgroup and name, not the
 * thread's (prctl(PR_SET_NAME) renames a thread): what ps and ss -p show */
static __always_inline void set_owner(struct event *e, struct task_struct *task)
{
	e->cgroup = task->cgroups->dfl_cgrp->kn->id;
	e->pid = task->tgid;
	__builtin_memcpy(e->comm, task->group_leader->comm, TASK_COMM_LEN);
}

/* the same, where there is no BTF-typed task (legacy, see compat.h):
 * through helpers */
static __always_inline void set_current_owner(struct event *e)
{
	struct task_struct *task = (void *)bpf_get_current_task();

	e->cgroup = bpf_get_current_cgroup_id();
	e->pid = bpf_get_current_pid_tgid() >> 32;
	BPF_CORE_READ_INTO(&e->comm, task, group_leader, comm);
}

static __always_inline void set_no_owner(struct event *e)
{
	e->cgroup = 0;
	e->pid = 0;
	__builtin_memset(e->comm, 0, TASK_COMM_LEN);
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

/* a close made by a system call as well: one that aborts a live (not
 * orphaned) socket, or one that never connected (connect() failing, or
 * finding no port) */
static __always_inline bool close_by_owner(int old, int new, __u8 cause, bool rst_sent,
					   __u64 skflags)
{
	return new == TCP_CLOSE && !rst_sent && !(skflags & (1 << SOCK_DEAD)) &&
	       (cause == CAUSE_RESET_SENT ||
		(old == TCP_SYN_SENT && (cause == CAUSE_CLOSED || cause == CAUSE_NO_PORT)));
}

/* A child's owner is its listener's, from the storage the kernel cloned
 * from the listener; ref names the listener. A listener from before the
 * tracer has none until the holders dump gives it some, and without
 * socket storage (legacy) none has any: the child, copied from its
 * listener, has its cgroup, and user space finds the listener by port. */
static __always_inline void set_child_owner(struct event *e, struct sock *sk, bool legacy)
{
	struct owner *o = legacy ? NULL : bpf_sk_storage_get(&listeners, sk, 0, 0);

	if (o && o->listener) {
		e->cgroup = o->cgroup;
		e->pid = o->pid;
		e->ref = o->listener;
		__builtin_memcpy(e->comm, o->comm, TASK_COMM_LEN);
		return;
	}
	set_no_owner(e);
	e->cgroup = sk_cgroup_id(sk);
}

/* a new listener: its children will name this owner */
static __always_inline void own_listener(struct sock *sk, struct event *e)
{
	struct owner *o = bpf_sk_storage_get(&listeners, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (!o)
		return;
	o->cgroup = e->cgroup;
	o->listener = e->cookie;
	o->pid = e->pid;
	o->holder = 0;
	o->born = 0;
	__builtin_memcpy(o->comm, e->comm, TASK_COMM_LEN);
}

#endif /* __TCPTRACE_OWNER_H */
