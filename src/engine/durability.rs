//! Which writes are on disk. Every RocksDB write the engine makes is numbered, and is made at
//! once without an fsync; under `--sync always` its WAL record waits in RocksDB's buffer, and
//! one syncer thread writes and fsyncs the WAL over and over, each fsync covering every write
//! made before it started. A reply that depends on a write (`STORED` for a put, a message
//! handed to a reader) carries that write's `SyncPoint` and is held by its event loop until
//! `synced()` reaches it. An event loop whose clients all wait, each for one write, fsyncs on
//! its own thread instead (`sync_inline`): nothing could overlap with the syncer's fsync.
//!
//! Every fsync of the WAL goes through `sync_wal` here, whoever asks (the syncer, an event loop,
//! `--sync interval`, the reclaimer before it drops files, shutdown, and under `--cluster` the
//! raft thread, whose log shares the WAL: one fsync covers both), and the only question the
//! rest of the server asks is "is this point durable yet?" (`Durability::synced`). So what
//! "durable" means (fsynced here; under `--cluster`, committed: fsynced on a majority of the
//! group) lives in this file.
//!
//! This is how Redis runs with `appendfsync always`: commands run as soon as they are parsed,
//! replies wait for the fsync. Nothing waits for a disk but the replies, so a pipelined `set`
//! then `get` costs no extra round trip, one fsync covers everything that arrived while the
//! previous one ran, and still no client learns of a message that a power cut could take back.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::{Engine, SyncPolicy};

/// Longest a write that no reply waits for (a read's removal, a confirmation) stays unsynced
/// under `--sync always`. RocksDB holds the WAL's newest records in its buffer until the syncer
/// flushes them (`manual_wal_flush`), so without this a process crash, not only a power cut,
/// would take back reads made since the last reply that waited for a write.
const IDLE_SYNC: Duration = Duration::from_millis(100);

/// A point in the sequence of the engine's writes: a reply carrying it may be sent once every
/// write up to it is on disk. `SyncPoint::NONE` waits for nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct SyncPoint(pub u64);

impl SyncPoint {
    pub const NONE: SyncPoint = SyncPoint(0);
}

/// The write counters and what the syncer waits on.
pub(super) struct Durability {
    /// Under `--cluster`: a write is a proposal, durable once committed (`committed`), which
    /// no fsync of this node's decides.
    cluster: bool,
    /// Whether writes need the syncer (`--sync always`); otherwise a write counts as durable
    /// once RocksDB took it (the policy acknowledges writes once they are in the WAL).
    syncs: bool,
    /// Number of the last write made. Writes are made one at a time (under the commit lock), so
    /// every write up to it has completed.
    written: AtomicU64,
    /// Every write up to this one is on disk.
    synced: AtomicU64,
    /// Highest write that some reply waits for (writes that only remove consumed messages need
    /// no fsync of their own).
    wanted: Mutex<u64>,
    wanted_changed: Condvar,
    /// Event-loop passes running now. A write made while exactly one runs does not wake the
    /// syncer: the end of that pass does (`pass_ends`), once for all its writes. A syncer that
    /// is awake does not wait for passes to end: waiting for them, so that overlapping passes
    /// share one fsync, measured slower (pipelined set+get pairs by 10-50%, with one loop or
    /// two) once fsyncs overwrote reused WAL files (`wal_prime`).
    passes: AtomicUsize,
    /// fsyncs running now (the syncer's, an event loop's `sync_inline`).
    syncing: AtomicUsize,
    /// Under `--cluster`, the raft thread's writes (its log, applied entries) are made outside
    /// the engine and numbered by it: the highest number it asked to have fsynced...
    raft_requested: AtomicU64,
    /// ...the highest reported back as covered by an fsync...
    raft_reported: AtomicU64,
    /// ...and how to report (`Engine::report_wal_syncs`).
    raft_report: OnceLock<Box<dyn Fn(u64) + Send + Sync>>,
}

impl Durability {
    pub(super) fn new(policy: SyncPolicy, cluster: bool) -> Durability {
        Durability {
            cluster,
            syncs: policy == SyncPolicy::Always,
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            wanted: Mutex::new(0),
            wanted_changed: Condvar::new(),
            passes: AtomicUsize::new(0),
            syncing: AtomicUsize::new(0),
            raft_requested: AtomicU64::new(0),
            raft_reported: AtomicU64::new(0),
            raft_report: OnceLock::new(),
        }
    }

    /// Whether the raft thread waits for an fsync.
    fn raft_waits(&self) -> bool {
        self.raft_requested.load(Ordering::Acquire) > self.raft_reported.load(Ordering::Acquire)
    }

    /// The raft thread asks for an fsync covering every write it made so far, to be reported
    /// as `number` (or more): wakes the syncer.
    pub(super) fn request_raft_sync(&self, number: u64) {
        self.raft_requested.fetch_max(number, Ordering::AcqRel);
        let _wanted = self.wanted.lock();
        self.wanted_changed.notify_one();
    }

    /// Where fsyncs are reported to the raft thread (once).
    pub(super) fn report_raft_syncs_to(&self, report: Box<dyn Fn(u64) + Send + Sync>) {
        let _ = self.raft_report.set(report);
    }

    /// Every write up to the returned point is durable.
    pub(super) fn synced(&self) -> SyncPoint {
        SyncPoint(self.synced.load(Ordering::Acquire))
    }

    /// Numbers a write that just completed. `wanted`: a reply will wait for it, so the syncer
    /// must cover it. Called under the commit lock only.
    pub(super) fn written(&self, wanted: bool) -> SyncPoint {
        let point = self.written.load(Ordering::Relaxed) + 1;
        self.written.store(point, Ordering::Release);
        if self.cluster {
            // Durable once committed (`committed`): no fsync of this node's decides.
        } else if !self.syncs {
            self.synced.store(point, Ordering::Release);
        } else if wanted {
            *self.wanted.lock() = point;
            // While one event-loop pass runs, the syncer would only wait for it to end: the end
            // wakes it (`pass_ends`), and a wake-up per write would cost a context switch each.
            if self.passes.load(Ordering::Acquire) != 1 {
                self.wanted_changed.notify_one();
            }
        }
        SyncPoint(point)
    }

    /// Under `--cluster`: every write up to `point` is committed.
    pub(super) fn committed(&self, point: SyncPoint) {
        self.synced.fetch_max(point.0, Ordering::AcqRel);
    }

    /// The point the next write will have. Only meaningful under the commit lock, which every
    /// write is made under: no other write can come first.
    pub(super) fn next_point(&self) -> SyncPoint {
        SyncPoint(self.written.load(Ordering::Relaxed) + 1)
    }

    /// An event-loop pass begins: its writes are coming.
    pub(super) fn pass_begins(&self) {
        self.passes.fetch_add(1, Ordering::AcqRel);
    }

    /// An event-loop pass made its writes: the syncer may stop waiting for it.
    pub(super) fn pass_ends(&self) {
        if self.passes.fetch_sub(1, Ordering::AcqRel) == 1 && self.syncs {
            let wanted = self.wanted.lock();
            // Not if the pass synced its writes itself (`sync_inline`).
            if *wanted > self.synced.load(Ordering::Acquire) {
                self.wanted_changed.notify_one();
            }
        }
    }

    /// Runs `fsync` (a thread's own fsync of the WAL) unless an fsync is running already: then
    /// `None`, and the caller leaves its writes to the syncer.
    fn unless_syncing<T>(&self, fsync: impl FnOnce() -> T) -> Option<T> {
        let running = self.syncing.fetch_add(1, Ordering::AcqRel) > 0;
        let done = (!running).then(fsync);
        self.syncing.fetch_sub(1, Ordering::AcqRel);
        done
    }

    /// Wakes the syncer so that it sees the engine stopping.
    pub(super) fn stop(&self) {
        let _wanted = self.wanted.lock();
        self.wanted_changed.notify_all();
    }
}

/// Why the WAL is fsynced.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum SyncFor {
    /// Replies wait for it (`--sync always`): timed in the fsync histogram.
    Replies,
    /// `--sync interval:<ms>`: timed in the fsync histogram.
    Interval,
    /// Record writes must be on disk before the reclaimer drops table files (see `reclaim`).
    DroppingFiles,
    /// The engine stops.
    Shutdown,
}

/// Writes and fsyncs the WAL: every write made before the call is then on disk. Under
/// `--cluster` it then tells the raft thread the highest number it asked for before the fsync
/// began: its writes up to that one are on disk.
pub(super) fn sync_wal(engine: &Engine, why: SyncFor) -> Result<(), rocksdb::Error> {
    if let Some(covered) = flush_wal(engine, why)? {
        if let Some(report) = engine.durability.raft_report.get() {
            report(covered);
        }
    }
    Ok(())
}

/// Writes and fsyncs the WAL; the raft thread's highest number that this fsync covers, when
/// no fsync reported it before.
fn flush_wal(engine: &Engine, why: SyncFor) -> Result<Option<u64>, rocksdb::Error> {
    let d = &engine.durability;
    let raft_covered = d.raft_requested.load(Ordering::Acquire);
    let started = Instant::now();
    engine.db.flush_wal(true)?;
    if matches!(why, SyncFor::Replies | SyncFor::Interval) {
        engine.metrics.observe_sync(started.elapsed());
    }
    Ok(
        (d.raft_reported.fetch_max(raft_covered, Ordering::AcqRel) < raft_covered)
            .then_some(raft_covered),
    )
}

/// Under `--cluster`: fsyncs the WAL on the calling thread (a follower's raft thread) for the
/// raft thread's write `number`, unless an fsync is running: then the syncer is asked as usual
/// (`None`), and reports. `Some(number)`: every write made before the call is on disk.
pub(super) fn sync_raft_here(engine: &Engine, number: u64) -> Option<u64> {
    let d = &engine.durability;
    d.raft_requested.fetch_max(number, Ordering::AcqRel);
    let synced = d.unless_syncing(|| {
        if let Err(e) = flush_wal(engine, SyncFor::Replies) {
            log::error!("WAL sync failed, stopping: {e}");
            std::process::exit(1);
        }
    });
    if synced.is_none() {
        // The syncer is at it, and syncs again for what it does not cover.
        d.request_raft_sync(number);
    }
    synced.map(|()| number)
}

/// The syncer of `--sync interval:<ms>`: fsyncs the WAL every so often. Replies wait for no
/// fsync under that policy.
pub(super) fn sync_every(engine: &Engine, every: Duration) {
    while !engine.stopping.load(Ordering::Acquire) {
        std::thread::sleep(every);
        if let Err(e) = sync_wal(engine, SyncFor::Interval) {
            log::error!("WAL sync failed: {e}");
        }
    }
}

/// Under `--sync always`, fsyncs the WAL on the calling event loop's thread if a reply waits for
/// a write not yet synced and no fsync is running. A loop whose every connection waits for a
/// reply calls it instead of sleeping until the syncer has synced and woken it: no client can
/// send anything for the syncer's fsync to overlap with, and the two hand-offs between threads
/// cost as much as the fsync on a virtual machine (a context switch each, and the idle CPU's
/// wake-up). Whether it synced.
pub(super) fn sync_inline(engine: &Engine) -> bool {
    let d = &engine.durability;
    if d.cluster || !d.syncs || *d.wanted.lock() <= d.synced.load(Ordering::Acquire) {
        return false;
    }
    // When an fsync is running, the syncer is at it, and syncs again for what it does not cover.
    d.unless_syncing(|| sync_now(engine)).is_some()
}

/// Writes and fsyncs the WAL, then wakes every event loop to send what it held.
fn sync_now(engine: &Engine) {
    let d = &engine.durability;
    // Every write numbered up to here has completed: the fsync covers them all.
    let target = d.written.load(Ordering::Acquire);
    if let Err(e) = sync_wal(engine, SyncFor::Replies) {
        log::error!("WAL sync failed, stopping: {e}");
        std::process::exit(1);
    }
    if d.cluster {
        // Committed, not fsynced here, is what replies wait for (`committed`).
        return;
    }
    d.synced.fetch_max(target, Ordering::AcqRel);
    for mailbox in &engine.mailboxes {
        mailbox.waker.wake();
    }
}

/// The syncer of `--sync always`: fsyncs the WAL whenever a reply waits for a write not yet
/// on disk (and within `IDLE_SYNC` of any other write), then wakes every event loop to send
/// what it held. A failed fsync stops the process: what reached the disk is then unknown, and
/// acknowledging anything more could be a lie (Redis with `appendfsync always` does the same).
pub(super) fn sync_when_wanted(engine: &Engine) {
    let d = &engine.durability;
    loop {
        {
            let mut wanted = d.wanted.lock();
            while *wanted <= d.synced.load(Ordering::Acquire) && !d.raft_waits() {
                if engine.stopping.load(Ordering::Acquire) {
                    return;
                }
                let idle = d
                    .wanted_changed
                    .wait_for(&mut wanted, IDLE_SYNC)
                    .timed_out();
                if idle
                    && !d.cluster
                    && d.written.load(Ordering::Acquire) > d.synced.load(Ordering::Acquire)
                {
                    break;
                }
            }
        }
        d.syncing.fetch_add(1, Ordering::AcqRel);
        sync_now(engine);
        d.syncing.fetch_sub(1, Ordering::AcqRel);
    }
}
