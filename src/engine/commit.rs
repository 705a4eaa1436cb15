//! Group commit: one thread owns every RocksDB write. It drains whatever requests arrived while
//! the previous batch was syncing, commits them as one WriteBatch with at most one fsync, and only
//! then publishes the new messages, answers the writers and serves blocked readers. One fsync for
//! many messages is how a durable queue keeps up with many producers.

use std::collections::HashMap;

use crossbeam_channel::Receiver;
use rocksdb::{WriteBatch, WriteOptions};

use super::events::{ConnRef, Event, Outbox, Outcome};
use super::message::{self, Header};
use super::queue::{QueueState, TakeMode};
use super::space::FreeSpace;
use super::store::{self, QueueMeta};
use super::{Engine, Error, QueueRef, SyncPolicy};

/// Most requests gathered into one batch, and most body bytes: bounds the latency one batch adds.
const MAX_BATCH_OPS: usize = 8192;
const MAX_BATCH_BYTES: usize = 64 << 20;

pub(super) enum Op {
    Put {
        queue: Vec<u8>,
        flags: u32,
        expires_at: u64,
        body: Vec<u8>,
        reply_to: ConnRef,
    },
    /// A consumed message to delete (and its queue's record to rewrite).
    Remove {
        queue: QueueRef,
        seq: u64,
    },
    /// The queue's record changed (a message was opened).
    Touch {
        queue: QueueRef,
    },
    DeleteQueue {
        name: Vec<u8>,
        reply_to: ConnRef,
    },
    /// Empty one queue, or all of them.
    Flush {
        name: Option<Vec<u8>>,
        reply_to: ConnRef,
    },
    Stop,
}

impl Op {
    pub(super) fn reply_to(&self) -> Option<ConnRef> {
        match self {
            Op::Put { reply_to, .. }
            | Op::DeleteQueue { reply_to, .. }
            | Op::Flush { reply_to, .. } => Some(*reply_to),
            _ => None,
        }
    }

    fn weight(&self) -> usize {
        match self {
            Op::Put { body, .. } => body.len(),
            _ => 0,
        }
    }
}

/// A queue a batch writes to.
struct Touched {
    queue: QueueRef,
    /// Body bytes this batch adds.
    added_bytes: u64,
    has_puts: bool,
}

/// The batch being built.
#[derive(Default)]
struct Batch {
    write: WriteBatch,
    touched: HashMap<u64, Touched>,
    /// Writers to answer, in submission order, with the error of those refused while staging.
    /// All are answered together after the commit, so a connection's replies stay in order.
    writers: Vec<(ConnRef, Option<Error>)>,
}

impl Batch {
    fn touch(&mut self, queue: &QueueRef, id: u64) -> &mut Touched {
        self.touched.entry(id).or_insert_with(|| Touched {
            queue: queue.clone(),
            added_bytes: 0,
            has_puts: false,
        })
    }
}

pub(super) fn run(engine: &Engine, requests: Receiver<Vec<Op>>) {
    let mut committer = Committer {
        engine,
        carry: Vec::new(),
        space: FreeSpace::new(engine.config.data_dir.clone(), engine.config.min_free_bytes),
    };
    loop {
        let mut ops = std::mem::take(&mut committer.carry);
        if ops.is_empty() {
            match requests.recv() {
                Ok(first) => ops = first,
                Err(_) => return,
            }
        }
        let mut weight: usize = ops.iter().map(Op::weight).sum();
        while ops.len() < MAX_BATCH_OPS && weight < MAX_BATCH_BYTES {
            match requests.try_recv() {
                Ok(more) => {
                    weight += more.iter().map(Op::weight).sum::<usize>();
                    ops.extend(more);
                }
                Err(_) => break,
            }
        }
        if committer.apply(ops) {
            return;
        }
    }
}

struct Committer<'a> {
    engine: &'a Engine,
    /// Removals the committer itself caused (expired messages met while serving readers), for
    /// the next batch.
    carry: Vec<Op>,
    space: FreeSpace,
}

impl Committer<'_> {
    /// Applies the ops in order; true once asked to stop.
    fn apply(&mut self, ops: Vec<Op>) -> bool {
        let mut batch = Batch::default();
        for op in ops {
            match op {
                Op::Put {
                    queue,
                    flags,
                    expires_at,
                    body,
                    reply_to,
                } => self.stage_put(&mut batch, &queue, flags, expires_at, &body, reply_to),
                Op::Remove { queue, seq } => {
                    let id = queue.lock().id;
                    let messages = self.engine.messages();
                    batch.write.delete_cf(messages, store::message_key(id, seq));
                    batch.touch(&queue, id);
                }
                Op::Touch { queue } => {
                    let id = queue.lock().id;
                    batch.touch(&queue, id);
                }
                Op::DeleteQueue { name, reply_to } => {
                    self.commit(std::mem::take(&mut batch));
                    let outcome = self.delete_queue(&name);
                    self.answer(reply_to, outcome);
                }
                Op::Flush { name, reply_to } => {
                    self.commit(std::mem::take(&mut batch));
                    let outcome = self.flush(name.as_deref());
                    self.answer(reply_to, outcome);
                }
                Op::Stop => {
                    self.commit(batch);
                    return true;
                }
            }
        }
        self.commit(batch);
        false
    }

    fn answer(&self, to: ConnRef, outcome: Outcome) {
        Outbox::new(&self.engine.mailboxes).send(
            to,
            Event::Completed {
                conn: to.conn,
                outcome,
            },
        );
    }

    /// Stages a put to `name` and a copy to each of its fan-out queues (`name+<child>`).
    fn stage_put(
        &mut self,
        batch: &mut Batch,
        name: &[u8],
        flags: u32,
        expires_at: u64,
        body: &[u8],
        reply_to: ConnRef,
    ) {
        if !self.space.enough() {
            batch.writers.push((reply_to, Some(Error::DiskFull)));
            return;
        }
        if let Err(e) = self.stage_one(batch, name, flags, expires_at, body) {
            batch.writers.push((reply_to, Some(e)));
            return;
        }
        batch.writers.push((reply_to, None));
        for child in self.engine.fanout_children(name) {
            if let Err(e) = self.stage_one(batch, &child, flags, expires_at, body) {
                log::debug!(
                    "fan-out copy to {} refused: {e:?}",
                    String::from_utf8_lossy(&child)
                );
            }
            if batch.write.size_in_bytes() >= MAX_BATCH_BYTES {
                // Copies count against the batch size too: commit what is staged so far.
                self.commit_part(batch);
            }
        }
    }

    /// Commits the staged writes now, keeping the writers to answer with the rest of the batch
    /// (marked failed if this part did not commit).
    fn commit_part(&mut self, batch: &mut Batch) {
        let mut writers = std::mem::take(&mut batch.writers);
        if !self.commit(std::mem::take(batch)) {
            for (_, error) in &mut writers {
                error.get_or_insert(Error::Storage);
            }
        }
        batch.writers = writers;
    }

    /// Stages one message: assigns its sequence number and adds it to the batch, after making
    /// room under the queue's limits.
    fn stage_one(
        &mut self,
        batch: &mut Batch,
        name: &[u8],
        flags: u32,
        expires_at: u64,
        body: &[u8],
    ) -> Result<(), Error> {
        let (queue, id, seq) = loop {
            let queue = self.engine.queue_for_put(name)?;
            let mut q = queue.lock();
            if q.deleted {
                // Forgotten as an unused ghost since the lookup: create it again.
                continue;
            }
            let staged = batch.touched.get(&q.id).map_or(0, |t| t.added_bytes);
            self.make_room(&queue, &mut q, staged, body.len() as u64)?;
            q.next_seq += 1;
            let (id, seq) = (q.id, q.next_seq - 1);
            drop(q);
            break (queue, id, seq);
        };
        let header = Header {
            flags,
            expires_at,
            enqueued_at: message::now_ms(),
        };
        batch.write.put_cf(
            self.engine.messages(),
            store::message_key(id, seq),
            message::encode(&header, body),
        );
        let touched = batch.touch(&queue, id);
        touched.added_bytes += body.len() as u64;
        touched.has_puts = true;
        Ok(())
    }

    /// Checks the queue's limits for one more message of `len` bytes (`staged` bytes already in
    /// this batch), dropping the oldest messages if the queue discards when full.
    fn make_room(
        &mut self,
        queue: &QueueRef,
        q: &mut QueueState,
        staged: u64,
        len: u64,
    ) -> Result<(), Error> {
        let limits = self.engine.config.limits;
        let over = |q: &QueueState| {
            let items = q.next_seq - q.head + q.returned.len() as u64 + q.open.len() as u64;
            limits.max_items.is_some_and(|max| items + 1 > max)
                || limits
                    .max_bytes
                    .is_some_and(|max| q.counters.bytes + staged + len > max)
        };
        if !over(q) {
            return Ok(());
        }
        // A message that could never fit must not empty the queue on its way to being refused.
        let never_fits =
            limits.max_items == Some(0) || limits.max_bytes.is_some_and(|max| staged + len > max);
        if !limits.discard_old || never_fits {
            return Err(Error::QueueFull);
        }
        let mut intents = super::Intents::default();
        let now = message::now_ms();
        while over(q) {
            match self
                .engine
                .take_locked(queue, q, TakeMode::Remove, now, &mut intents)
            {
                Ok(Some(_)) => q.counters.discarded += 1,
                _ => break,
            }
        }
        self.carry.extend(intents.ops);
        if over(q) {
            return Err(Error::QueueFull);
        }
        Ok(())
    }

    /// Writes the batch with every touched queue's record, then publishes and answers. False if
    /// the write failed.
    fn commit(&mut self, mut batch: Batch) -> bool {
        if batch.touched.is_empty() {
            let mut outbox = Outbox::new(&self.engine.mailboxes);
            for (writer, error) in batch.writers {
                // Nothing left to write: writers without an error had theirs committed by an
                // earlier part of the batch (`commit_part`).
                let outcome = error.map_or(Outcome::Stored, Outcome::Failed);
                outbox.send(
                    writer,
                    Event::Completed {
                        conn: writer.conn,
                        outcome,
                    },
                );
            }
            return true;
        }
        let meta = self.engine.meta();
        let mut has_puts = false;
        let mut new_queues = false;
        for touched in batch.touched.values() {
            let q = touched.queue.lock();
            if q.deleted {
                continue;
            }
            new_queues |= !q.persisted;
            has_puts |= touched.has_puts;
            let mut record = QueueMeta::of(&q, q.next_seq);
            record.counters.bytes += touched.added_bytes;
            batch
                .write
                .put_cf(meta, store::meta_key(&q.name), record.encode());
        }
        if new_queues {
            // Ids are never reused, even for a queue deleted before the restart.
            let next = self
                .engine
                .next_queue_id
                .load(std::sync::atomic::Ordering::Relaxed);
            batch
                .write
                .put_cf(meta, store::NEXT_ID_KEY, next.to_be_bytes());
        }
        let mut options = WriteOptions::default();
        options.set_sync(has_puts && self.engine.config.sync == SyncPolicy::Always);
        let result = self.engine.db.write_opt(batch.write, &options);
        if let Err(e) = &result {
            log::error!("commit of {} writes failed: {e}", batch.writers.len());
        }
        let mut outbox = Outbox::new(&self.engine.mailboxes);
        for touched in batch.touched.values() {
            let mut q = touched.queue.lock();
            q.persisted |= result.is_ok();
            if !touched.has_puts {
                continue;
            }
            if result.is_ok() {
                q.tail = q.next_seq;
                q.counters.bytes += touched.added_bytes;
                self.engine
                    .serve_waiters(&touched.queue, &mut q, &mut self.carry, &mut outbox);
            } else {
                q.next_seq = q.tail;
            }
        }
        for (writer, error) in batch.writers {
            let outcome = match (error, &result) {
                (Some(e), _) => Outcome::Failed(e),
                (None, Ok(())) => Outcome::Stored,
                (None, Err(_)) => Outcome::Failed(Error::Storage),
            };
            outbox.send(
                writer,
                Event::Completed {
                    conn: writer.conn,
                    outcome,
                },
            );
        }
        result.is_ok()
    }

    fn delete_queue(&mut self, name: &[u8]) -> Outcome {
        let Some(queue) = self.engine.forget(name) else {
            return Outcome::NotFound;
        };
        let (id, persisted, waiters) = {
            let mut q = queue.lock();
            q.deleted = true;
            (q.id, q.persisted, std::mem::take(&mut q.waiters))
        };
        if !waiters.is_empty() {
            // Readers blocked on the queue keep waiting on its empty successor.
            self.engine.lookup_or_create(name).lock().waiters = waiters;
        }
        if persisted {
            let (first, end) = (store::message_key(id, 0), store::message_key(id + 1, 0));
            let mut write = WriteBatch::default();
            write.delete_cf(self.engine.meta(), store::meta_key(name));
            write.delete_range_cf(self.engine.messages(), first, end);
            let mut options = WriteOptions::default();
            options.set_sync(self.engine.config.sync == SyncPolicy::Always);
            if let Err(e) = self.engine.db.write_opt(write, &options) {
                log::error!("cannot delete queue: {e}");
                return Outcome::Failed(Error::Storage);
            }
        }
        Outcome::Deleted
    }

    fn flush(&mut self, name: Option<&[u8]>) -> Outcome {
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
            let messages = self.engine.messages();
            let (head, tail) = (
                store::message_key(q.id, q.head),
                store::message_key(q.id, q.tail),
            );
            batch.write.delete_range_cf(messages, head, tail);
            for &seq in &q.returned {
                batch
                    .write
                    .delete_cf(messages, store::message_key(q.id, seq));
            }
            flush_state(&mut q);
            let id = q.id;
            drop(q);
            batch.touch(queue, id);
        }
        self.commit(batch);
        Outcome::Flushed
    }
}

/// Empties a queue's state: everything not held open is gone.
fn flush_state(q: &mut QueueState) {
    q.head = q.tail;
    q.returned.clear();
    q.counters.bytes = q.open.values().sum();
    q.counters.flushes += 1;
}
