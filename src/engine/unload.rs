//! Unloading idle queues (see `registry`): each one's last record is written, with its consumed
//! messages deleted and its expiry index entry up to date, and it leaves memory in the same
//! hold of the registry's lock, so that a load never reads a record about to be replaced. The
//! commit lock is held too: no commit writes a record or stages a message meanwhile.
//!
//! Under `--cluster` a write is a proposal, in RocksDB only once committed and applied, so a
//! queue leaves memory only when the last record proposed for it is applied (`record_applied`):
//! one whose consumed messages are still to delete has that record proposed first and stays,
//! listed as used, to be unloaded at a later pass without writing anything.

use std::sync::atomic::Ordering;

use rocksdb::WriteBatch;

use super::commit::{stage_record, RecordBuffers};
use super::registry::UNLOAD_CHUNK;
use super::store::QueueMeta;
use super::Engine;

/// Queues unloaded in one pass after which the allocator is asked to give free memory back to
/// the system (`give_memory_back`): their states were small allocations spread over the heap,
/// which it keeps otherwise (100,000 queues unloaded left 110 MB in the process, 13 MB in use).
pub(super) const TRIM_AFTER: usize = 10_000;

/// Unloads the queues the registry finds idle (`Registry::unload_candidates`) that can still be
/// unloaded once locked. How many it unloaded.
pub(super) fn unload_idle(engine: &Engine) -> usize {
    let proposing = engine.cluster.is_some();
    if !engine.serving() {
        // A member that does not lead has nothing loaded, and could propose nothing.
        return 0;
    }
    let candidates = engine.registry.unload_candidates(engine.synced());
    if candidates.is_empty() {
        return 0;
    }
    let mut buffers = RecordBuffers::default();
    let mut unloaded = 0;
    for chunk in candidates.chunks(UNLOAD_CHUNK) {
        if engine.stopping.load(Ordering::Acquire) {
            return unloaded;
        }
        let _commit = engine.committer.lock();
        let synced = engine.synced();
        let mut records = engine.registry.replacing_records();
        let mut write = WriteBatch::default();
        let mut proposed = Vec::new();
        for state in chunk {
            let mut q = state.lock();
            if !q.unloadable(synced) {
                continue;
            }
            let consumed = q.next_unclaimed() > q.deleted_below();
            if proposing {
                if !q.record_applied(synced) || consumed {
                    // Unloaded at a later pass, once the record is applied (proposed now
                    // with the consumed messages' deletion if that is what it lacks).
                    if q.record_applied(synced) {
                        q.want_reclaim();
                        let record = QueueMeta::of(&q, q.tail());
                        stage_record(engine, &mut write, state, &mut q, record, &mut buffers);
                        proposed.push(state.clone());
                    }
                    engine.registry.touch(state, &mut q);
                    continue;
                }
                // Its record on disk says all memory does.
                records.unload(&mut q);
                unloaded += 1;
                continue;
            }
            // Its consumed messages go with its last record: the reclaimer forgets it.
            if consumed {
                q.want_reclaim();
            }
            let record = QueueMeta::of(&q, q.tail());
            stage_record(engine, &mut write, state, &mut q, record, &mut buffers);
            records.unload(&mut q);
            unloaded += 1;
        }
        if !write.is_empty() {
            // Unsynced, as a read's removal is: the record says no more than memory did, and
            // a crash before the next sync at worst gives back messages read since the last.
            match engine.write(write, false) {
                Ok(point) => {
                    for state in proposed {
                        state.lock().record_written_at(point);
                    }
                }
                Err(e) => log::error!("cannot write the records of queues being unloaded: {e}"),
            }
        }
        records.shrink();
    }
    log::debug!("unloaded {unloaded} idle queues");
    unloaded
}

/// Returns the heap's free pages to the system (glibc's `malloc_trim`, which also releases
/// free pages in the middle of the heap, not only at its top). Called a few seconds after many
/// queues were unloaded: the lists of recently used queues keep their states a little longer.
pub(super) fn give_memory_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
