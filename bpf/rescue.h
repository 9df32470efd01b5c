/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The rescue: no transition is lost to the kernel's recursion check.
 *
 * The kernel does not run a program that is already running on the same
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
#ifndef __TCPTRACE_RESCUE_H
#define __TCPTRACE_RESCUE_H

/* leave the note of this call, in the slot of the stack it runs on */
static __always_inline void note_ran(void *ctx, struct task_struct *task, struct sock *sk,
				     int oldstate, int newstate)
{
	__u32 slot = stack_slot(ctx, task);
	struct ran *r = bpf_map_lookup_elem(&ran, &slot);

	if (!r)
		return;
	r->ctx = (__u64)ctx;
	r->sk = (__u64)sk;
	r->states = oldstate << 8 | newstate;
}

/* is r the note of this call? */
static __always_inline bool noted(struct ran *r, void *ctx, struct sock *sk, __u32 states)
{
	return r && r->ctx == (__u64)ctx && r->sk == (__u64)sk && r->states == states;
}

/* Takes back the note of this call, if handle_set_state left one. Both
 * slots are looked at rather than working out which stack this is: a note
 * on the other stack never matches, its ctx lies on that stack. */
static __always_inline bool take_note(void *ctx, struct sock *sk, int oldstate, int newstate)
{
	__u32 states = oldstate << 8 | newstate;
	__u32 task_slot = 0, irq_slot = 1;
	struct ran *r;

	r = bpf_map_lookup_elem(&ran, &task_slot);
	if (!noted(r, ctx, sk, states))
		r = bpf_map_lookup_elem(&ran, &irq_slot);
	if (!noted(r, ctx, sk, states))
		return false;
	r->ctx = 0;
	return true;
}

#endif /* __TCPTRACE_RESCUE_H */
