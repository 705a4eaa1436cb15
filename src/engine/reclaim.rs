//! Disk space comes back. Messages consumed from a queue's head are not deleted one by one (see
//! `reading::removal`): this background thread has them deleted, with a few range tombstones
//! written alongside the queue's record (`QueueState::reclaim_wanted`), once a thousand were
//! consumed, and compacts that dead range (after dropping, unread, the table files holding only
//! consumed messages) once enough was consumed, once the queue stops moving, or at once while
//! the disk is below the free-space reserve. It watches only the queues whose head moved (the
//! committer tells it, `commit::stage_record`) until it has nothing left to do for them. It also compacts the whole range of deleted
//! queues, and the tombstones of flushed ones, until which their space stays taken; WAL files
//! stay until the memtables holding them are flushed. So a drained or deleted queue gives its
//! space back within seconds, and a server stopped at the reserve recovers by itself.
//!
//! Recycled WAL files would defeat that: RocksDB keeps up to four used WAL files, at their full
//! size (a memtable's worth each), to overwrite in place, which saves a journal commit per fsync
//! but pins hundreds of MB. So they are recycled only when the disk has room to spare.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rocksdb::{BottommostLevelCompaction, CompactOptions};

use super::durability::{self, SyncFor};
use super::space;
use super::{store, Engine, Op, QueueRef, Uncommitted};

/// How often dead ranges are looked for.
pub(super) const RECLAIM_EVERY: Duration = Duration::from_secs(1);
/// Consumed messages after which a still-moving queue's dead range is compacted, if they are
/// also at least as many as the messages still behind them (see `worth_compacting`).
const COMPACT_AFTER: u64 = 100_000;
/// Consumed messages after which a queue that stopped moving is compacted, under the same
/// condition (an emptied queue is compacted whatever the count).
const COMPACT_STOPPED_AFTER: u64 = 1024;
/// Consumed messages not yet deleted after which they are deleted (range tombstones, cheap)
/// without waiting for a compaction, if they are also at least as many as the messages behind
/// them: RocksDB's own compactions then drop them as they go, as they dropped point tombstones.
/// A queue read slowly and steadily never stops, and might not reach `COMPACT_AFTER` for hours.
const DELETE_AFTER: u64 = 1024;
/// Most queues per pass compacted for fewer than `COMPACT_STOPPED_AFTER` consumed messages
/// (emptied ones). Each manual compaction flushes the memtable it overlaps and costs
/// milliseconds, which a client that drains a million one-message queues would otherwise
/// multiply a million times (while the watch list held every one of those queues in memory:
/// a peak of 1 GB in `scripts/bench-many-queues`).
const MOST_SMALL_COMPACTIONS: usize = 16;
/// Below this multiple of the reserve, every dead range is compacted at once.
const LOW_SPACE_FACTOR: u64 = 2;

/// Free space beyond the reserve, at start, below which WAL files are not recycled.
const RECYCLE_WAL_ABOVE: u64 = 4 << 30;

/// Whether to let RocksDB recycle WAL files: only with plenty of room beyond the reserve.
pub(super) fn recycle_wal(dir: &std::path::Path, reserve: u64) -> bool {
    space::free_bytes(dir).is_none_or(|free| free.saturating_sub(reserve) >= RECYCLE_WAL_ABOVE)
}

/// A queue the reclaimer watches: one whose head moved past messages not deleted yet.
pub(super) struct Watched {
    queue: QueueRef,
    /// The head seen on the previous pass.
    last_head: u64,
}

pub(super) fn reclaim_every(engine: &Engine, every: Duration) {
    let low_mark = engine
        .config
        .min_free_bytes
        .saturating_mul(LOW_SPACE_FACTOR);
    let mut watched: HashMap<u64, Watched> = HashMap::new();
    let mut next = Instant::now() + every;
    while !engine.stopping.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(50));
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + every;
        let low_space = low_mark > 0
            && space::free_bytes(&engine.config.data_dir).is_some_and(|free| free < low_mark);
        reclaim_pass(engine, &mut watched, low_space);
    }
}

/// One pass over the watched queues (those the committer saw move since, and those still
/// being reclaimed), or every loaded queue while the disk is low. A queue that stopped moving
/// with nothing left to do is no longer watched, so an idle server does nothing here.
pub(super) fn reclaim_pass(engine: &Engine, watched: &mut HashMap<u64, Watched>, low_space: bool) {
    let mut moved = std::mem::take(&mut *engine.reclaim_watch.lock());
    if low_space {
        moved.extend(engine.registry.loaded());
    }
    for queue in moved {
        let id = queue.lock().id();
        watched.entry(id).or_insert(Watched {
            queue,
            last_head: u64::MAX,
        });
    }
    let mut chosen = Vec::new();
    let mut records = Uncommitted::default();
    let mut small_compactions = 0;
    watched.retain(|_, seen| {
        let state = &seen.queue;
        let mut q = state.lock();
        if q.is_retired() || !q.is_persisted() {
            // Unloaded (its consumed messages deleted then) or deleted.
            q.set_reclaim_watched(false);
            return false;
        }
        // Messages below the head are consumed, but for the few still pending (given back or
        // held open), which the range deletes skip and compaction keeps.
        let head = q.next_unclaimed();
        let empty = q.items() == 0 && q.open().is_empty();
        let stopped = head == seen.last_head;
        seen.last_head = head;
        let dead = head.saturating_sub(q.compacted_below());
        let behind = q.tail().saturating_sub(head);
        let enough = if stopped {
            empty || dead >= COMPACT_STOPPED_AFTER
        } else {
            dead >= COMPACT_AFTER
        };
        let mut compacting = dead > 0 && (low_space || (enough && worth_compacting(dead, behind)));
        let undeleted = head.saturating_sub(q.deleted_below());
        let mut deleting = undeleted >= DELETE_AFTER && worth_compacting(undeleted, behind);
        if compacting && !low_space && dead < COMPACT_STOPPED_AFTER {
            // An emptied queue with a few consumed messages: past the first few such queues in
            // a pass, their range tombstones are enough (RocksDB's compactions drop them).
            if small_compactions < MOST_SMALL_COMPACTIONS {
                small_compactions += 1;
            } else {
                compacting = false;
                deleting = undeleted > 0;
            }
        }
        if compacting || deleting {
            log::debug!("queue {}: deleting consumed messages below {head}", q.id());
            // The next write of the queue's record deletes its consumed messages.
            q.want_reclaim();
            records.ops.push(Op::SaveRecord {
                queue: state.clone(),
            });
        }
        if compacting {
            chosen.push(state.clone());
        }
        let keep = !stopped || compacting || deleting;
        if !keep {
            // Watched again once the committer sees its head move.
            q.set_reclaim_watched(false);
        }
        keep
    });
    if watched.capacity() > 4 * watched.len() + 1024 {
        watched.shrink_to(2 * watched.len());
    }
    let mut compacted_any = false;
    if !records.is_empty() {
        engine.submit(&mut records);
        engine.commit_deferred();
    }
    // Those record writes moved each queue's head past the files about to be dropped: they must
    // be on disk first. Otherwise a power cut could leave a head pointing into dropped files, and
    // a message taken just before it (its reply maybe never received) would vanish instead of
    // coming back. (A compaction alone needs no sync: it flushes those writes to a table first.)
    let may_drop = chosen.is_empty()
        || durability::sync_wal(engine, SyncFor::DroppingFiles)
            .map_err(|e| log::warn!("WAL sync before dropping files failed: {e}"))
            .is_ok();
    for state in chosen {
        let (record, deleted_below, compacted_below) = {
            let q = state.lock();
            (
                store::QueueMeta::of(&q, q.tail()),
                q.deleted_below(),
                q.compacted_below(),
            )
        };
        let id = record.id;
        if deleted_below > compacted_below {
            log::debug!(
                "queue {id}: consumed messages {compacted_below}..{deleted_below} deleted, \
                 compacting"
            );
            if may_drop {
                drop_consumed_files(engine, &record, compacted_below, deleted_below);
            }
            compact(
                engine,
                store::message_key(id, compacted_below),
                store::message_key(id, deleted_below),
            );
            state.lock().compacted_to(deleted_below);
            compacted_any = true;
        }
    }
    // Deleted queues: their whole range.
    for id in std::mem::take(&mut *engine.deleted_ids.lock()) {
        compact(
            engine,
            store::message_key(id, 0),
            store::message_key(id + 1, 0),
        );
        compacted_any = true;
    }
    if compacted_any && low_space {
        // Let the WAL files go too: they are freed once no memtable needs them.
        for cf in [engine.messages(), engine.meta()] {
            if let Err(e) = engine.db.flush_cf(cf) {
                log::warn!("flush for space failed: {e}");
            }
        }
    }
}

/// Whether a queue's dead range is worth compacting now. The compaction rewrites the
/// live backlog too: it first flushes the memtable, whose file holds the range tombstone at the
/// head and the newest messages at the tail, and so overlaps every file in between. Waiting
/// until the dead messages are as many as the live ones bounds that rewrite to about twice what
/// it frees: compacting every 100,000 gets of a 1-million-message backlog rewrote 77 MB each
/// time, a third of the server's CPU while it was busy.
fn worth_compacting(dead: u64, behind: u64) -> bool {
    dead >= behind
}

/// Drops, without reading them, the table files that hold nothing but consumed messages of
/// `record`'s queue in `from..below` (the compaction that follows reads and rewrites the rest):
/// after a long drain those are nearly all of its files, which a compaction alone read back in
/// full only to discard, slowing the drain while it ran. Each range ends at its last consumed
/// key, inclusive, so no file holding a pending message or the head is dropped. A range
/// tombstone dropped with its file can let consumed keys in a file that straddles the range's
/// end show again; no read looks below the head, and the next start-up deletes them.
pub(super) fn drop_consumed_files(
    engine: &Engine,
    record: &store::QueueMeta,
    from: u64,
    below: u64,
) {
    for (start, end) in store::consumed_ranges(record, from) {
        let end = end.min(below);
        if end <= start {
            break;
        }
        let first = store::message_key(record.id, start);
        let last = store::message_key(record.id, end - 1);
        if let Err(e) = engine
            .db
            .delete_file_in_range_cf(engine.messages(), first, last)
        {
            log::warn!("dropping consumed files of queue {} failed: {e}", record.id);
            return;
        }
    }
}

fn compact(engine: &Engine, from: [u8; 16], to: [u8; 16]) {
    let mut options = CompactOptions::default();
    options.set_exclusive_manual_compaction(false);
    options.set_bottommost_level_compaction(BottommostLevelCompaction::ForceOptimized);
    engine
        .db
        .compact_range_cf_opt(engine.messages(), Some(from), Some(to), &options);
}
