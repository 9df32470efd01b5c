/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The record layout shared by the BPF program and the Go decoder
 * (events/decode.go). This is the one place it is defined: change it here,
 * run `make generate`, and update the decoder's offsets. */
#ifndef __TCPTRACE_H
#define __TCPTRACE_H

#define TASK_COMM_LEN 16

/* records a CPU stages before it writes them to the ring as one; a ring
 * record holds 1 to BATCH struct events, plus a mark when flush_staging
 * wrote it */
#define BATCH 16

/* record kinds */
enum {
	KIND_STATE = 1,  /* a state transition, to be printed */
	KIND_PARKED = 2, /* a dead FIN_WAIT2 handed to a timewait mini-socket:
	                  * not printed, tells user space to follow it */
	KIND_HINT = 3,   /* a transition the filters drop, sent because user
	                  * space needs it to follow timewait connections */
	KIND_MARK = 4,   /* written by flush_staging: every record of CPU
	                  * src - 1 timed before ts_ns is in the ring before
	                  * it. Only ts_ns, src and cookie (jiffies at ts_ns)
	                  * are set. */
	KIND_HOLDER = 5, /* a process other than the last one noted received
	                  * or sent on a server's connection: it holds the
	                  * socket now (it accepted it, or was handed it). Only
	                  * ts_ns, cookie, cgroup, pid, comm and src are set. */
	KIND_MINI_RESET = 6, /* a timewait mini-socket in FIN_WAIT2 answered
	                      * with a reset and dies with it: no transition
	                      * says so. Its connection, cookie, time, src;
	                      * oldstate FIN_WAIT2, newstate CLOSE. */
};

/* record flags */
enum {
	FLAG_V4MAPPED = 1 << 0, /* an AF_INET6 socket talking IPv4, shown as
	                         * IPv4: its timewait mini-socket is AF_INET6 */
};

/* why a connection reached CLOSE */
enum {
	CAUSE_NONE = 0,
	CAUSE_CLOSED = 1,         /* orderly end */
	CAUSE_REFUSED = 2,        /* RST answered our SYN */
	CAUSE_RESET_RECEIVED = 3, /* the peer reset the connection */
	CAUSE_RESET_SENT = 4,     /* we aborted it with a RST */
	CAUSE_TIMEOUT = 5,        /* retransmissions or a FIN_WAIT2 timer ran out */
	CAUSE_UNREACHABLE = 6,    /* an ICMP error ended the handshake */
	CAUSE_REUSED = 7,         /* a TIME_WAIT socket taken over by a new connection */
	CAUSE_NO_PORT = 8,        /* connect() found no free local port (EADDRNOTAVAIL) */
};

/* a pseudo state the kernel's tracepoint never reports for a full socket */
#define STATE_TIME_WAIT 6

struct event {
	__u64 ts_ns;    /* CLOCK_MONOTONIC */
	__u64 cookie;   /* socket cookie: stable for the socket's life, kept by
	                 * its timewait mini-socket, shown by `ss -e` as sk: */
	__u64 ref;      /* LISTEN -> SYN_RECV: the cookie of the listener the
	                 * child came from, 0 if not known; -> CLOSE or
	                 * TIME_WAIT: the bytes the peer acknowledged
	                 * (tcp_sock.bytes_acked); else 0 */
	__u64 cgroup;   /* cgroup v2 id of the owner where fill() reads the
	                 * owner, else 0: user space carries it */
	__u32 pid;      /* owning process (tgid), 0 when unknown */
	__u32 netns;    /* network namespace inode */
	__u8 saddr[16]; /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u16 sport; /* host byte order */
	__u16 dport;
	__u8 family; /* AF_INET or AF_INET6; v4-mapped IPv6 is AF_INET */
	__u8 oldstate;
	__u8 newstate;
	__u8 cause;
	__u8 kind;
	__u8 flags;
	__u16 retrans; /* -> CLOSE or TIME_WAIT: tcp_sock.total_retrans, at
	                * most 65535; else 0 */
	char comm[TASK_COMM_LEN]; /* owning process's name (its thread group
	                           * leader's comm, as ps shows), empty when
	                           * unknown */
	__u32 src; /* CPU + 1 whose staging the record came through; 0 if it
	            * was written straight to the ring */
	__u64 bytes_received; /* -> CLOSE or TIME_WAIT:
	                       * tcp_sock.bytes_received; else 0 */
};

/* One open file of a TCP socket, written by the dump_holders iterator:
 * who holds which socket when tracing starts, or when user space asks. */
struct holder {
	__u64 cookie;
	__u64 start_ns; /* the holding process's start, CLOCK_MONOTONIC */
	__u64 cgroup;   /* its cgroup v2 id */
	__u32 pid;      /* tgid */
	__u32 netns;
	__u32 fd;
	__u16 lport;
	__u8 state;
	__u8 family;
	char comm[TASK_COMM_LEN]; /* thread group leader's */
	/* the connection: for a socket that has no cookie yet (an MPTCP
	 * socket's subflow: the iterator cannot give it one), and for
	 * joining the dump with sock_diag's where records name sockets by
	 * address */
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 dport; /* host byte order */
	__u8 pad[6];
	__u64 sk; /* the socket's kernel address: what records name it by
	           * where tracing programs have no cookies (compat.h) */
};

/* per-CPU counters read by user space */
enum {
	COUNTER_LOST = 0,    /* ring buffer full: record dropped */
	COUNTER_RESCUED = 1, /* transitions handled by rescue_set_state */
	COUNTER_MAX = 2,
};

#endif /* __TCPTRACE_H */
