//! The queue engine: every queue's state, on RocksDB, behind a small API that knows no wire format.
//!
//! Reads happen on the caller's thread: a read claims the head sequence number under the queue's
//! lock and takes that message from the queue's recent cache (`recent`) or
//! fetches that one key (no scans, so the cost does not grow with what was consumed before).
//! Writes are committed on the caller's thread too, under one lock (`commit`): each event-loop
//! pass stages its requests, assigns sequence numbers and writes one WriteBatch without an fsync,
//! then makes the messages visible, answers the writers and hands messages to blocked readers.
//! Every reply that depends on a write carries its `SyncPoint`; the syncer thread (`durability`)
//! fsyncs and tells the loops when to send them. Removals of consumed messages need no sync:
//! after a crash a message may come back, but it never vanishes.
//!
//! Queues live on disk and are loaded into memory while used (`registry`): their records are
//! enough to take them up again, and the background work (`reclaim`, `expiry`) follows what
//! changed, not how many queues exist.
//!
//! `impl Engine` below is the engine's whole API; each concern's module (`registry`, `reading`,
//! `commit`, `durability`, `pass`, `background`, `expiry`, `unload`, `reclaim`, `fanout`,
//! `metrics`) holds plain functions over an `&Engine`.
//!
//! Words, each with one meaning here:
//! - **put**: append a message (memcache `set`, mqmq `Put`); **take**: remove, open or peek at
//!   the oldest one (memcache `get`, mqmq `Get`); **open** / **confirm** / **give back**: a
//!   reliable read (Kestrel's `/open`, `/close`, `/abort`).
//! - **head**: the oldest message not yet taken; **tail**: the sequence number after the newest
//!   published message; **recent cache**: the copies of committed messages a queue keeps in
//!   memory until read (`recent`).
//! - **commit**: stage and write a WriteBatch under the commit lock (no fsync); **sync**: fsync
//!   the WAL (`durability`, the only place that does); **durable**: synced, so a reply that
//!   depends on the write may be sent (`SyncPoint`).
//! - **pass**: one wake-up of an event loop, whose writes go through one `Pass`; **rounds**: the
//!   pass's commits under one hold of the commit lock.
//! - **flush**: empty a queue (memcache `flush_all`); fsyncs are *syncs*, RocksDB memtable
//!   flushes are *memtable flushes*.
//! - **delete**: remove a queue; **remove**: delete one consumed message's key; **reclaim**:
//!   give consumed messages' disk space back (`reclaim`).
//! - **loaded** / **unloaded**: a queue's state in memory, or only its record on disk
//!   (`registry`); a **ghost**: a queue only a blocked read named, forgotten when it ends.

mod background;
mod cluster;
mod commit;
mod conn_ref;
mod durability;
mod events;
mod expiry;
mod fanout;
mod listing;
mod message;
mod metrics;
mod ops;
mod pass;
mod queue;
mod reading;
mod recent;
mod reclaim;
mod registry;
pub mod repair;
mod sequence;
mod space;
mod store;
#[cfg(test)]
mod tests;
mod unload;
mod wal_prime;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

pub use cluster::{DamageReport, Proposer};
use commit::CommitState;
pub use conn_ref::ConnRef;
use durability::Durability;
pub use durability::SyncPoint;
use events::Outbox;
pub use events::{Event, Mailbox, Outcome, QueueHandle, Taken, Wake};
pub use message::now_ms;
pub use metrics::{EngineSnapshot, HistogramSnapshot};
use ops::Op;
pub use pass::Pass;
pub use queue::TakeMode;
use queue::{QueueState, Waiter};
use recent::CacheBudgets;
use registry::Registry;
pub use space::free_bytes;
use store::{Db, StoreOptions};
pub use store::{MemoryBudget, RAFT_LOG_CF};

/// When a committed write is on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// fsync before acknowledging (the default).
    Always,
    /// Acknowledge once in the WAL; fsync every so often.
    Interval(Duration),
    /// Acknowledge once in the WAL; let the OS decide.
    Never,
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub sync: SyncPolicy,
    pub memory: MemoryBudget,
    pub limits: QueueLimits,
    /// New messages are refused while the data directory's file system has less free space
    /// than this, so RocksDB never meets a full disk (it cannot recover from one by itself)
    /// and reads, deletes and flushes, which free space, keep working.
    pub min_free_bytes: u64,
    /// Most fan-out queues (`<queue>+<child>`) one queue may have: every put to a queue is
    /// copied to each of them, so this bounds what one put costs.
    pub max_fanout: usize,
    /// Under `--sync always`, start on a reused WAL file, whose fdatasyncs are cheaper
    /// (`wal_prime`).
    pub prime_wal: bool,
    /// Most queues that may exist (`--max-queues`); a put that would create one more is
    /// refused with `Error::TooManyQueues`.
    pub max_queues: Option<u64>,
    /// Memory for the state of loaded queues (`--queue-memory`): past it, idle queues are
    /// unloaded, least recently used first (`registry`).
    pub queue_memory: usize,
    /// A member of a replicated group (`--cluster`, see `cluster`): writes are proposals, and
    /// commands are served only while this node is the established leader.
    pub cluster: bool,
}

/// Per-queue limits, the same for every queue.
#[derive(Clone, Copy, Debug, Default)]
pub struct QueueLimits {
    /// Most messages a queue holds (open ones included).
    pub max_items: Option<u64>,
    /// Most body bytes a queue holds (open ones included).
    pub max_bytes: Option<u64>,
    /// When full, drop the oldest messages to make room instead of refusing the new one.
    pub discard_old: bool,
}

/// Why the engine refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// RocksDB failed (disk full, I/O error).
    Storage,
    /// The queue is at a limit.
    QueueFull,
    /// The engine is stopping.
    ShuttingDown,
    /// Free disk space is below the reserve: no new messages until some is freed.
    DiskFull,
    /// The put would create one more fan-out queue than `max_fanout` allows.
    FanoutLimit,
    /// The next message, of this many bytes, is longer than the reader has room for
    /// (`Engine::take`'s `room`): it was left in its queue. The reader waits for room and asks
    /// again.
    NoRoom(usize),
    /// The put would create one more queue than `--max-queues` allows.
    TooManyQueues,
    /// Under `--cluster`, this node is not the group's established leader (`cluster`).
    NoLeader,
}

/// What one queue looks like now, for stats.
#[derive(Clone, Debug)]
pub struct QueueStats {
    pub name: Arc<[u8]>,
    pub items: u64,
    pub bytes: u64,
    pub enqueued: u64,
    pub removed: u64,
    pub expired: u64,
    pub discarded: u64,
    pub flushes: u64,
    pub waiters: u64,
    pub open: u64,
    /// Milliseconds the head message has waited, 0 if empty (only when asked for).
    pub age_ms: u64,
}

type QueueRef = Arc<Mutex<QueueState>>;

/// Writes, removals and record updates that one caller (an event-loop pass, a sweep round)
/// collected and has not committed yet: `Engine::submit` commits them together.
#[derive(Default)]
pub struct Uncommitted {
    ops: Vec<Op>,
}

impl Uncommitted {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Whether someone waits for these to be committed (a put, delete or flush to answer).
    pub fn awaited(&self) -> bool {
        self.ops.iter().any(|op| op.reply_to().is_some())
    }

    fn push(&mut self, op: Op) {
        ops::push(&mut self.ops, op);
    }
}

pub struct Engine {
    db: Arc<Db>,
    config: EngineConfig,
    /// Which queues exist and which are loaded; its module states the engine's lock order.
    registry: Registry,
    /// The commit lock: whoever commits holds it, so writes keep one order.
    committer: Mutex<CommitState>,
    durability: Durability,
    /// Under `--cluster` (see `cluster`).
    cluster: Option<cluster::Cluster>,
    mailboxes: Vec<Mailbox>,
    stopping: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
    metrics: metrics::EngineMetrics,
    /// Tests set this to make every RocksDB write fail, as a full or broken disk would.
    #[cfg(test)]
    fail_writes: AtomicBool,
    /// Ids of queues deleted since the reclaimer last looked, whose key ranges it compacts.
    deleted_ids: Mutex<Vec<u64>>,
    /// Queues whose head moved since the reclaimer last looked (`reclaim`).
    reclaim_watch: Mutex<Vec<QueueRef>>,
    /// What all queues' recent caches may hold (`recent`).
    caches: CacheBudgets,
}

impl Engine {
    /// Opens the data directory, counts its queues (loading none: see `registry`), and starts
    /// the engine's threads. Events for connections go to `mailboxes[ConnRef::mailbox]`.
    pub fn start(config: EngineConfig, mailboxes: Vec<Mailbox>) -> Result<Arc<Engine>, String> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| format!("cannot create {}: {e}", config.data_dir.display()))?;
        let mut options = StoreOptions::new(config.memory);
        let recycle_wal = reclaim::recycle_wal(&config.data_dir, config.min_free_bytes);
        if !recycle_wal {
            options.db.set_recycle_log_file_num(0);
        }
        if config.sync == SyncPolicy::Always {
            // RocksDB keeps new WAL records in its own buffer until the syncer writes and
            // fsyncs them in one call (`durability::sync_when_wanted`), instead of a write()
            // per commit from the event loops: 15% of their CPU on unpipelined sets. Nothing is
            // acknowledged before that fsync anyway.
            options.db.set_manual_wal_flush(true);
        }
        let recovered = store::open(&config.data_dir, &options)
            .map_err(|e| format!("cannot open {}: {e}", config.data_dir.display()))?;
        if config.prime_wal && recycle_wal && config.sync == SyncPolicy::Always {
            wal_prime::prime(&recovered.db, config.memory).map_err(|e| {
                format!("cannot prime the WAL in {}: {e}", config.data_dir.display())
            })?;
        }
        log::info!(
            "opened {} with {} queues",
            config.data_dir.display(),
            recovered.queues
        );
        let caches = CacheBudgets::new();
        let registry = Registry::new(
            recovered.queues,
            recovered.next_queue_id,
            recovered.fanout,
            config.max_queues,
            config.queue_memory,
            caches.clone(),
        );
        let space = space::FreeSpace::new(config.data_dir.clone(), config.min_free_bytes);
        let engine = Arc::new(Engine {
            db: recovered.db,
            durability: Durability::new(config.sync, config.cluster),
            cluster: config.cluster.then(cluster::Cluster::default),
            config,
            registry,
            committer: Mutex::new(CommitState::new(space)),
            mailboxes,
            stopping: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            metrics: Default::default(),
            #[cfg(test)]
            fail_writes: AtomicBool::new(false),
            deleted_ids: Mutex::new(Vec::new()),
            reclaim_watch: Mutex::new(Vec::new()),
            caches,
        });
        engine.spawn("upkeep", |engine| {
            background::upkeep_every(&engine, background::UPKEEP_EVERY)
        })?;
        engine.spawn("reclaim", |engine| {
            reclaim::reclaim_every(&engine, reclaim::RECLAIM_EVERY)
        })?;
        match engine.config.sync {
            SyncPolicy::Always => {
                engine.spawn("wal-sync", |engine| durability::sync_when_wanted(&engine))?
            }
            SyncPolicy::Interval(every) => engine.spawn("wal-sync", move |engine| {
                durability::sync_every(&engine, every)
            })?,
            SyncPolicy::Never => {}
        }
        Ok(engine)
    }

    /// The engine's RocksDB, for the replicated log (`crate::replication`) to live in too: one
    /// WAL, one fsync for both.
    pub fn database(&self) -> Arc<rocksdb::DB> {
        self.db.clone()
    }

    /// Whether this database's column families have the ids every node's must have (a
    /// replicated entry names them by id): an error saying which differ if not.
    pub fn check_column_family_ids(&self) -> Result<(), String> {
        let ids = store::column_family_ids(&self.db);
        let expected: Vec<Option<u32>> = store::EXPECTED_CF_IDS.iter().map(|&i| Some(i)).collect();
        if ids == expected {
            Ok(())
        } else {
            Err(format!(
                "column family ids {ids:?} in {}, not {expected:?} (messages, meta, raft_log): \
                 this directory cannot hold a replica",
                self.config.data_dir.display()
            ))
        }
    }

    /// Under `--cluster`: the raft thread made writes of its own up to its number `number`,
    /// and wants them fsynced; the syncer reports it to `report_wal_syncs`' function.
    pub fn request_wal_sync(&self, number: u64) {
        self.durability.request_raft_sync(number);
    }

    /// Under `--cluster`: fsyncs the WAL on the calling thread for the raft thread's write
    /// `number`, and returns it; `None` when an fsync is running, which the syncer follows with
    /// one covering `number`, reported as `request_wal_sync`'s are.
    pub fn sync_wal_here(&self, number: u64) -> Option<u64> {
        durability::sync_raft_here(self, number)
    }

    /// Under `--cluster`: `report(what)` runs when a read finds this node's copy damaged
    /// (RocksDB's corruption error `what`), on the reading thread.
    pub fn report_damage_to(&self, report: DamageReport) {
        cluster::report_damage_to(self, report);
    }

    /// Under `--cluster`: `report(n)` runs after each fsync covering the raft thread's writes
    /// up to its number `n` (`request_wal_sync`), on the fsyncing thread.
    pub fn report_wal_syncs(&self, report: impl Fn(u64) + Send + Sync + 'static) {
        self.durability.report_raft_syncs_to(Box::new(report));
    }

    /// Every write up to the returned point is on disk: replies held for a point up to it may
    /// be sent.
    pub fn synced(&self) -> SyncPoint {
        self.durability.synced()
    }

    /// Opens a pass of the event loop whose mailbox is `mailboxes[own]`: every write the
    /// pass's commands collect goes through it (see `Pass`).
    pub fn pass(&self, own: u32) -> Pass<'_> {
        pass::begin(self, own)
    }

    /// The engine's monitoring numbers now (see `metrics`).
    pub fn metrics(&self) -> EngineSnapshot {
        metrics::snapshot(self)
    }

    /// Reads and writes RocksDB failed since the start, and its failed background flushes and
    /// compactions (also in `metrics`).
    pub fn storage_errors(&self) -> u64 {
        metrics::storage_errors(self)
    }

    /// Starts one of the engine's own threads; `shutdown` joins it.
    fn spawn(
        self: &Arc<Self>,
        name: &str,
        work: impl FnOnce(Arc<Engine>) + Send + 'static,
    ) -> Result<(), String> {
        let engine = self.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || work(engine))
            .map_err(|e| e.to_string())?;
        self.threads.lock().push(handle);
        Ok(())
    }

    /// Refuses writes from now on (`ShuttingDown`), as `shutdown` does first.
    pub fn stop_taking_writes(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Stops the engine's threads and syncs the WAL. Writes submitted after this are refused
    /// with `ShuttingDown`.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        self.durability.stop();
        for thread in self.threads.lock().drain(..) {
            let _ = thread.join();
        }
        if let Err(e) = durability::sync_wal(self, durability::SyncFor::Shutdown) {
            log::error!("final WAL sync failed: {e}");
        }
        if let Err(e) = store::flush_memtables(&self.db) {
            log::warn!("final flush failed (the next start-up replays the WAL): {e}");
        }
    }

    /// Commits what `uncommitted` collected: when this returns, the writers' `Completed` events
    /// (and messages for blocked readers) are in their mailboxes. Removals of consumed messages
    /// and records of opened ones, which no one waits for, are only deferred: the next commit
    /// (anyone's) writes them first, or `commit_deferred`, so a pass of reads alone costs no
    /// RocksDB write of its own.
    fn submit(&self, uncommitted: &mut Uncommitted) {
        let awaited = uncommitted.awaited();
        if let Some(error) = self.refusing() {
            refuse(self, std::mem::take(&mut uncommitted.ops), error);
            return;
        }
        if awaited {
            commit::commit_ops(self, std::mem::take(&mut uncommitted.ops));
        } else if !commit::defer(self, &mut uncommitted.ops) {
            // Too many deferred already: write them now.
            commit::commit_ops(self, Vec::new());
        }
    }

    /// Writes the deferred removals now.
    fn commit_deferred(&self) {
        if self.refusing().is_none() {
            commit::commit_ops(self, Vec::new());
        }
    }

    /// Why no write is taken now, if none is: the engine stops, or (under `--cluster`) this
    /// node is not the established leader.
    fn refusing(&self) -> Option<Error> {
        if self.stopping.load(Ordering::Acquire) {
            Some(Error::ShuttingDown)
        } else if self.cluster.as_ref().is_some_and(|c| !c.serving()) {
            Some(Error::NoLeader)
        } else {
            None
        }
    }

    /// Whether this engine serves commands: always, but under `--cluster` only while its node
    /// is the established leader (`cluster`).
    pub fn serving(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.serving())
    }

    /// How many times this node stopped leading (under `--cluster`; always 0 otherwise). When
    /// it changes, held replies and reads against the state of before must not be answered:
    /// read it after `synced`, and trust that point only if this is unchanged (see `cluster`).
    pub fn step_downs(&self) -> u64 {
        self.cluster
            .as_ref()
            .map_or(0, cluster::Cluster::step_downs)
    }

    /// Under `--cluster`: where `write` sends its batches (once, before the node can lead).
    pub fn propose_to(&self, proposer: Proposer) {
        cluster::propose_to(self, proposer);
    }

    /// Under `--cluster`: every proposal up to `point` is committed and applied here.
    pub fn committed(&self, point: SyncPoint) {
        cluster::committed(self, point);
    }

    /// Under `--cluster`: a proposal was not committed, or may not be.
    pub fn proposal_lost(&self, point: SyncPoint) {
        cluster::proposal_lost(self, point);
    }

    /// Under `--cluster`: this node became the established leader (`true`), or stopped being
    /// it and steps down (see `cluster`). Becoming it again later serves again.
    pub fn leading(self: &Arc<Self>, established: bool) {
        cluster::leading(self, established);
    }

    /// Under `--cluster`: RocksDB's state was replaced by a snapshot's (on a follower): what
    /// memory holds of the queues is forgotten, and they are counted again on a thread of
    /// their own, as a new leader counts them.
    pub fn restored(self: &Arc<Self>) {
        cluster::restored(self);
    }

    /// Commits now, deferred removals included (for tests, which look at what is on disk).
    #[cfg(test)]
    fn submit_now(&self, uncommitted: &mut Uncommitted) {
        self.submit(uncommitted);
        self.commit_deferred();
    }

    /// Appends a message; `reply_to` gets `Completed` once it is committed, with the point its
    /// reply waits for.
    pub fn put(
        &self,
        queue: &[u8],
        flags: u32,
        expires_at: u64,
        body: Vec<u8>,
        reply_to: ConnRef,
        uncommitted: &mut Uncommitted,
    ) {
        uncommitted.ops.push(Op::Put {
            queue: ops::QueueName::from_slice(queue),
            flags,
            expires_at,
            body,
            reply_to,
        });
    }

    /// Takes (or opens, or peeks at) the next message of `queue`, if its body is at most `room`
    /// bytes (else `Error::NoRoom`, and nothing is taken). If there is none and `wait` is given,
    /// registers it as a waiter: it will get an `Event::Delivered` when a message of at most
    /// `room` bytes arrives, unless `cancel_wait` removes it first.
    pub fn take(
        &self,
        queue: &[u8],
        mode: TakeMode,
        wait: Option<(ConnRef, u64)>,
        room: usize,
        uncommitted: &mut Uncommitted,
    ) -> Result<Option<Taken>, Error> {
        if !self.serving() {
            return Err(Error::NoLeader);
        }
        let state = match (self.lookup(queue)?, wait) {
            (Some(state), _) => state,
            (None, None) => return Ok(None),
            (None, Some(_)) => self.lookup_or_create(queue)?,
        };
        self.take_from(&state, mode, wait, room, uncommitted)
    }

    /// `take` once the queue's handle is looked up. Between the look-up and the lock the queue
    /// may have been deleted, unloaded or forgotten as an unused ghost: the handle is then
    /// retired, and the read goes to the queue that has the name now, so that a waiter never
    /// lands on a dead queue (where no message would reach it and `cancel_wait`, which looks
    /// queues up by name, would not find it).
    fn take_from(
        &self,
        state: &QueueRef,
        mode: TakeMode,
        wait: Option<(ConnRef, u64)>,
        room: usize,
        uncommitted: &mut Uncommitted,
    ) -> Result<Option<Taken>, Error> {
        let mut state = state.clone();
        loop {
            let mut q = state.lock();
            if q.is_retired() {
                if !self.serving() {
                    // Retired by a step-down (`cluster`): nothing is loaded until it leads.
                    return Err(Error::NoLeader);
                }
                let name = q.name().clone();
                drop(q);
                state = match (self.lookup(&name)?, wait) {
                    (Some(successor), _) => successor,
                    (None, None) => return Ok(None),
                    (None, Some(_)) => self.lookup_or_create(&name)?,
                };
                continue;
            }
            self.registry.touch(&state, &mut q);
            let now = message::now_ms;
            let taken = reading::take_locked(self, &state, &mut q, mode, now, uncommitted, room)?;
            if taken.is_none() {
                if let Some((conn, wait_id)) = wait {
                    q.add_waiter(Waiter {
                        conn,
                        wait_id,
                        mode,
                        room,
                    });
                }
            }
            return Ok(taken);
        }
    }

    /// Withdraws a waiter after its timeout. False if a message was already handed to it: the
    /// `Delivered` event is on its way and must be handled. A queue that only this read named
    /// (a ghost) is forgotten with it (see `Registry::forget_if_unused`).
    pub fn cancel_wait(&self, queue: &[u8], conn: ConnRef, wait_id: u64) -> bool {
        // A queue someone waits on stays loaded.
        let cancelled = match self.registry.lookup_loaded(queue) {
            Some(state) => {
                let mut q = state.lock();
                self.registry.touch(&state, &mut q);
                q.cancel_wait(wait_id, conn)
            }
            None => true,
        };
        if cancelled {
            self.registry.forget_if_unused(queue);
        }
        cancelled
    }

    /// Confirms open messages: they are removed for good.
    pub fn confirm(&self, queue: &QueueHandle, seqs: &[u64], uncommitted: &mut Uncommitted) {
        let state = &queue.0;
        let mut q = state.lock();
        if q.is_retired() {
            return;
        }
        self.registry.touch(state, &mut q);
        for seq in seqs {
            if q.confirm(*seq).is_some() {
                uncommitted.ops.push(Op::Remove {
                    queue: state.clone(),
                    seq: *seq,
                });
            }
        }
    }

    /// Gives open messages back to the head of their queue, and serves any waiting reader.
    pub fn give_back(&self, queue: &QueueHandle, seqs: &[u64], uncommitted: &mut Uncommitted) {
        let state = &queue.0;
        let mut q = state.lock();
        if q.is_retired() || q.give_back(seqs) == 0 {
            return;
        }
        self.registry.touch(state, &mut q);
        let mut outbox = Outbox::new(&self.mailboxes);
        reading::serve_waiters(self, state, &mut q, &mut uncommitted.ops, &mut outbox);
    }

    /// Removes a queue and its messages; `reply_to` gets `Deleted` or `NotFound`.
    pub fn delete_queue(&self, queue: &[u8], reply_to: ConnRef, uncommitted: &mut Uncommitted) {
        uncommitted.ops.push(Op::DeleteQueue {
            name: queue.to_vec(),
            reply_to,
        });
    }

    /// Empties a queue (`None`: every queue); `reply_to` gets `Flushed`.
    pub fn flush(&self, queue: Option<&[u8]>, reply_to: ConnRef, uncommitted: &mut Uncommitted) {
        uncommitted.ops.push(Op::Flush {
            name: queue.map(<[u8]>::to_vec),
            reply_to,
        });
    }

    /// Every queue's counters, sorted by name: the loaded ones from memory, the others from
    /// their records. `with_age` reads each head message's timestamp.
    pub fn stats(&self, with_age: bool) -> Vec<QueueStats> {
        listing::stats(self, with_age)
    }

    /// Milliseconds the head message of `queue` has waited (0 if empty or no such queue), for
    /// a listing made without ages (`stats(false)`) that shows a few queues.
    pub fn head_age(&self, queue: &[u8]) -> u64 {
        listing::age(self, queue)
    }

    /// How many queues exist, loaded or not.
    pub fn queue_count(&self) -> u64 {
        self.registry.count()
    }

    /// How many queues receive a copy of every message put to `queue` (their names are
    /// `queue+<child>`): a put costs that many writes more.
    pub fn fanout_count(&self, queue: &[u8]) -> usize {
        self.registry.fanout_children(queue).len()
    }

    /// Writes `batch` to RocksDB without an fsync (under the commit lock). `wanted`: a reply
    /// will wait for it to be on disk, so the syncer covers it. Returns the write's point.
    fn write(&self, batch: rocksdb::WriteBatch, wanted: bool) -> Result<SyncPoint, String> {
        #[cfg(test)]
        if self.fail_writes.load(Ordering::Relaxed) {
            return Err("write failure injected by a test".into());
        }
        if let Some(cluster) = &self.cluster {
            // A proposal: written on every node once committed (see `cluster`).
            if !cluster.serving() {
                return Err("not the established leader".into());
            }
            let point = self.durability.written(wanted);
            cluster.propose(point, batch.data().to_vec())?;
            return Ok(point);
        }
        self.db.write(batch).map_err(|e| {
            self.metrics.storage_error();
            e.to_string()
        })?;
        Ok(self.durability.written(wanted))
    }

    fn messages(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(store::MESSAGES_CF)
            .expect("messages column family is always opened")
    }

    fn meta(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(store::META_CF)
            .expect("meta column family is always opened")
    }

    /// The queue named `queue`, loaded if it is not in memory; None if it does not exist.
    fn lookup(&self, queue: &[u8]) -> Result<Option<QueueRef>, Error> {
        self.registry
            .lookup(&self.db, queue)
            .inspect_err(|e| self.count_storage_error(e))
    }

    /// The queue's state, loaded, or created in memory (not yet on disk) if it is new.
    fn lookup_or_create(&self, queue: &[u8]) -> Result<QueueRef, Error> {
        self.registry
            .lookup_or_create(&self.db, queue)
            .inspect_err(|e| self.count_storage_error(e))
    }

    /// Counts `e` in the storage errors if RocksDB failed (reading a queue's record).
    fn count_storage_error(&self, e: &Error) {
        if matches!(e, Error::Storage) {
            self.metrics.storage_error();
        }
    }
}

/// No write is taken now (`Engine::refusing`): every writer among `ops` is refused with `error`.
fn refuse(engine: &Engine, ops: Vec<Op>, error: Error) {
    let mut outbox = Outbox::new(&engine.mailboxes);
    for to in ops.iter().filter_map(Op::reply_to) {
        outbox.complete(to, Outcome::Failed(error), SyncPoint::NONE);
    }
}
