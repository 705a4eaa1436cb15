//! The engine's background threads: the WAL syncer of `--sync interval:<ms>`, and the sweep that
//! drops expired messages from the head of every queue so their space is reclaimed even if
//! nobody reads the queue.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{message, Engine, Intents, QueueRef, TakeMode};

/// How often expired messages at the head of each queue are swept away.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(1);

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
            }
            self.submit(&mut intents);
        }
    }
}
