//go:build ignore
// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* What each piece of work costs in the real hook: bench/floor builds this
 * once per piece (a -D below), attaches variant and an empty control to
 * sock:inet_sock_set_state, and compares their run_time_ns / run_cnt under
 * churn. The control runs in the same calls, so machine drift and the
 * statistics' own clock reads cancel out of the difference. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* as large as tcptrace's record */
struct rec {
	__u64 w[13];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rec);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} unwoken SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct rec);
} socks SEC(".maps");

/* tcptrace's wakeup policy: once per 256 KiB per CPU */
static __always_inline __u64 wakeup(void)
{
	__u32 zero = 0;
	__u64 *p = bpf_map_lookup_elem(&unwoken, &zero);

	if (p && (*p += sizeof(struct rec)) >= 256 * 1024) {
		*p = 0;
		return BPF_RB_FORCE_WAKEUP;
	}
	return BPF_RB_NO_WAKEUP;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(variant, struct sock *sk, int oldstate, int newstate)
{
	__u32 zero = 0;
	struct rec *e = bpf_map_lookup_elem(&scratch, &zero);

	if (!e)
		return 0;
#ifdef CLOCK
	e->w[0] = bpf_ktime_get_ns();
#endif
#ifdef RING_OUTPUT
	bpf_ringbuf_output(&events, e, sizeof(*e), wakeup());
#endif
#ifdef RING_RESERVE
	{
		struct rec *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);

		if (r) {
			__builtin_memcpy(r, e, sizeof(*r));
			bpf_ringbuf_submit(r, wakeup());
		}
	}
#endif
#ifdef STORAGE_LOOKUP
	if (bpf_sk_storage_get(&socks, sk, 0, 0))
		e->w[1]++;
#endif
#ifdef STORAGE_CREATE
	/* a socket's storage made at its first transition, as tcptrace does
	 * for a client; the kernel frees it with the socket */
	{
		struct rec *s = bpf_sk_storage_get(&socks, sk, 0, 0);

		if (s)
			s->w[1]++;
		else if (newstate != TCP_CLOSE)
			bpf_sk_storage_get(&socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	}
#endif
#ifdef COMM_HELPER
	bpf_get_current_comm(&e->w[2], 16);
#endif
#ifdef COMM_IN_PLACE
	{
		struct task_struct *t = bpf_get_current_task_btf();

		__builtin_memcpy(&e->w[2], t->comm, 16);
	}
#endif
#ifdef COOKIE
	e->w[4] = bpf_get_socket_cookie(sk);
#endif
#ifdef CGROUP
	e->w[5] = sk->sk_cgrp_data.cgroup->kn->id;
#endif
#ifdef TUPLE
	e->w[6] = sk->__sk_common.skc_net.net->ns.inum;
	e->w[7] = sk->__sk_common.skc_num | (__u64)sk->__sk_common.skc_dport << 16;
	e->w[8] = sk->__sk_common.skc_daddr | (__u64)sk->__sk_common.skc_rcv_saddr << 32;
#endif
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(control, struct sock *sk, int oldstate, int newstate)
{
	return 0;
}
