//! Expired messages are swept away even if nobody reads their queue or a live message sits in
//! front of them, so their space comes back and the counts stay true. (A reader never sees an
//! expired message either way: `reading` drops one it meets.)
//!
//! The sweep follows an index by deadline rather than every queue: each queue's record carries
//! the time its next message may expire (`QueueState::next_expiry`, kept by the committer in the
//! `meta` column family's expiry index, `store::expiry_key`), and each round reads only the
//! index entries that are due. A queue with a long backlog is swept over several rounds, a
//! bounded number of messages each, resuming where the last round stopped; the pass that
//! reaches its end learns when the earliest message left will expire, and the queue is due
//! again then.

use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};

use super::queue::earliest;
use super::{message, store, Engine, Op, QueueRef, TakeMode, Uncommitted};

/// Most due index entries one round looks at.
const DUE_PER_ROUND: usize = 4096;
/// Most messages behind the head one round reads per queue, and in all: a long backlog is
/// swept over several rounds rather than read whole every second.
const SWEEP_SCAN_PER_QUEUE: usize = 4096;
const SWEEP_SCAN_PER_ROUND: usize = 16384;
/// Most bytes of messages one round reads, in all (messages may be large).
const SWEEP_BYTES_PER_ROUND: usize = 16 << 20;
/// When a pass cut short by the round's budget goes on (milliseconds later).
const RESUME_AFTER_MS: u64 = 1000;

/// What one round of the sweep may still read.
pub(super) struct Budget {
    pub(super) messages: usize,
    pub(super) bytes: usize,
}

impl Budget {
    fn round() -> Budget {
        Budget {
            messages: SWEEP_SCAN_PER_ROUND,
            bytes: SWEEP_BYTES_PER_ROUND,
        }
    }

    fn spent(&self) -> bool {
        self.messages == 0 || self.bytes == 0
    }
}

/// Sweeps the queues whose index entry is due at `now` (unix ms). How many messages it read.
pub(super) fn sweep_due(engine: &Engine, now: u64) -> usize {
    if !engine.serving() {
        // A cluster follower: the leader's sweep is replicated to it.
        return 0;
    }
    let due = store::due_expiries(&engine.db, now, DUE_PER_ROUND);
    if due.is_empty() {
        return 0;
    }
    let mut uncommitted = Uncommitted::default();
    let mut budget = Budget::round();
    let mut stale = WriteBatch::default();
    for (at, id, name) in due {
        if budget.spent() {
            break;
        }
        let state = match engine.lookup(&name) {
            Ok(Some(state)) => state,
            Ok(None) => {
                // Left by a write that failed: its queue is gone.
                stale.delete_cf(engine.meta(), store::expiry_key(at, id));
                continue;
            }
            Err(_) => break,
        };
        {
            let q = state.lock();
            if q.is_retired() {
                continue;
            }
            if q.id() != id || q.indexed_expiry() != at {
                // Left by a write that failed: the queue's own entry is another one.
                stale.delete_cf(engine.meta(), store::expiry_key(at, id));
                continue;
            }
        }
        sweep_queue(engine, &state, now, &mut uncommitted, &mut budget);
    }
    if !stale.is_empty() {
        let _commit = engine.committer.lock();
        if let Err(e) = engine.write(stale, false) {
            log::warn!("cannot delete stale expiry index entries: {e}");
        }
    }
    // The sweep's removals and index changes, and whatever removals the loops left for later.
    engine.submit(&mut uncommitted);
    engine.commit_deferred();
    SWEEP_SCAN_PER_ROUND - budget.messages
}

/// Sweeps one queue: drops expired messages at its head, and reads on through those behind it
/// (see `sweep_behind_head`). Its record, with its new due time, is written by the commit of
/// `uncommitted`.
pub(super) fn sweep_queue(
    engine: &Engine,
    state: &QueueRef,
    now: u64,
    uncommitted: &mut Uncommitted,
    budget: &mut Budget,
) {
    let head_expiry = {
        let mut q = state.lock();
        // A peek drops expired messages on its way to the first live one.
        let head = super::reading::take_locked(
            engine,
            state,
            &mut q,
            TakeMode::Peek,
            || now,
            uncommitted,
            usize::MAX,
        );
        head.ok().flatten().map_or(0, |taken| taken.expires_at)
    };
    sweep_behind_head(engine, state, now, head_expiry, uncommitted, budget);
    uncommitted.push(Op::SaveRecord {
        queue: state.clone(),
    });
}

/// Drops expired messages behind the head of one queue, reading up to `SWEEP_SCAN_PER_QUEUE`
/// of them (within the round's budget), going on where the last round stopped. When the pass
/// reaches the end, the queue is next due when the earliest message it kept (or the head's,
/// `head_expiry`) expires; otherwise it is due again shortly. The messages are read without the
/// queue's lock; a reader cannot take one without moving `next_unclaimed` past it, which is
/// checked after.
pub(super) fn sweep_behind_head(
    engine: &Engine,
    state: &QueueRef,
    now: u64,
    head_expiry: u64,
    uncommitted: &mut Uncommitted,
    budget: &mut Budget,
) {
    let (id, from, tail) = {
        let mut q = state.lock();
        let from = q.sweep_from();
        // Messages published ahead of their write are not on disk yet: the next pass sees them.
        (q.id(), from, q.written_end())
    };
    let mut expired = Vec::new();
    let mut kept_earliest = 0;
    let mut next = tail;
    if from < tail {
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(store::message_key(id, tail).to_vec());
        let first = store::message_key(id, from);
        let mode = IteratorMode::From(&first, Direction::Forward);
        let limit = SWEEP_SCAN_PER_QUEUE.min(budget.messages);
        for (scanned, item) in engine
            .db
            .iterator_cf_opt(engine.messages(), options, mode)
            .enumerate()
        {
            let Ok((key, value)) = item else { break };
            let seq = store::message_seq(&key);
            if scanned == limit || budget.bytes == 0 {
                next = seq;
                break;
            }
            budget.messages -= 1;
            budget.bytes = budget.bytes.saturating_sub(value.len());
            if let Some((header, body)) = message::decode(&value) {
                if header.is_expired(now) {
                    expired.push((seq, body.len() as u64));
                } else if header.expires_at != 0 {
                    kept_earliest = earliest(kept_earliest, header.expires_at);
                }
            }
        }
    }
    let mut q = state.lock();
    if q.is_retired() {
        return;
    }
    // None: the pass is over.
    let goes_on = (next < tail).then_some(next);
    q.swept_to(goes_on, kept_earliest, head_expiry, now + RESUME_AFTER_MS);
    for (seq, len) in expired {
        if q.mark_swept(seq) {
            q.count_expired(len);
            uncommitted.push(Op::Remove {
                queue: state.clone(),
                seq,
            });
        }
    }
}
