//! The committer's removals of whole queues: `delete` (the queue and its record go, in one
//! write) and `flush` (every message not held open goes; the queue and its counters stay). Both
//! are answered once their write is synced, as a put is. A queue that is not loaded is deleted
//! or flushed through its record (`flush_all` does not load every queue to empty it).

use rocksdb::WriteBatch;

use super::{Batch, Committer};
use crate::engine::durability::SyncPoint;
use crate::engine::events::Outcome;
use crate::engine::store::{self, QueueMeta};
use crate::engine::{Error, QueueRef};

/// Records of queues not loaded that one write of `flush_all` empties.
const FLUSH_RECORDS_PER_WRITE: usize = 1024;

/// Deletes a queue; the outcome and the point its reply waits for.
pub(super) fn delete_queue(c: &mut Committer<'_>, name: &[u8]) -> (Outcome, SyncPoint) {
    let queue = match c.engine.lookup(name) {
        Ok(Some(queue)) => queue,
        Ok(None) => return (Outcome::NotFound, SyncPoint::NONE),
        Err(e) => return (Outcome::Failed(e), SyncPoint::NONE),
    };
    // The record goes while no load can read it (see `registry`).
    let mut records = c.engine.registry.replacing_records();
    records.forget(name);
    let mut q = queue.lock();
    q.retire();
    let waiters = q.take_waiters();
    let mut outcome = (Outcome::Deleted, SyncPoint::NONE);
    if q.is_persisted() {
        let (first, end) = (
            store::message_key(q.id(), 0),
            store::message_key(q.id() + 1, 0),
        );
        let mut write = WriteBatch::default();
        write.delete_cf(c.engine.meta(), store::meta_key(name));
        if q.indexed_expiry() != 0 {
            let key = store::expiry_key(q.indexed_expiry(), q.id());
            write.delete_cf(c.engine.meta(), key);
        }
        write.delete_range_cf(c.engine.messages(), first, end);
        outcome = match c.engine.write(write, true) {
            Ok(point) => {
                // The reclaimer compacts the range so the disk space comes back.
                c.engine.deleted_ids.lock().push(q.id());
                (Outcome::Deleted, point)
            }
            Err(e) => {
                log::error!("cannot delete queue: {e}");
                (Outcome::Failed(Error::Storage), SyncPoint::NONE)
            }
        };
    }
    if q.is_counted() {
        records.uncount();
    }
    drop(q);
    drop(records);
    if !waiters.is_empty() {
        // Readers blocked on the queue keep waiting on its empty successor, ahead of any
        // that started waiting on the successor since it was forgotten.
        match c.engine.lookup_or_create(name) {
            Ok(successor) => {
                let mut successor = successor.lock();
                successor.adopt_waiters(waiters);
            }
            Err(e) => log::error!("blocked readers of a deleted queue are lost: {e:?}"),
        }
    }
    outcome
}

/// Empties one queue or all; the outcome and the point its reply waits for.
pub(super) fn flush(c: &mut Committer<'_>, name: Option<&[u8]>) -> (Outcome, SyncPoint) {
    // The point of the writes emptying queues not loaded, which the answer waits for too.
    let mut unloaded = SyncPoint::NONE;
    let queues: Vec<QueueRef> = match name {
        Some(name) => match c.engine.lookup(name) {
            Ok(queue) => queue.into_iter().collect(),
            Err(e) => return (Outcome::Failed(e), SyncPoint::NONE),
        },
        None => {
            // Queues not loaded first: one loaded meanwhile is emptied with the loaded ones.
            match flush_records(c) {
                Ok(point) => unloaded = point,
                Err(()) => return (Outcome::Failed(Error::Storage), SyncPoint::NONE),
            }
            c.engine.registry.loaded()
        }
    };
    let mut batch = Batch::default();
    for queue in &queues {
        let mut q = queue.lock();
        if !q.is_persisted() || q.is_retired() {
            continue;
        }
        // Every key below the tail but the open messages': also those of messages taken
        // before a crash whose removal never reached the disk.
        let messages = c.engine.messages();
        let mut open: Vec<u64> = q.open().keys().copied().collect();
        open.sort_unstable();
        let mut from = 0;
        for seq in open.into_iter().chain([q.tail()]) {
            if from < seq {
                let (first, end) = (
                    store::message_key(q.id(), from),
                    store::message_key(q.id(), seq),
                );
                batch.write.delete_range_cf(messages, first, end);
            }
            from = seq + 1;
        }
        q.flush();
        let id = q.id();
        drop(q);
        batch.touch(queue, id);
    }
    batch.wanted = true;
    match c.commit(batch) {
        Ok(point) => (Outcome::Flushed, point.max(unloaded)),
        Err(()) => (Outcome::Failed(Error::Storage), SyncPoint::NONE),
    }
}

/// Empties every queue that is not loaded, through its record: the queue's messages are
/// deleted and its record says so. The point of the last write, which `flush_all`'s answer
/// waits for, or Err if one failed.
fn flush_records(c: &mut Committer<'_>) -> Result<SyncPoint, ()> {
    let names: Vec<Vec<u8>> = store::records(&c.engine.db)
        .filter(|(_, record)| record.items() > 0 || record.deleted_below < record.tail)
        .map(|(name, _)| name)
        .collect();
    let mut point = SyncPoint::NONE;
    for chunk in names.chunks(FLUSH_RECORDS_PER_WRITE) {
        let records = c.engine.registry.replacing_records();
        let mut write = WriteBatch::default();
        for name in chunk {
            if records.is_loaded(name) {
                continue;
            }
            let record = store::read_record(&c.engine.db, name).map_err(|e| {
                log::error!("flush_all: cannot read a record: {e}");
                c.engine.metrics.storage_error();
            })?;
            if let Some(record) = record {
                flush_record(c, &mut write, name, record);
            }
        }
        if write.is_empty() {
            continue;
        }
        point = c.engine.write(write, true).map_err(|e| {
            log::error!("flush_all failed: {e}");
        })?;
        drop(records);
    }
    Ok(point)
}

/// Adds to `write` what empties the queue `name` whose record is `record`.
fn flush_record(c: &Committer<'_>, write: &mut WriteBatch, name: &[u8], mut record: QueueMeta) {
    let id = record.id;
    let messages = c.engine.messages();
    write.delete_range_cf(
        messages,
        store::message_key(id, record.deleted_below.min(record.tail)),
        store::message_key(id, record.tail),
    );
    // Messages given back are below the head: they go too (nothing is open).
    for &seq in &record.pending {
        write.delete_cf(messages, store::message_key(id, seq));
    }
    if record.next_expiry != 0 {
        write.delete_cf(c.engine.meta(), store::expiry_key(record.next_expiry, id));
    }
    record.next_unclaimed = record.tail;
    record.deleted_below = record.tail;
    record.pending.clear();
    record.next_expiry = 0;
    record.counters.bytes = 0;
    record.counters.flushes += 1;
    write.put_cf(c.engine.meta(), store::meta_key(name), record.encode());
}
