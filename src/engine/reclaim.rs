//! Disk space comes back: consumed, deleted and flushed messages leave only tombstones until
//! RocksDB compacts their key range, and their WAL files stay until the memtables holding them are
//! flushed. This background thread compacts each queue's dead range (every key below the oldest
//! message still live) once enough was consumed, once the queue stops moving, or at once while
//! the disk is below the free-space reserve, and compacts the whole range of deleted queues. So a
//! drained or deleted queue gives its space back within seconds, and a server stopped at the
//! reserve recovers by itself.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rocksdb::{BottommostLevelCompaction, CompactOptions};

use super::space::FreeSpace;
use super::{store, Engine, QueueRef};

/// How often dead ranges are looked for.
pub(super) const RECLAIM_EVERY: Duration = Duration::from_secs(1);
/// Consumed messages after which a still-moving queue's dead range is compacted anyway.
const COMPACT_AFTER: u64 = 100_000;
/// Consumed messages after which a queue that stopped moving is compacted (an emptied queue is
/// compacted whatever the count).
const COMPACT_STOPPED_AFTER: u64 = 1024;
/// Below this multiple of the reserve, every dead range is compacted at once.
const LOW_SPACE_FACTOR: u64 = 2;

/// What the reclaimer knows of one queue.
struct Reclaimed {
    /// Every key below this sequence number was compacted away.
    compacted: u64,
    /// The low mark seen on the previous pass.
    last_low: u64,
}

impl Engine {
    pub(super) fn reclaim_every(&self, every: Duration) {
        let reserve = self.config.min_free_bytes.saturating_mul(LOW_SPACE_FACTOR);
        let mut space = FreeSpace::new(self.config.data_dir.clone(), reserve);
        let mut known: HashMap<u64, Reclaimed> = HashMap::new();
        let mut next = Instant::now() + every;
        while !self.stopping.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(50));
            if Instant::now() < next {
                continue;
            }
            next = Instant::now() + every;
            let low_space = !space.enough();
            self.reclaim_pass(&mut known, low_space);
        }
    }

    fn reclaim_pass(&self, known: &mut HashMap<u64, Reclaimed>, low_space: bool) {
        let queues: Vec<QueueRef> = self.queues.read().values().cloned().collect();
        // Queue id → (low mark, whether the queue is empty).
        let mut live: HashMap<u64, (u64, bool)> = HashMap::with_capacity(queues.len());
        for state in &queues {
            let q = state.lock();
            if q.deleted || !q.persisted {
                continue;
            }
            // The oldest message still wanted: given back, held open, or never claimed.
            let low = q
                .returned
                .front()
                .copied()
                .into_iter()
                .chain(q.open.keys().copied())
                .fold(q.next_unclaimed, u64::min);
            live.insert(q.id, (low, q.items() == 0 && q.open.is_empty()));
        }
        let mut compacted_any = false;
        for (&id, &(low, empty)) in &live {
            let seen = known.entry(id).or_insert(Reclaimed {
                compacted: 0,
                last_low: u64::MAX,
            });
            let stopped = low == seen.last_low;
            let settled =
                stopped && (empty || low - seen.compacted.min(low) >= COMPACT_STOPPED_AFTER);
            seen.last_low = low;
            let dead = low.saturating_sub(seen.compacted);
            if dead > 0 && (low_space || settled || dead >= COMPACT_AFTER) {
                self.compact(
                    store::message_key(id, seen.compacted),
                    store::message_key(id, low),
                );
                seen.compacted = low;
                compacted_any = true;
            }
        }
        // Deleted queues: their whole range.
        let gone: Vec<u64> = known
            .keys()
            .filter(|id| !live.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            known.remove(&id);
            self.compact(store::message_key(id, 0), store::message_key(id + 1, 0));
            compacted_any = true;
        }
        if compacted_any && low_space {
            // Let the WAL files go too: they are freed once no memtable needs them.
            for cf in [self.messages(), self.meta()] {
                if let Err(e) = self.db.flush_cf(cf) {
                    log::warn!("flush for space failed: {e}");
                }
            }
        }
    }

    fn compact(&self, from: [u8; 16], to: [u8; 16]) {
        let mut options = CompactOptions::default();
        options.set_exclusive_manual_compaction(false);
        options.set_bottommost_level_compaction(BottommostLevelCompaction::ForceOptimized);
        self.db
            .compact_range_cf_opt(self.messages(), Some(from), Some(to), &options);
    }
}
