/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Staging and flush: how a record reaches the ring. A CPU fills records
 * into its staging (maps.h) and writes them out a batch at a time; a call
 * that interrupted the staging's holder writes its record straight to the
 * ring instead. slot_begin() and slot_end() are that choice, made once for
 * every kind of record. */
#ifndef __TCPTRACE_STAGING_H
#define __TCPTRACE_STAGING_H

/* Bytes this CPU wrote since it last woke the reader decide the wakeup:
 * asking the ring instead reads the consumer position, a cache line the
 * reader writes after every batch. */
static __always_inline __u64 wakeup(struct staging *st, __u64 bytes)
{
	if ((st->unwoken += bytes) < wakeup_bytes)
		return BPF_RB_NO_WAKEUP;
	st->unwoken = 0;
	return BPF_RB_FORCE_WAKEUP;
}

/* The staging's busy flag, held while a program fills the staging or
 * writes it out. A call that finds it held interrupted the holder on this
 * CPU, and must not touch the staging. */
static __always_inline void hold(struct staging *st)
{
	WRITE_ONCE(st->busy, 1);
	barrier();
}

static __always_inline void let_go(struct staging *st)
{
	barrier();
	WRITE_ONCE(st->busy, 0);
}

/* st->ev[0..n) to the ring, in one record, of which records are
 * transitions (the rest a mark); st->busy is held */
static __always_inline void write_out(struct staging *st, __u32 n, __u32 records)
{
	__u64 size = (__u64)n * sizeof(struct event);

	if (n == 0 || n > BATCH + 1)
		return;
	if (bpf_ringbuf_output(&events, st->ev, size, wakeup(st, size)) < 0)
		count(COUNTER_LOST, records);
}

/* the staging's next free slot; st->busy is held */
static __always_inline struct event *next_slot(struct staging *st)
{
	__u32 n = st->n;

	if (n >= BATCH) /* never: for the verifier */
		n = 0;
	return &st->ev[n];
}

/* the slot next_slot gave is filled: the batch goes to the ring once it
 * is full; st->busy is held */
static __always_inline void slot_filled(struct staging *st)
{
	__u32 n = st->n + 1;

	if (n >= BATCH) {
		write_out(st, BATCH, BATCH);
		n = 0;
	}
	st->n = n;
}

/* Where the next record goes: the staging's next slot, or, if direct (this
 * call interrupted the staging's holder on this CPU), a record reserved in
 * the ring. NULL when the ring is full: the record is counted lost. Every
 * slot begun is ended with slot_end() and the same direct. */
static __always_inline struct event *slot_begin(struct staging *st, bool direct)
{
	struct event *e;

	if (!direct)
		return next_slot(st);
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		count(COUNTER_LOST, 1);
	return e;
}

/* the record slot_begin() gave is filled: submit it, or count it staged */
static __always_inline void slot_end(struct staging *st, struct event *e, bool direct)
{
	if (direct)
		bpf_ringbuf_submit(e, wakeup(st, sizeof(*e)));
	else
		slot_filled(st);
}

/* the src a record carries: the CPU + 1 whose staging it went through, 0
 * if it went to the ring directly */
static __always_inline __u32 slot_src(struct staging *st, bool direct)
{
	return direct ? 0 : st->src;
}

#endif /* __TCPTRACE_STAGING_H */
