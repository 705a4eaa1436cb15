//! Group commit: one thread owns every RocksDB write. It drains whatever requests arrived while
//! the previous batch was syncing, commits them as one WriteBatch with at most one fsync, and only
//! then publishes the new messages, answers the writers and serves blocked readers. One fsync for
//! many messages is how a durable queue keeps up with many producers.

use std::collections::{HashMap, VecDeque};

use crossbeam_channel::Receiver;
use rocksdb::WriteBatch;

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
    /// Messages this batch adds and still keeps (sequence number, body length), oldest first.
    staged: VecDeque<(u64, u64)>,
    /// Body bytes of `staged`.
    added_bytes: u64,
    /// Messages this batch staged and then dropped again to make room for later ones: the
    /// oldest `dropped_staged` of its sequence numbers, never visible to a reader.
    dropped_staged: u64,
    /// Committed messages dropped to make room (sequence number, body length): given back to the
    /// queue if the batch fails.
    discarded: Vec<(u64, u64)>,
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
    /// Fsync the batch under `--sync always` even without puts (a flush is answered only once
    /// it is on disk, as a delete is).
    sync: bool,
}

impl Batch {
    fn touch(&mut self, queue: &QueueRef, id: u64) -> &mut Touched {
        touch(&mut self.touched, queue, id)
    }
}

impl Touched {
    /// The queue's head once the batch is committed. Messages staged and dropped again lie
    /// right after the old tail (every older one was dropped before them, so the head was at
    /// the tail): the head skips them.
    fn head_after(&self, q: &QueueState) -> u64 {
        if self.dropped_staged == 0 {
            q.head
        } else {
            q.head.max(q.tail + self.dropped_staged)
        }
    }
}

fn touch<'a>(touched: &'a mut HashMap<u64, Touched>, queue: &QueueRef, id: u64) -> &'a mut Touched {
    touched.entry(id).or_insert_with(|| Touched {
        queue: queue.clone(),
        staged: VecDeque::new(),
        added_bytes: 0,
        dropped_staged: 0,
        discarded: Vec::new(),
        has_puts: false,
    })
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
        }
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
        let queue = self.engine.lookup_or_create(name);
        let len = body.len() as u64;
        let (id, seq) = {
            let mut q = queue.lock();
            self.make_room(batch, &queue, &mut q, len)?;
            q.next_seq += 1;
            (q.id, q.next_seq - 1)
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
        touched.staged.push_back((seq, len));
        touched.added_bytes += len;
        touched.has_puts = true;
        Ok(())
    }

    /// Checks the queue's limits for one more message of `len` bytes, counting what this batch
    /// already staged for it. A queue that discards when full drops its oldest messages to make
    /// room: committed ones first, then ones this batch staged, all within this batch, so that a
    /// failed write gives them back. Nothing is dropped if even dropping every message not held
    /// open would not make room.
    fn make_room(
        &mut self,
        batch: &mut Batch,
        queue: &QueueRef,
        q: &mut QueueState,
        len: u64,
    ) -> Result<(), Error> {
        let limits = self.engine.config.limits;
        let over = |q: &QueueState, staged_items: usize, staged_bytes: u64| {
            let items = q.items() + q.open.len() as u64 + staged_items as u64;
            let bytes = q.counters.bytes + staged_bytes;
            limits.max_items.is_some_and(|max| items + 1 > max)
                || limits.max_bytes.is_some_and(|max| bytes + len > max)
        };
        let staged = batch
            .touched
            .get(&q.id)
            .map_or((0, 0), |t| (t.staged.len(), t.added_bytes));
        if !over(q, staged.0, staged.1) {
            return Ok(());
        }
        let open_bytes: u64 = q.open.values().sum();
        let never_fits = limits
            .max_items
            .is_some_and(|max| q.open.len() as u64 + 1 > max)
            || limits.max_bytes.is_some_and(|max| open_bytes + len > max);
        if !limits.discard_old || never_fits {
            return Err(Error::QueueFull);
        }
        let now = message::now_ms();
        let messages = self.engine.messages();
        let touched = touch(&mut batch.touched, queue, q.id);
        while over(q, touched.staged.len(), touched.added_bytes) {
            if let Some((seq, dropped)) = self.discard_committed(queue, q, now) {
                batch
                    .write
                    .delete_cf(messages, store::message_key(q.id, seq));
                touched.discarded.push((seq, dropped));
            } else if let Some((seq, dropped)) = touched.staged.pop_front() {
                // The put and its delete cancel out within the batch.
                batch
                    .write
                    .delete_cf(messages, store::message_key(q.id, seq));
                touched.added_bytes -= dropped;
                touched.dropped_staged += 1;
            } else {
                return Err(Error::QueueFull);
            }
            q.counters.discarded += 1;
        }
        Ok(())
    }

    /// Claims the oldest committed message that is not open (dropping expired ones on the way);
    /// its sequence number and body length.
    fn discard_committed(
        &mut self,
        queue: &QueueRef,
        q: &mut QueueState,
        now: u64,
    ) -> Option<(u64, u64)> {
        let mut intents = super::Intents::default();
        let front = self
            .engine
            .take_locked(queue, q, TakeMode::Peek, now, &mut intents);
        self.carry.extend(intents.ops);
        let taken = front.ok()??;
        let claimed = q.pop_front();
        debug_assert_eq!(claimed, Some(taken.seq));
        let len = taken.body.len() as u64;
        q.counters.bytes = q.counters.bytes.saturating_sub(len);
        Some((taken.seq, len))
    }

    /// Writes the batch with every touched queue's record, then publishes and answers. False if
    /// the write failed.
    fn commit(&mut self, mut batch: Batch) -> bool {
        if batch.touched.is_empty() {
            let mut outbox = Outbox::new(&self.engine.mailboxes);
            for (writer, error) in batch.writers {
                let outcome = Outcome::Failed(error.unwrap_or(Error::Storage));
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
            record.head = touched.head_after(&q);
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
        let sync = (has_puts || batch.sync) && self.engine.config.sync == SyncPolicy::Always;
        let result = self.engine.write(batch.write, sync);
        if let Err(e) = &result {
            log::error!("commit of {} writes failed: {e}", batch.writers.len());
        }
        let mut outbox = Outbox::new(&self.engine.mailboxes);
        for touched in batch.touched.values() {
            let mut q = touched.queue.lock();
            if result.is_ok() {
                q.persisted = true;
                q.head = touched.head_after(&q);
                q.tail = q.next_seq;
                q.counters.bytes += touched.added_bytes;
                if touched.has_puts {
                    self.engine
                        .serve_waiters(&touched.queue, &mut q, &mut self.carry, &mut outbox);
                }
            } else {
                // Nothing of the batch happened: what it discarded is back in the queue.
                q.next_seq = q.tail;
                let discarded = touched.discarded.len() as u64 + touched.dropped_staged;
                q.counters.discarded -= discarded;
                for &(seq, len) in &touched.discarded {
                    q.counters.bytes += len;
                    q.returned.push_back(seq);
                }
                q.returned.make_contiguous().sort_unstable();
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
            let sync = self.engine.config.sync == SyncPolicy::Always;
            if let Err(e) = self.engine.write(write, sync) {
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
        batch.sync = true;
        match self.commit(batch) {
            true => Outcome::Flushed,
            false => Outcome::Failed(Error::Storage),
        }
    }
}

/// Empties a queue's state: everything not held open is gone.
fn flush_state(q: &mut QueueState) {
    q.head = q.tail;
    q.returned.clear();
    q.swept.clear();
    q.counters.bytes = q.open.values().sum();
    q.counters.flushes += 1;
}
