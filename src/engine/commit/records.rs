//! Writing a queue's record: the record itself, the deletion of messages consumed below its head
//! when the reclaimer asked for it (`QueueState::reclaim_wanted`), and its entry in the expiry
//! index, all in the same write so that they never disagree after a crash. The committer writes
//! a record for every queue a batch touches; unloading a queue writes its last one
//! (`super::super::unload`).

use rocksdb::WriteBatch;

use crate::engine::queue::QueueState;
use crate::engine::store::{self, QueueMeta};
use crate::engine::{Engine, QueueRef};

/// Most range tombstones one write adds to delete a queue's consumed messages (one more than
/// the pending messages among them).
const MOST_RECLAIM_RANGES: usize = 64;

/// Buffers for encoding records and their keys, kept across records.
#[derive(Default)]
pub(in crate::engine) struct RecordBuffers {
    record: Vec<u8>,
    key: Vec<u8>,
}

/// Adds `record`, the record of `q` as this write leaves it, to `write`, with what must go with
/// it. `state` is `q`'s handle, for the reclaimer to watch if the head moved past messages not
/// deleted yet.
pub(in crate::engine) fn stage_record(
    engine: &Engine,
    write: &mut WriteBatch,
    state: &QueueRef,
    q: &mut QueueState,
    mut record: QueueMeta,
    buffers: &mut RecordBuffers,
) {
    if q.reclaim_wanted() {
        // In the same write as the record that says they are consumed.
        let deleted_below = store::delete_consumed(
            write,
            &engine.messages(),
            &record,
            q.deleted_below(),
            MOST_RECLAIM_RANGES,
        );
        q.reclaimed_to(deleted_below);
    }
    record.deleted_below = q.deleted_below();
    if q.next_expiry() != q.indexed_expiry() {
        let meta = engine.meta();
        if q.indexed_expiry() != 0 {
            write.delete_cf(meta, store::expiry_key(q.indexed_expiry(), q.id()));
        }
        if q.next_expiry() != 0 {
            write.put_cf(meta, store::expiry_key(q.next_expiry(), q.id()), q.name());
        }
        q.expiry_indexed();
    }
    record.next_expiry = q.indexed_expiry();
    record.encode_into(&mut buffers.record);
    store::meta_key_into(&mut buffers.key, q.name());
    write.put_cf(engine.meta(), &buffers.key, &buffers.record);
    if record.next_unclaimed > q.deleted_below() && !q.reclaim_watched() {
        q.set_reclaim_watched(true);
        engine.reclaim_watch.lock().push(state.clone());
    }
}

/// Adds the next unused queue id to `write`: ids are never reused, even for a queue deleted
/// before a restart.
pub(in crate::engine) fn stage_next_id(engine: &Engine, write: &mut WriteBatch) {
    let next = engine.registry.next_id();
    write.put_cf(engine.meta(), store::NEXT_ID_KEY, next.to_be_bytes());
}
