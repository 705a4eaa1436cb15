//! Commit: the writes an event loop (or the sweep) collected are staged and written as one
//! WriteBatch, under one lock so that sequence numbers and writes keep one order; then the new
//! messages are published, the writers answered and blocked readers served. Nothing here waits
//! for a disk: every write is made without an fsync, and the replies that depend on it carry its
//! `SyncPoint` and wait for the syncer (`super::durability`) instead. One fsync thus covers the
//! writes of every loop that arrived while the previous one ran.
//!
//! An event loop's later commits within one pass are published before they are written, and
//! written together at the pass's end (`rounds`). Its other concerns have their own files:
//! queue limits and discarding (`limits`), deleting and flushing queues (`removal`); the
//! free-space reserve is `super::space`.

mod limits;
mod records;
mod removal;
mod rounds;

pub(super) use records::{stage_record, RecordBuffers};
pub(super) use rounds::{begin_rounds, CommitRounds};
use rounds::{fatal_write_failure, Unwritten};

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;

use rocksdb::WriteBatch;

use crate::id_hash::IdMap;

use super::conn_ref::ConnRef;
use super::durability::SyncPoint;
use super::events::{Event, Outbox, Outcome};
use super::message::{self, Header};
use super::ops::Op;
use super::queue::QueueState;
use super::recent::Fresh;
use super::sequence::SeqToken;
use super::space::FreeSpace;
use super::store::{self, QueueMeta};
use super::{Engine, Error, QueueRef};

/// The committer keeps its value-encoding buffer across messages up to this capacity.
const REUSED_VALUE_MAX: usize = 64 << 10;

/// Most bytes one write carries: fan-out copies of a large put are written in parts.
const MAX_BATCH_BYTES: usize = 64 << 20;
/// Most removals kept for the next commit (`Engine::submit`) before they are written anyway.
const MAX_DEFERRED: usize = 4096;

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
    /// Copies of the staged messages for the queue's recent cache (`super::recent`).
    fresh: Option<Fresh>,
}

/// The batch being built.
#[derive(Default)]
struct Batch {
    write: WriteBatch,
    touched: IdMap<Touched>,
    /// Writers to answer, in submission order, with the error of those refused while staging.
    /// All are answered together after the commit, so a connection's replies stay in order.
    writers: Vec<(ConnRef, Option<Error>)>,
    /// Sync the write even without puts: a flush is answered only once it is on disk.
    wanted: bool,
    /// Where the parts of this batch written already (`commit_part`) end.
    written: SyncPoint,
}

impl Batch {
    /// A batch adding to `write` (not `Default`, which would create a WriteBatch to drop).
    fn new(write: WriteBatch) -> Batch {
        Batch {
            write,
            touched: IdMap::default(),
            writers: Vec::new(),
            wanted: false,
            written: SyncPoint::NONE,
        }
    }

    fn touch(&mut self, queue: &QueueRef, id: u64) -> &mut Touched {
        touch(&mut self.touched, queue, id)
    }
}

impl Touched {
    /// The queue's `next_unclaimed` once the batch is committed. Messages staged and dropped
    /// again lie right after the old tail (every older one was dropped before them, so nothing
    /// was left unclaimed): it skips them.
    fn next_unclaimed_after(&self, q: &QueueState) -> u64 {
        if self.dropped_staged == 0 {
            q.next_unclaimed()
        } else {
            q.next_unclaimed().max(q.tail() + self.dropped_staged)
        }
    }
}

fn touch<'a>(touched: &'a mut IdMap<Touched>, queue: &QueueRef, id: u64) -> &'a mut Touched {
    touched.entry(id).or_insert_with(|| Touched {
        queue: queue.clone(),
        staged: VecDeque::new(),
        added_bytes: 0,
        dropped_staged: 0,
        discarded: Vec::new(),
        has_puts: false,
        fresh: None,
    })
}

/// What the puts of one `Committer::apply` share, looked up once for all of them rather than
/// per message: the time they are enqueued at, whether the disk has room above the reserve, and
/// the queue the last one went to (a pipeline mostly writes to one queue).
struct PutContext {
    enqueued_at: u64,
    enough_space: bool,
    last_queue: Option<QueueRef>,
}

/// What the committer keeps between commits; the engine holds it under its commit lock.
pub(super) struct CommitState {
    /// Removals for the next commit: deferred ones (`Engine::submit`), and those the committer
    /// itself caused (expired messages met while serving readers).
    carry: Vec<Op>,
    space: FreeSpace,
    /// Where each staged message's stored value is encoded before the batch copies it, and
    /// each queue record and its key.
    value: Vec<u8>,
    records: RecordBuffers,
    /// Lent to `NextSeq` to hand out sequence numbers: only the lock's holder has it.
    token: SeqToken,
    unwritten: Option<Unwritten>,
    /// The event loop whose pass holds the lock for its commit rounds (`CommitRounds`): events
    /// for it are kept in `completed` for its `Pass` to hand over, not sent to its mailbox.
    own: Option<u32>,
    completed: Vec<Event>,
}

impl CommitState {
    pub(super) fn new(space: FreeSpace) -> CommitState {
        CommitState {
            carry: Vec::new(),
            space,
            value: Vec::new(),
            records: RecordBuffers::default(),
            token: SeqToken::new(),
            unwritten: None,
            own: None,
            completed: Vec::new(),
        }
    }

    /// Under `--cluster`, on a step-down: the removals kept for the next commit are of
    /// messages in queues being forgotten (they come back, as after a crash).
    pub(super) fn forget_deferred(&mut self) {
        debug_assert!(
            self.unwritten.is_none(),
            "only rounds hold published writes"
        );
        self.carry.clear();
    }
}

/// Keeps removals that no one waits for to be written by the next commit; false if too
/// many are kept already (they are then due now).
/// `ops` is left empty, its allocation kept for the caller's next ones.
pub(super) fn defer(engine: &Engine, ops: &mut Vec<Op>) -> bool {
    let mut state = engine.committer.lock();
    for op in ops.drain(..) {
        super::ops::push(&mut state.carry, op);
    }
    state.carry.len() < MAX_DEFERRED
}

/// Stages, writes and publishes `ops` (after any removals left from the last commit), and
/// answers their writers. Callers collect the ops of one event-loop pass and commit them
/// together; the lock keeps every write in one order.
pub(super) fn commit_ops(engine: &Engine, ops: Vec<Op>) {
    let mut state = engine.committer.lock();
    let mut all = std::mem::take(&mut state.carry);
    all.extend(ops);
    if all.is_empty() {
        return;
    }
    if engine.cluster.as_ref().is_some_and(|c| !c.serving()) {
        // This node stepped down since `Engine::submit` looked (it does so under this lock).
        super::refuse(engine, all, Error::NoLeader);
        return;
    }
    Committer {
        engine,
        state: &mut state,
    }
    .apply(all, false);
}

struct Committer<'a> {
    engine: &'a Engine,
    state: &'a mut CommitState,
}

impl<'a> Committer<'a> {
    /// Applies the ops in order. `early`: the batch may be published ahead of its write (see
    /// `CommitRounds`) if it qualifies.
    fn apply(&mut self, ops: Vec<Op>, early: bool) {
        // Sized for what the ops write, so that the batch is not copied as it grows.
        let estimate: usize = ops
            .iter()
            .map(|op| match op {
                Op::Put { body, .. } => body.len() + message::HEADER_LEN + 48,
                _ => 48,
            })
            .sum();
        let mut puts = PutContext {
            enqueued_at: 0,
            enough_space: true,
            last_queue: None,
        };
        if ops.iter().any(|op| matches!(op, Op::Put { .. })) {
            puts.enqueued_at = message::now_ms();
            puts.enough_space = self.state.space.enough();
            let below = !puts.enough_space;
            self.engine.metrics.below_reserve.store(below, Relaxed);
        }
        // Written together with what earlier rounds published ahead of their write, if any.
        let write = match &mut self.state.unwritten {
            Some(unwritten) => std::mem::take(&mut unwritten.write),
            None => WriteBatch::with_capacity_bytes(estimate + 256),
        };
        let mut batch = Batch::new(write);
        for op in ops {
            match op {
                Op::Put {
                    queue,
                    flags,
                    expires_at,
                    body,
                    reply_to,
                } => {
                    let header = Header {
                        flags,
                        expires_at,
                        enqueued_at: puts.enqueued_at,
                    };
                    self.stage_put(&mut batch, &mut puts, &queue, header, body, reply_to);
                }
                Op::Remove { queue, seq } => {
                    let id = queue.lock().id();
                    let messages = self.engine.messages();
                    batch.write.delete_cf(messages, store::message_key(id, seq));
                    batch.touch(&queue, id);
                }
                Op::SaveRecord { queue } => {
                    let id = queue.lock().id();
                    batch.touch(&queue, id);
                }
                Op::DeleteQueue { name, reply_to } => {
                    // Each commit answers its own writers, failed or not.
                    let _ = self.commit(std::mem::take(&mut batch));
                    let (outcome, durable_at) = removal::delete_queue(self, &name);
                    self.answer(reply_to, outcome, durable_at);
                }
                Op::Flush { name, reply_to } => {
                    let _ = self.commit(std::mem::take(&mut batch));
                    let (outcome, durable_at) = removal::flush(self, name.as_deref());
                    self.answer(reply_to, outcome, durable_at);
                }
            }
        }
        if early && rounds::may_publish_early(self, &batch) {
            rounds::publish_early(self, batch);
        } else {
            let _ = self.commit(batch);
        }
    }

    /// Makes a batch's messages visible, and hands them to waiting readers. `point`: that of
    /// the batch's write; `written`: whether it is made already (else it is to come in these
    /// rounds).
    fn publish(
        &mut self,
        touched: &mut Touched,
        q: &mut QueueState,
        point: SyncPoint,
        written: bool,
        synced: SyncPoint,
        outbox: &mut Outbox,
    ) {
        let next_unclaimed = touched.next_unclaimed_after(q);
        q.record_written_at(point);
        q.publish(
            next_unclaimed,
            written,
            touched.added_bytes,
            touched.fresh.take(),
        );
        if touched.has_puts {
            q.written_at(point, synced);
            super::reading::serve_waiters(
                self.engine,
                &touched.queue,
                q,
                &mut self.state.carry,
                outbox,
            );
        }
    }

    /// Adds every touched queue's record (and the next queue id, if a queue is new) to the
    /// batch. Whether the batch holds puts.
    fn add_records(&mut self, batch: &mut Batch) -> bool {
        let mut has_puts = false;
        let mut new_queues = false;
        for touched in batch.touched.values() {
            let state = &touched.queue;
            let mut q = state.lock();
            if q.is_retired() {
                continue;
            }
            new_queues |= !q.is_persisted();
            has_puts |= touched.has_puts;
            let mut record = QueueMeta::of(&q, q.next_seq());
            record.next_unclaimed = touched.next_unclaimed_after(&q);
            record.counters.bytes += touched.added_bytes;
            let buffers = &mut self.state.records;
            stage_record(
                self.engine,
                &mut batch.write,
                state,
                &mut q,
                record,
                buffers,
            );
        }
        if new_queues {
            records::stage_next_id(self.engine, &mut batch.write);
        }
        has_puts
    }

    fn answer(&mut self, to: ConnRef, outcome: Outcome, durable_at: SyncPoint) {
        let mut outbox = self.outbox();
        outbox.complete(to, outcome, durable_at);
        self.keep(outbox);
    }

    /// An outbox for answering this commit's writers and readers: events for the loop whose
    /// rounds hold the lock are kept for its `Pass` (see `CommitState::own`).
    fn outbox(&mut self) -> Outbox<'a> {
        let engine: &'a Engine = self.engine;
        let direct = std::mem::take(&mut self.state.completed);
        Outbox::keeping_own(&engine.mailboxes, self.state.own, direct)
    }

    /// Keeps what `outbox` holds for the own loop, and sends the rest.
    fn keep(&mut self, outbox: Outbox<'_>) {
        self.state.completed = outbox.into_direct();
    }

    /// Stages a put to `name` and a copy to each of its fan-out queues (`name+<child>`).
    fn stage_put(
        &mut self,
        batch: &mut Batch,
        puts: &mut PutContext,
        name: &[u8],
        header: Header,
        body: Vec<u8>,
        reply_to: ConnRef,
    ) {
        if !puts.enough_space {
            batch.writers.push((reply_to, Some(Error::DiskFull)));
            return;
        }
        let (id, seq) = match self.stage_one(batch, puts, name, header, &body) {
            Ok(staged) => staged,
            Err(e) => {
                batch.writers.push((reply_to, Some(e)));
                return;
            }
        };
        batch.writers.push((reply_to, None));
        for child in self.engine.registry.fanout_children(name) {
            if let Err(e) = self.stage_one(batch, puts, &child, header, &body) {
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
        // The body moves into the queue's recent cache (unless a part was committed already).
        if let Some(touched) = batch.touched.get_mut(&id) {
            let budget = &self.engine.caches.recent;
            let fresh = touched.fresh.get_or_insert_with(|| Fresh::new(budget));
            fresh.keep(seq, header, body);
        }
    }

    /// Commits the staged writes now, keeping the writers to answer with the rest of the batch
    /// (marked failed if this part did not commit).
    fn commit_part(&mut self, batch: &mut Batch) {
        let mut writers = std::mem::take(&mut batch.writers);
        match self.commit(std::mem::take(batch)) {
            Ok(point) => batch.written = batch.written.max(point),
            Err(()) => {
                for (_, error) in &mut writers {
                    error.get_or_insert(Error::Storage);
                }
            }
        }
        batch.writers = writers;
    }

    /// Stages one message: assigns its sequence number and adds it to the batch, after making
    /// room under the queue's limits. Its queue's id and its sequence number.
    fn stage_one(
        &mut self,
        batch: &mut Batch,
        puts: &mut PutContext,
        name: &[u8],
        header: Header,
        body: &[u8],
    ) -> Result<(u64, u64), Error> {
        let len = body.len() as u64;
        let (queue, id, seq) = loop {
            let queue = match puts.last_queue.take() {
                Some(last) if **last.lock().name() == *name => last,
                _ => super::fanout::queue_for_put(self.engine, name)?,
            };
            let mut q = queue.lock();
            if q.is_retired() {
                // Unloaded, or forgotten as an unused ghost, since the lookup: look again.
                continue;
            }
            self.engine.registry.touch(&queue, &mut q);
            let admitted = match self.engine.registry.count_new(&mut q) {
                Ok(()) => limits::make_room(self, batch, &queue, &mut q, len),
                Err(e) => Err(e),
            };
            if let Err(e) = admitted {
                if q.is_ghost() {
                    // Created for this put, which was refused: it leaves nothing behind.
                    drop(q);
                    self.engine.registry.forget_if_unused(name);
                }
                return Err(e);
            }
            if header.expires_at != 0 {
                q.note_expiry(header.expires_at);
            }
            let seq = q.assign_seq(&mut self.state.token);
            let id = q.id();
            drop(q);
            puts.last_queue = Some(queue.clone());
            break (queue, id, seq);
        };
        let value = &mut self.state.value;
        message::encode_into(value, &header, body);
        batch
            .write
            .put_cf(self.engine.messages(), store::message_key(id, seq), &*value);
        if value.capacity() > REUSED_VALUE_MAX {
            // A big message passed through: do not keep its buffer.
            *value = Vec::new();
        }
        let touched = batch.touch(&queue, id);
        touched.staged.push_back((seq, len));
        touched.added_bytes += len;
        touched.has_puts = true;
        Ok((id, seq))
    }

    /// Writes the batch with every touched queue's record (and whatever earlier rounds published
    /// ahead of its write), then publishes and answers. The point the writers' replies wait
    /// for, or Err if the write failed (and nothing of it happened).
    fn commit(&mut self, mut batch: Batch) -> Result<SyncPoint, ()> {
        if batch.touched.is_empty() && self.state.unwritten.is_none() {
            let mut outbox = self.outbox();
            for (writer, error) in batch.writers {
                // Nothing left to write: writers without an error had theirs committed by an
                // earlier part of the batch (`commit_part`).
                let outcome = error.map_or(Outcome::Stored, Outcome::Failed);
                let durable_at = if error.is_none() {
                    batch.written
                } else {
                    SyncPoint::NONE
                };
                outbox.complete(writer, outcome, durable_at);
            }
            self.keep(outbox);
            return Ok(batch.written);
        }
        let mut has_puts = self.add_records(&mut batch);
        let unwritten = self.state.unwritten.take();
        has_puts |= unwritten.as_ref().is_some_and(|u| u.wanted);
        // Only puts and flushes are answered after a sync; removals of consumed messages may
        // come back after a crash (at-least-once), so they wait for no fsync of their own.
        let result = self.engine.write(batch.write, has_puts || batch.wanted);
        self.engine.metrics.committed(batch.writers.len() as u64);
        if let Err(e) = &result {
            if unwritten.is_some() {
                fatal_write_failure(e);
            }
            log::error!("commit of {} writes failed: {e}", batch.writers.len());
        }
        let synced = self.engine.synced();
        let mut outbox = self.outbox();
        // Under --cluster the write is a proposal: in RocksDB once applied.
        let written = self.engine.cluster.is_none();
        let mut published = Vec::new();
        for touched in batch.touched.values_mut() {
            let queue = touched.queue.clone();
            let mut q = queue.lock();
            if let Ok(point) = result {
                self.publish(touched, &mut q, point, written, synced, &mut outbox);
                if !written {
                    published.push((queue.clone(), q.tail()));
                }
            } else {
                // Nothing of the batch happened: what it discarded is back in the queue.
                q.commit_failed(
                    &mut self.state.token,
                    &touched.discarded,
                    touched.dropped_staged,
                );
            }
        }
        if let (Some(cluster), Ok(point)) = (&self.engine.cluster, &result) {
            cluster.published(*point, published);
        }
        if let Some(unwritten) = unwritten {
            rounds::written_out(self, unwritten.queues);
        }
        for (writer, error) in batch.writers {
            let (outcome, durable_at) = match (error, &result) {
                (Some(e), _) => (Outcome::Failed(e), SyncPoint::NONE),
                (None, Ok(point)) => (Outcome::Stored, *point),
                (None, Err(_)) => (Outcome::Failed(Error::Storage), SyncPoint::NONE),
            };
            outbox.complete(writer, outcome, durable_at);
        }
        self.keep(outbox);
        result.map_err(|_| ())
    }
}
