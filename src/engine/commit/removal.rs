//! The committer's removals of whole queues: `delete` (the queue and its record go, in one
//! write) and `flush` (every message not held open goes; the queue and its counters stay). Both
//! are answered once their write is synced, as a put is.

use rocksdb::WriteBatch;

use super::{Batch, Committer};
use crate::engine::durability::SyncPoint;
use crate::engine::events::Outcome;
use crate::engine::queue::QueueState;
use crate::engine::{store, Error, QueueRef};

impl Committer<'_> {
    /// Deletes a queue; the outcome and the point its reply waits for.
    pub(super) fn delete_queue(&mut self, name: &[u8]) -> (Outcome, SyncPoint) {
        let Some(queue) = self.engine.forget(name) else {
            return (Outcome::NotFound, SyncPoint::NONE);
        };
        let (id, persisted, waiters) = {
            let mut q = queue.lock();
            q.deleted = true;
            (q.id, q.persisted, std::mem::take(&mut q.waiters))
        };
        if !waiters.is_empty() {
            // Readers blocked on the queue keep waiting on its empty successor, ahead of any
            // that started waiting on the successor since `forget`.
            let successor = self.engine.lookup_or_create(name);
            let mut successor = successor.lock();
            let later = std::mem::replace(&mut successor.waiters, waiters);
            successor.waiters.extend(later);
        }
        if persisted {
            let (first, end) = (store::message_key(id, 0), store::message_key(id + 1, 0));
            let mut write = WriteBatch::default();
            write.delete_cf(self.engine.meta(), store::meta_key(name));
            write.delete_range_cf(self.engine.messages(), first, end);
            match self.engine.write(write, true) {
                Ok(point) => {
                    // The reclaimer compacts the range so the disk space comes back.
                    self.engine.deleted_ids.lock().push(id);
                    return (Outcome::Deleted, point);
                }
                Err(e) => {
                    log::error!("cannot delete queue: {e}");
                    return (Outcome::Failed(Error::Storage), SyncPoint::NONE);
                }
            }
        }
        (Outcome::Deleted, SyncPoint::NONE)
    }

    /// Empties one queue or all; the outcome and the point its reply waits for.
    pub(super) fn flush(&mut self, name: Option<&[u8]>) -> (Outcome, SyncPoint) {
        let queues: Vec<QueueRef> = match name {
            Some(name) => self.engine.lookup(name).into_iter().collect(),
            None => self.engine.queues.read().values().cloned().collect(),
        };
        let mut batch = Batch::default();
        for queue in &queues {
            let mut q = queue.lock();
            if !q.persisted || q.deleted {
                continue;
            }
            // Every key below the tail but the open messages': also those of messages taken
            // before a crash whose removal never reached the disk.
            let messages = self.engine.messages();
            let mut open: Vec<u64> = q.open.keys().copied().collect();
            open.sort_unstable();
            let mut from = 0;
            for seq in open.into_iter().chain([q.tail]) {
                if from < seq {
                    let (first, end) = (
                        store::message_key(q.id, from),
                        store::message_key(q.id, seq),
                    );
                    batch.write.delete_range_cf(messages, first, end);
                }
                from = seq + 1;
            }
            flush_state(&mut q);
            let id = q.id;
            drop(q);
            batch.touch(queue, id);
        }
        batch.wanted = true;
        match self.commit(batch) {
            Ok(point) => (Outcome::Flushed, point),
            Err(()) => (Outcome::Failed(Error::Storage), SyncPoint::NONE),
        }
    }
}

/// Empties a queue's state: everything not held open is gone.
fn flush_state(q: &mut QueueState) {
    q.next_unclaimed = q.tail;
    q.deleted_below = q.tail;
    q.recent.clear();
    q.ahead.clear();
    q.returned.clear();
    q.swept.clear();
    q.counters.bytes = q.open.values().sum();
    q.counters.flushes += 1;
}
