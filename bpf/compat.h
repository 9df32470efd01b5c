/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Kernel differences, one helper each, in the manner of libbpf-tools'
 * core_fixes.bpf.h. Each says which kernel changed what; the loader's
 * probes (loader/features.go) decide the rest before load. The program is
 * built once and loads on Linux 5.10 to 6.18: see README "Kernels".
 *
 * Linux 5.10 is the one kernel here whose tracing programs have none of
 *  - bpf_get_socket_cookie() (5.12, commit c5dbb89fc2ac, "bpf: Expose
 *    bpf_get_socket_cookie to tracing programs"),
 *  - bpf_get_current_task_btf() (5.11, commit 3ca1032ab7ab, "bpf:
 *    Introduce bpf_get_current_task_btf"),
 *  - socket storage (5.11, commit 8e4597c627fb, "bpf: Allow using
 *    bpf_sk_storage in FENTRY/FEXIT/RAW_TP").
 * handle_set_state_510 in tcptrace.c is built from the same code as
 * handle_set_state with `legacy` true, a constant the compiler folds: a
 * socket is named by its kernel address instead of its cookie, the owner
 * is read through helpers, and a server's child names no listener (user
 * space finds it by port). The loader picks it where the probes find any
 * of the three missing. */
#ifndef __TCPTRACE_COMPAT_H
#define __TCPTRACE_COMPAT_H

/* bpf_rdonly_cast(), a BTF cast that costs nothing: Linux 6.2 (commit
 * a35b9af4ec2c, "bpf: Add a kfunc for generic type cast"). Declared weak,
 * so that the object loads without it: bpf_ksym_exists() is then the
 * constant 0, the verifier drops the branch, and the callers below read
 * through helpers. (Its ld_imm64 needs 6.4 where the kfunc exists, commit
 * 58aa2afbb1e6: 6.2 and 6.3 would refuse the object.) */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;
#ifndef bpf_ksym_exists
#define bpf_ksym_exists(sym) (!!(sym))
#endif

/* TCP's own clock for the segment being processed (tp->tcp_clock_cache),
 * or 0 where reading it would cost a helper call (before 6.2): the caller
 * then reads the clock itself. */
static __always_inline __u64 tcp_clock_of(struct sock *sk)
{
	struct tcp_sock *tp;

	if (!bpf_ksym_exists(bpf_rdonly_cast))
		return 0;
	tp = bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct tcp_sock));
	return tp->tcp_clock_cache;
}

/* the local port kept in inet_sport (skc_num is zeroed at CLOSE); the
 * tracepoint's socket is a struct sock, so the inet_sock behind it needs
 * a cast, or a helper read before 6.2 */
static __always_inline __u16 inet_sport_of(struct sock *sk)
{
	struct inet_sock *inet;

	if (bpf_ksym_exists(bpf_rdonly_cast)) {
		inet = bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct inet_sock));
		return bpf_ntohs(inet->inet_sport);
	}
	return bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
}

/* Whether ctx lies on the task's own stack (0) or on another, the
 * interrupt stack (1): see rescue.h. Written as two comparisons, never as
 * ctx - task->stack: before 6.17 the verifier types task->stack (a void *
 * field) as a scalar, and refuses arithmetic between the ctx pointer and a
 * scalar ("math between ctx pointer and register with unbounded min
 * value"); 6.17 types it as read-only untrusted memory (commit
 * 2d5c91e1cc14, "bpf: rdonly_untrusted_mem for btf id walk pointer
 * leafs"), where both forms load. A privileged program may compare
 * pointers with scalars on every kernel. The task's stack is THREAD_SIZE
 * long; x86's irq_stack is as long. */
static __always_inline __u32 stack_slot(void *ctx, struct task_struct *task)
{
	__u64 size = bpf_core_type_exists(struct irq_stack) ?
		     bpf_core_type_size(struct irq_stack) : 16384;
	__u64 lo = (__u64)task->stack;
	__u64 hi = lo + size;

	/* kept apart, or the compiler folds the two tests into ctx - lo */
	barrier_var(hi);
	return (__u64)ctx >= lo && (__u64)ctx < hi ? 0 : 1;
}

/* Whether a child's LISTEN -> SYN_RECV is reported before the child has an
 * identity of its own. Kernels before 6.15 set the state in
 * inet_csk_clone_lock() right after sk_clone_lock() has copied the
 * listener, and only then give the child its request's cookie, ports and
 * (in tcp_v4/v6_syn_recv_sock()) addresses: the record would carry the
 * listener's cookie and a peer of 0.0.0.0:0. 6.15 sets the state last
 * (commit a3a128f611a9, "inet: consolidate inet_csk_clone_lock()"). On the
 * older kernels the peer port is still 0 then, which no connection has. Such a child is recorded at its next
 * transition (see record() in tcptrace.c), when it has them. */
static __always_inline bool child_early(struct sock *sk)
{
	return sk->__sk_common.skc_dport == 0;
}

/* The socket's name in a record: its cookie, or where tracing programs
 * cannot make one (legacy), its kernel address. User space tells the two
 * apart (events.ByAddress): a kernel address has its top 17 bits set, a
 * cookie counts up from 1. The cookie is made by the first call of the
 * helper and then kept in the socket: read it in place after that. */
static __always_inline __u64 sock_id(struct sock *sk, bool legacy)
{
	__u64 cookie;

	if (legacy)
		return (__u64)sk;
	cookie = sk->__sk_common.skc_cookie.counter;
	return cookie ? cookie : bpf_get_socket_cookie(sk);
}

/* Before 5.15 (commit 8520e224f547, "bpf, cgroups: Fix cgroup v2 fallback
 * on v1/v2 mixed mode", in 5.10.y from 5.10.226), sock_cgroup_data was a
 * union whose val is the cgroup pointer when its lowest bit is clear (set,
 * it holds net_cls and net_prio data instead, and the cgroup is the
 * root's). */
struct sock_cgroup_data___old {
	__u64 val;
};

/* the cgroup v2 id of the socket's cgroup: its creator's, copied to a
 * server's child from its listener */
static __always_inline __u64 sk_cgroup_id(struct sock *sk)
{
	struct sock_cgroup_data___old *old;
	struct cgroup *cg;
	__u64 val;

	if (bpf_core_field_exists(sk->sk_cgrp_data.cgroup))
		return sk->sk_cgrp_data.cgroup->kn->id;
	old = (void *)&sk->sk_cgrp_data;
	val = BPF_CORE_READ(old, val);
	if (val & 1)
		return 1; /* the root cgroup's id */
	cg = (void *)val;
	return BPF_CORE_READ(cg, kn, id);
}

#endif /* __TCPTRACE_COMPAT_H */
