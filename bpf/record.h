/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* One transition's record: which ones the filters keep, its time, its
 * namespace, and fill(), which writes it. record() in tcptrace.c decides
 * what the transition is. */
#ifndef __TCPTRACE_RECORD_H
#define __TCPTRACE_RECORD_H

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
	__u64 now = 0;

	if (segment_made(old, new, cause, skflags))
		now = tcp_clock_of(sk);
	return now ? now : bpf_ktime_get_ns();
}

/* The namespace's inode number shares a cache line with its reference
 * count, which every socket's creation and end write, on every CPU: under
 * churn, reading it was a quarter of this program's time. Its cookie (set
 * once, never reused) lies far from it, so each CPU keeps the inode number
 * of the namespace it saw last, by cookie. Only a call that holds the
 * staging (not one that interrupted the holder) touches that cache. */
static __always_inline __u32 netns_of(struct sock *sk, struct staging *st, bool cached,
				     bool legacy)
{
	struct net *net = sk->__sk_common.skc_net.net;
	__u64 cookie;

	/* before 5.12 (commit 3d368ab87cf6, "net: initialize net->net_cookie
	 * at netns setup") the cookie is made on demand, and is an
	 * atomic64_t: legacy reads the inode number */
	if (!cached || legacy)
		return net->ns.inum;
	cookie = net->net_cookie;
	if (cookie != st->net_cookie || !cookie) {
		st->net_inum = net->ns.inum;
		st->net_cookie = cookie;
	}
	return st->net_inum;
}

/* the connection's addresses, from the fields a full socket shares with
 * its timewait mini-socket (sock_common) */
static __always_inline void fill_addrs(struct event *e, struct sock *sk, __u16 family)
{
	if (family == AF_INET) {
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
				 struct task_struct *task, __u32 src, bool legacy)
{
	e->ts_ns = t->now;
	e->cookie = sock_id(sk, legacy);
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
	fill_addrs(e, sk, t->family);

	/* who owns the socket: a close that aborts a live (not orphaned)
	 * socket, or one that never connected, is a system call too. The
	 * task's fields are read in place: bpf_get_current_comm() costs
	 * about 60 ns here, two loads about 15. The cgroup is the owner's,
	 * read from the task like its comm: the socket's own cgroup pointer
	 * (the same, unless the socket was handed to a process in another
	 * cgroup) lies on a line of the socket that nothing else here reads,
	 * and loading it was a sixth of this program's time under churn. */
	if (t->child) {
		set_child_owner(e, sk, legacy);
	} else if (by_owner(t->oldstate, t->newstate) ||
		   close_by_owner(t->oldstate, t->newstate, t->cause, t->rst_sent, t->skflags)) {
		if (legacy) {
			set_current_owner(e);
		} else {
			if (!task)
				task = bpf_get_current_task_btf();
			set_owner(e, task);
		}
		if (t->newstate == TCP_LISTEN && !legacy)
			own_listener(sk, e);
	} else {
		set_no_owner(e);
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

#endif /* __TCPTRACE_RECORD_H */
