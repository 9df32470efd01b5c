/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Why a connection reached CLOSE, and when a CLOSE is in fact its hand-off
 * to a timewait mini-socket (../shared/KERNEL.md: TIME_WAIT is never
 * reported). */
#ifndef __TCPTRACE_CAUSE_H
#define __TCPTRACE_CAUSE_H

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

/* The kernel says FIN_WAIT2/CLOSING -> CLOSE when it hands the connection
 * to a timewait mini-socket: after the peer's FIN (SOCK_DONE), or for an
 * orphan whose FIN was acked (SOCK_DEAD). */
static __always_inline bool handed_off(struct sock *sk, int old, int new, bool rst_sent,
				       __u64 skflags)
{
	return new == TCP_CLOSE && !rst_sent && !sk->sk_err &&
	       ((old == TCP_CLOSING && (skflags & (1 << SOCK_DONE))) ||
		(old == TCP_FIN_WAIT2 && (skflags & ((1 << SOCK_DONE) | (1 << SOCK_DEAD)))));
}

#endif /* __TCPTRACE_CAUSE_H */
