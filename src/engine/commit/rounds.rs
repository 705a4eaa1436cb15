//! Commits published ahead of their write: one event-loop pass's commit rounds after its first
//! (see `CommitRounds`). Readers take such messages from the queues' recent caches, and their
//! replies wait for the point the rounds' closing write will have.

use parking_lot::MutexGuard;
use rocksdb::WriteBatch;

use super::{Batch, CommitState, Committer};
use crate::engine::durability::SyncPoint;
use crate::engine::events::{Event, Outbox, Outcome};
use crate::engine::recent::Fresh;
use crate::engine::{Engine, QueueRef, Uncommitted};

/// Messages published ahead of their write by `CommitRounds`, and what that write must do
/// once made. Only ever present while `CommitRounds` hold the commit lock.
pub(super) struct Unwritten {
    /// The writes of the rounds published so far (moved into the batch while one is staged).
    pub(super) write: WriteBatch,
    /// Whether a reply waits for the write (it holds puts).
    pub(super) wanted: bool,
    /// The point the write will have: the replies of everything published wait for it.
    pub(super) point: SyncPoint,
    /// Queues with messages published ahead of the write.
    pub(super) queues: Vec<QueueRef>,
    /// What the published messages cost in their queues' recent caches.
    pub(super) cost: usize,
}

/// One event-loop pass's commits, under the commit lock from the first to the last: the loop
/// commits what its commands wrote, runs what the answers let run (a `get` pipelined behind a
/// `set`), commits what that wrote, and so on. The first commit is written before its messages
/// are published, as every other commit is. Later ones are published at once and written all
/// together by `finish` (or the drop): a pipeline of set/get pairs then costs two RocksDB writes per pass,
/// not one per pair. Their replies wait for that write's point like any other (the commit lock
/// keeps every write from coming first, so the point is known ahead), readers take them from
/// the queues' recent caches, and a failure of that write stops the process, as a failed
/// fsync does: messages already handed to readers cannot be taken back.
pub(in crate::engine) struct CommitRounds<'a> {
    engine: &'a Engine,
    state: MutexGuard<'a, CommitState>,
    first: bool,
}

/// Opens the commit rounds of a pass of event loop `own`: takes the commit lock until `finish`
/// (or the drop). Events for that loop are kept for `take_completed`.
pub(in crate::engine) fn begin_rounds(engine: &Engine, own: u32) -> CommitRounds<'_> {
    let mut state = engine.committer.lock();
    state.own = Some(own);
    CommitRounds {
        engine,
        state,
        first: true,
    }
}

impl CommitRounds<'_> {
    /// Commits `uncommitted` (after any removals left from the last commit) and answers its
    /// writers: their `Completed` events are in their mailboxes when this returns, or, for the
    /// rounds' own loop, kept for `take_completed`.
    pub(in crate::engine) fn commit(&mut self, uncommitted: &mut Uncommitted) {
        let ops = std::mem::take(&mut uncommitted.ops);
        if let Some(error) = self.engine.refusing() {
            crate::engine::refuse(self.engine, ops, error);
            return;
        }
        let mut all = std::mem::take(&mut self.state.carry);
        all.extend(ops);
        if all.is_empty() {
            return;
        }
        let early = !self.first;
        self.first = false;
        Committer {
            engine: self.engine,
            state: &mut self.state,
        }
        .apply(all, early);
    }

    /// Moves the events for the rounds' own loop made so far to the end of `into`.
    pub(in crate::engine) fn take_completed(&mut self, into: &mut Vec<Event>) {
        into.append(&mut self.state.completed);
    }

    /// Writes what was published ahead of its write, and lets go of the commit lock (the drop
    /// finds nothing left to do).
    pub(in crate::engine) fn finish(mut self) {
        self.end();
    }

    /// Writes what the rounds published ahead of their write; the own loop's events not taken
    /// go to its mailbox, as everyone else's do. Does nothing the second time.
    fn end(&mut self) {
        write_unwritten(&mut Committer {
            engine: self.engine,
            state: &mut self.state,
        });
        let own = self.state.own.take();
        let left = std::mem::take(&mut self.state.completed);
        drop(Outbox::keeping_own(&self.engine.mailboxes, own, left));
    }
}

/// Rounds dropped without `finish` (a panic unwinding, say) still write what they published.
impl Drop for CommitRounds<'_> {
    fn drop(&mut self) {
        self.end();
    }
}

/// Whether a batch may be published ahead of its write: only when readers can take every
/// message it adds from memory, for the whole time until the write. So no queue may have
/// dropped messages to make room, every added message must have its copy in the queue's
/// recent cache (not so for fan-out copies, or with the caches' budget spent), which must
/// have room for them (a full tail refuses new messages, and never pushes out what it
/// keeps), and all that the rounds publish must fit in one queue's tail.
pub(super) fn may_publish_early(c: &Committer<'_>, batch: &Batch) -> bool {
    let mut cost = c.state.unwritten.as_ref().map_or(0, |u| u.cost);
    for touched in batch.touched.values() {
        if !touched.discarded.is_empty() || touched.dropped_staged > 0 {
            return false;
        }
        let kept = touched.fresh.as_ref().map_or(0, Fresh::count);
        if kept != touched.staged.len() {
            return false;
        }
        let adds = touched.fresh.as_ref().map_or(0, Fresh::cost);
        if adds > touched.queue.lock().recent().room() {
            return false;
        }
        cost += adds;
    }
    !batch.wanted && cost <= c.engine.caches.recent.per_cache()
}

/// Publishes a batch without writing it: its writes join the rounds' `Unwritten`, and
/// its replies wait for the point that write will have.
pub(super) fn publish_early(c: &mut Committer<'_>, mut batch: Batch) {
    let point = match &c.state.unwritten {
        Some(unwritten) => unwritten.point,
        None => c.engine.durability.next_point(),
    };
    let has_puts = c.add_records(&mut batch);
    c.engine.metrics.committed(batch.writers.len() as u64);
    let synced = c.engine.synced();
    let mut outbox = c.outbox();
    let mut queues = Vec::with_capacity(batch.touched.len());
    let mut cost = 0;
    for touched in batch.touched.values_mut() {
        cost += touched.fresh.as_ref().map_or(0, Fresh::cost);
        let queue = touched.queue.clone();
        let mut q = queue.lock();
        c.publish(touched, &mut q, point, false, synced, &mut outbox);
        drop(q);
        queues.push(queue);
    }
    for (writer, error) in batch.writers {
        let (outcome, durable_at) = match error {
            Some(e) => (Outcome::Failed(e), SyncPoint::NONE),
            None => (Outcome::Stored, point),
        };
        outbox.complete(writer, outcome, durable_at);
    }
    c.keep(outbox);
    match &mut c.state.unwritten {
        Some(unwritten) => {
            unwritten.write = batch.write;
            unwritten.wanted |= has_puts;
            unwritten.queues.extend(queues);
            unwritten.cost += cost;
        }
        None => {
            c.state.unwritten = Some(Unwritten {
                write: batch.write,
                wanted: has_puts,
                point,
                queues,
                cost,
            })
        }
    }
}

/// Writes what the rounds published ahead of its write. A failure stops the process:
/// those messages may be in readers' hands already (their replies held), and the queues
/// cannot be put back as they were; the next start-up recovers what is on disk.
pub(super) fn write_unwritten(c: &mut Committer<'_>) {
    let Some(unwritten) = c.state.unwritten.take() else {
        return;
    };
    match c.engine.write(unwritten.write, unwritten.wanted) {
        Ok(point) => {
            debug_assert_eq!(point, unwritten.point);
            written_out(c, unwritten.queues);
        }
        Err(e) => fatal_write_failure(&e),
    }
}

/// The rounds' published messages are written now: readable from RocksDB too, which
/// may let a waiting reader have one that was given back meanwhile. Under `--cluster` the write
/// was a proposal: readable once applied (`Engine::committed`).
pub(super) fn written_out(c: &mut Committer<'_>, queues: Vec<QueueRef>) {
    if let Some(cluster) = &c.engine.cluster {
        let point = SyncPoint(c.engine.durability.next_point().0 - 1);
        let tails = queues
            .into_iter()
            .map(|queue| {
                let tail = queue.lock().tail();
                (queue, tail)
            })
            .collect();
        cluster.published(point, tails);
        return;
    }
    let mut outbox = c.outbox();
    for queue in queues {
        let mut q = queue.lock();
        q.all_written();
        if !q.waiters().is_empty() {
            crate::engine::reading::serve_waiters(
                c.engine,
                &queue,
                &mut q,
                &mut c.state.carry,
                &mut outbox,
            );
        }
    }
    c.keep(outbox);
}

/// A write of messages published ahead of it failed: see `CommitRounds`.
pub(super) fn fatal_write_failure(error: &str) -> ! {
    log::error!("a write of messages already handed to readers failed, stopping: {error}");
    std::process::exit(1);
}
