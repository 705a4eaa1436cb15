//! The engine's background threads: the WAL syncer of `--sync interval:<ms>`, and the sweep that
//! drops expired messages from every queue, at the head and behind it, so their space is
//! reclaimed even if nobody reads the queue or a live message sits in front of them.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rocksdb::{Direction, IteratorMode, ReadOptions};

use super::{message, store, Engine, Op, QueueRef, TakeMode, Uncommitted};

/// How often expired messages are swept away.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Most messages behind the head one round reads per queue, and in all: a long backlog is
/// swept over several rounds rather than read whole every second.
const SWEEP_SCAN_PER_QUEUE: usize = 4096;
const SWEEP_SCAN_PER_ROUND: usize = 16384;
/// Most bytes of messages one round reads, in all (messages may be large).
const SWEEP_BYTES_PER_ROUND: usize = 16 << 20;

/// What one round of the sweep may still read.
pub(super) struct Budget {
    pub(super) messages: usize,
    pub(super) bytes: usize,
}

pub(super) fn sync_every(engine: &Engine, every: Duration) {
    while !engine.stopping.load(Ordering::Acquire) {
        std::thread::sleep(every);
        let started = std::time::Instant::now();
        match engine.db.flush_wal(true) {
            Ok(()) => engine.metrics.observe_sync(started.elapsed()),
            Err(e) => log::error!("WAL sync failed: {e}"),
        }
    }
}

/// Drops expired messages from the head of every queue, so their space is reclaimed even if
/// nobody reads the queue.
pub(super) fn sweep_every(engine: &Engine, every: Duration) {
    let mut uncommitted = Uncommitted::default();
    let mut slept = Duration::ZERO;
    while !engine.stopping.load(Ordering::Acquire) {
        // Short naps so that shutdown is not held up by the sweep interval.
        std::thread::sleep(Duration::from_millis(50));
        slept += Duration::from_millis(50);
        if slept < every {
            continue;
        }
        slept = Duration::ZERO;
        let queues: Vec<QueueRef> = engine.queues.read().values().cloned().collect();
        let now = message::now_ms();
        let mut budget = Budget {
            messages: SWEEP_SCAN_PER_ROUND,
            bytes: SWEEP_BYTES_PER_ROUND,
        };
        for state in queues {
            let mut q = state.lock();
            if q.items() > 0 {
                // A peek drops expired messages on its way to the first live one.
                let _ = super::reading::take_locked(
                    engine,
                    &state,
                    &mut q,
                    TakeMode::Peek,
                    || now,
                    &mut uncommitted,
                );
            }
            drop(q);
            if budget.messages > 0 && budget.bytes > 0 {
                sweep_behind_head(engine, &state, now, &mut uncommitted, &mut budget);
            }
        }
        // The sweep's removals, and whatever removals the loops left for later.
        engine.submit(&mut uncommitted);
        engine.commit_deferred();
    }
}

/// Drops expired messages behind the head of one queue, reading up to
/// `SWEEP_SCAN_PER_QUEUE` of them (within the round's budget), going on where the last round
/// stopped. Queues where a whole pass met no message with an expiry are skipped until one is
/// staged. The messages are read without the queue's lock; a reader cannot take one without
/// moving `next_unclaimed` past it, which is checked after.
pub(super) fn sweep_behind_head(
    engine: &Engine,
    state: &QueueRef,
    now: u64,
    uncommitted: &mut Uncommitted,
    budget: &mut Budget,
) {
    let (id, from, tail) = {
        let mut q = state.lock();
        if q.sweep.clean_at == Some(q.expiring_staged) {
            return;
        }
        // The first unclaimed message is the head's (the peek above sweeps it) unless
        // given-back messages come first.
        let start = q.next_unclaimed + u64::from(q.returned.is_empty());
        let from = match q.sweep.from {
            Some(from) => from.max(start),
            None => {
                q.sweep.pass_mark = q.expiring_staged;
                q.sweep.saw_expiring = false;
                start
            }
        };
        // Messages published ahead of their write are not on disk yet: the next pass sees them.
        (q.id, from, q.written_end)
    };
    let mut expired = Vec::new();
    let mut saw_expiring = false;
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
                saw_expiring |= header.expires_at != 0;
                if header.is_expired(now) {
                    expired.push((seq, body.len() as u64));
                }
            }
        }
    }
    let mut q = state.lock();
    if q.deleted {
        return;
    }
    q.sweep.saw_expiring |= saw_expiring;
    if next >= tail {
        // The pass is over.
        if !q.sweep.saw_expiring {
            q.sweep.clean_at = Some(q.sweep.pass_mark);
        }
        q.sweep.from = None;
    } else {
        q.sweep.from = Some(next);
    }
    for (seq, len) in expired {
        if q.mark_swept(seq) {
            q.counters.expired += 1;
            q.counters.bytes = q.counters.bytes.saturating_sub(len);
            uncommitted.ops.push(Op::Remove {
                queue: state.clone(),
                seq,
            });
        }
    }
}
