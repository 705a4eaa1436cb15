//! The engine's background threads: the WAL syncer of `--sync interval:<ms>`, and the sweep that
//! drops expired messages from every queue, at the head and behind it, so their space is
//! reclaimed even if nobody reads the queue or a live message sits in front of them.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rocksdb::{Direction, IteratorMode, ReadOptions};

use super::{message, store, Engine, Intents, Op, QueueRef, TakeMode};

/// How often expired messages are swept away.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Most messages behind the head one round looks at per queue: a long backlog is swept over
/// several rounds rather than read whole every second.
const SWEEP_SCAN: usize = 4096;

impl Engine {
    pub(super) fn sync_every(&self, every: Duration) {
        while !self.stopping.load(Ordering::Acquire) {
            std::thread::sleep(every);
            let started = std::time::Instant::now();
            match self.db.flush_wal(true) {
                Ok(()) => self.metrics.observe_sync(started.elapsed()),
                Err(e) => log::error!("WAL sync failed: {e}"),
            }
        }
    }

    /// Drops expired messages from the head of every queue, so their space is reclaimed even if
    /// nobody reads the queue.
    pub(super) fn sweep_every(&self, every: Duration) {
        let mut intents = Intents::default();
        let mut slept = Duration::ZERO;
        while !self.stopping.load(Ordering::Acquire) {
            // Short naps so that shutdown is not held up by the sweep interval.
            std::thread::sleep(Duration::from_millis(50));
            slept += Duration::from_millis(50);
            if slept < every {
                continue;
            }
            slept = Duration::ZERO;
            let queues: Vec<QueueRef> = self.queues.read().values().cloned().collect();
            let now = message::now_ms();
            for state in queues {
                let mut q = state.lock();
                if q.items() > 0 {
                    // A peek drops expired messages on its way to the first live one.
                    let _ = self.take_locked(&state, &mut q, TakeMode::Peek, now, &mut intents);
                }
                drop(q);
                self.sweep_behind_head(&state, now, &mut intents);
            }
            self.submit(&mut intents);
        }
    }

    /// Drops expired messages behind the head of one queue, up to `SWEEP_SCAN` of them per
    /// round, going on where the last round stopped. The messages are read without the queue's
    /// lock; a reader cannot take one without moving the head past it, which is checked after.
    fn sweep_behind_head(&self, state: &QueueRef, now: u64, intents: &mut Intents) {
        let (id, from, tail) = {
            let q = state.lock();
            (q.id, (q.next_unclaimed + 1).max(q.sweep_from), q.tail)
        };
        if from >= tail {
            state.lock().sweep_from = 0;
            return;
        }
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(store::message_key(id, tail).to_vec());
        let first = store::message_key(id, from);
        let mode = IteratorMode::From(&first, Direction::Forward);
        let mut expired = Vec::new();
        let mut next = tail;
        for (scanned, item) in self
            .db
            .iterator_cf_opt(self.messages(), options, mode)
            .enumerate()
        {
            let Ok((key, value)) = item else { break };
            let seq = u64::from_be_bytes(key[8..16].try_into().unwrap());
            if scanned == SWEEP_SCAN {
                next = seq;
                break;
            }
            if let Some((header, body)) = message::decode(&value) {
                if header.is_expired(now) {
                    expired.push((seq, body.len() as u64));
                }
            }
        }
        let mut q = state.lock();
        if q.deleted {
            return;
        }
        q.sweep_from = if next >= tail { 0 } else { next };
        for (seq, len) in expired {
            if q.mark_swept(seq) {
                q.counters.expired += 1;
                q.counters.bytes = q.counters.bytes.saturating_sub(len);
                intents.ops.push(Op::Remove {
                    queue: state.clone(),
                    seq,
                });
            }
        }
    }
}
