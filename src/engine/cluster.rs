//! The engine as a member of a replicated group (`mqd serve --cluster`): it serves only while
//! its node is the group's established leader, and then proposes its writes instead of making
//! them. The engine knows nothing of Raft: the replication (`crate::replication`) plugs in a
//! proposer and calls back when a proposal is committed (`committed`), when it is lost
//! (`proposal_lost`), and when this node starts or stops leading (`leading`).
//!
//! - **A write is a proposal.** `Engine::write` numbers the batch with the next `SyncPoint`, as
//!   for a local write, and hands its RocksDB representation to the proposer, under the commit
//!   lock, so points and log entries have the same order. Every node (this one included) applies
//!   committed entries to RocksDB; this node's memory (tails, recent caches) runs ahead, as it
//!   does for writes published before they are made (`commit::rounds`).
//! - **Durable means committed.** The replies waiting for a point (`Engine::synced`) go out once
//!   the entry is committed, i.e. fsynced on a majority: `committed` moves the point.
//! - **Readable from RocksDB once applied.** Messages are published with `written_end` left
//!   behind (`commit`), readable from the recent cache only, until their entry is applied here
//!   (`committed` moves `written_end`): a read never takes a message's key for gone before it is
//!   written.
//! - **Established leader only.** Until this node leads and has applied an entry of its own
//!   term (so every earlier entry is applied), every command is refused with
//!   `Error::NoLeader`. Then the queues are counted again from RocksDB (followers applied
//!   entries under a registry counted at start-up), and queues load from their records, which
//!   gives back the messages a dead leader had open, as a restart does. This happens at every
//!   leadership, not only the first.
//! - **Losing the lead is a step-down** (`step_down`): the node loses the lead (check_quorum,
//!   a newer term), or one of its proposals is lost (never committed, or maybe not). Its held
//!   replies may belong to entries that the next leader commits or drops, and its in-memory
//!   queues may be ahead of what is committed: no held reply can be trusted and no state kept.
//!   Under the commit lock (no write is half made), it stops serving, counts one more step-down
//!   (`Engine::step_downs`), and forgets every loaded queue (their waiters, open messages and
//!   recent caches), the removals deferred to the next commit and `unapplied`: what it holds
//!   is then exactly RocksDB's applied state, which it goes on applying as a follower. The
//!   process keeps running (`stats`, monitoring), refusing queue commands with `NoLeader`.
//! - **The fence.** The engine knows no connection: the event loops (`crate::net`) close every
//!   connection with anything in flight (a held reply, an unanswered write, a blocked or open
//!   read) when they see `step_downs` change, as a crash would have closed it (its outcome is
//!   unknown). The order that makes a held reply of an old leadership never released:
//!   `step_down` counts the step-down before it returns, and the raft thread calls it before it
//!   settles any later proposal (settling is in point order, a lost proposal steps down before
//!   the next one is settled, and a later leadership's proposals come after this one's loss);
//!   so `synced` never covers a point past a lost one without the count being seen first. A loop
//!   reads `synced` first and `step_downs` second (both acquire): a `synced` it trusts (the
//!   count unchanged since it last looked) covers only points committed in the leadership its
//!   held replies come from, and one that covers more comes with a changed count, on which the
//!   loop closes those connections instead of releasing anything. Points themselves stay
//!   monotonic across leaderships (`durability`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::commit::CommitState;
use super::durability::SyncPoint;
use super::{Engine, QueueRef};

/// Queues a write published messages to, each with its tail then.
type Published = Vec<(QueueRef, u64)>;

/// Hands a write batch's representation, numbered by its point, to the replication; false if
/// the replication has stopped (nothing will ever settle the proposal).
pub type Proposer = Box<dyn Fn(SyncPoint, Vec<u8>) -> bool + Send + Sync>;

/// Told that RocksDB found this node's copy damaged (a block checksum mismatch): the
/// replication then gets the state back from the group (`crate::replication::resync`).
pub type DamageReport = Box<dyn Fn(&str) + Send + Sync>;

#[derive(Default)]
pub(super) struct Cluster {
    proposer: OnceLock<Proposer>,
    /// Where damage found by a read goes (`damaged`).
    damage: OnceLock<DamageReport>,
    /// This node is the established leader and its queues were counted again: it serves.
    /// Changed under the commit lock only.
    serving: AtomicBool,
    /// How many times this node stopped serving: the fence (see the module doc).
    step_downs: AtomicU64,
    /// Counts every change of this node's leadership, either way: an establishment that finds
    /// it moved on while it counted the queues gives up (`establish`).
    leaderships: AtomicU64,
    /// Proposed writes not yet applied here, in point order, with the queues whose messages they
    /// write and the tail each queue had then.
    unapplied: Mutex<VecDeque<(SyncPoint, Published)>>,
}

impl Cluster {
    pub(super) fn serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    /// How many times this node stepped down (see the module doc).
    pub(super) fn step_downs(&self) -> u64 {
        self.step_downs.load(Ordering::Acquire)
    }

    /// Proposes the write numbered `point`.
    pub(super) fn propose(&self, point: SyncPoint, data: Vec<u8>) -> Result<(), String> {
        match self.proposer.get() {
            Some(propose) if propose(point, data) => Ok(()),
            Some(_) => Err("the replication has stopped".into()),
            None => Err("no replication to propose to".into()),
        }
    }

    /// The write at `point` published these queues' messages up to their tails: readable from
    /// RocksDB once it is applied. Called under the commit lock, in point order.
    pub(super) fn published(&self, point: SyncPoint, queues: Published) {
        if !queues.is_empty() {
            self.unapplied.lock().push_back((point, queues));
        }
    }
}

/// Under `--cluster`: where `write` sends its batches (once, before the node can lead).
pub(super) fn propose_to(engine: &Engine, proposer: Proposer) {
    if let Some(cluster) = &engine.cluster {
        let _ = cluster.proposer.set(proposer);
    }
}

/// Under `--cluster`: where damage found by a read is reported (once, before the node can lead).
pub(super) fn report_damage_to(engine: &Engine, report: DamageReport) {
    if let Some(cluster) = &engine.cluster {
        let _ = cluster.damage.set(report);
    }
}

/// A read found this node's copy damaged (`what`: RocksDB's corruption error). Under
/// `--cluster` the replication is told, and gets the state back from the group: true. A single
/// server (false) keeps serving, the damaged queue's reads failing until `mqd repair`.
pub(super) fn damaged(engine: &Engine, what: &str) -> bool {
    match engine.cluster.as_ref().and_then(|c| c.damage.get()) {
        Some(report) => {
            report(what);
            true
        }
        None => false,
    }
}

/// Under `--cluster`: every proposal up to `point` is committed and applied here. Makes its
/// messages readable from RocksDB, then releases the replies waiting for it.
pub(super) fn committed(engine: &Engine, point: SyncPoint) {
    let Some(cluster) = &engine.cluster else {
        return;
    };
    loop {
        let next = {
            let mut unapplied = cluster.unapplied.lock();
            match unapplied.front() {
                Some((p, _)) if *p <= point => unapplied.pop_front(),
                _ => None,
            }
        };
        let Some((_, queues)) = next else { break };
        for (queue, tail) in queues {
            queue.lock().written_up_to(tail);
        }
    }
    engine.durability.committed(point);
    for mailbox in &engine.mailboxes {
        mailbox.waker.wake();
    }
}

/// Under `--cluster`: a proposal was not committed, or may not be (the node stopped or lost
/// the lead). Its reply is held, and a later commit must not release it: a step-down, if this
/// node still serves (see the module doc).
pub(super) fn proposal_lost(engine: &Engine, point: SyncPoint) {
    if engine.cluster.as_ref().is_some_and(Cluster::serving) {
        step_down(engine, &format!("write {} was not committed", point.0));
    } else {
        log::debug!(
            "write {} of an earlier leadership was not committed",
            point.0
        );
    }
}

/// Under `--cluster`: this node became the established leader (`true`) or stopped being the
/// leader (`false`). Becoming it: the queues are counted again from RocksDB, then commands
/// are served. Losing it: a step-down (see the module doc).
pub(super) fn leading(engine: &Arc<Engine>, established: bool) {
    let Some(cluster) = &engine.cluster else {
        return;
    };
    let leadership = cluster.leaderships.fetch_add(1, Ordering::AcqRel) + 1;
    if !established {
        step_down(engine, "this node lost the lead");
        return;
    }
    // Counting the queues reads every record (seconds with a million queues): not on the raft
    // thread, which must go on ticking, or the followers take its silence for a dead leader
    // and elect another, which would count them again.
    count_aside(engine, "establish", leadership, establish);
}

/// Starts serving on RocksDB's applied state: every entry committed before this leadership
/// is applied here (see `Engine::leading`), and none of this node's earlier proposals is
/// unsettled. The records are read without the commit lock (so that a step-down meanwhile
/// never waits for the count): while it does not serve, this node writes nothing, and as the
/// established leader it applies only entries it proposed. It serves unless `leadership` ended
/// meanwhile. A read of the records that fails stops the process, as a failed fsync does: a
/// leader that cannot serve would hold the group's lead for nothing.
fn establish(engine: &Engine, leadership: u64) {
    let Some(cluster) = &engine.cluster else {
        return;
    };
    let Some(found) = read_queues(engine, "becoming the leader") else {
        return;
    };
    let mut commit = engine.committer.lock();
    if cluster.serving() || cluster.leaderships.load(Ordering::Acquire) != leadership {
        return;
    }
    // Whatever was loaded while not serving (a command racing the step-down) predates
    // entries applied since.
    forget_state(engine, cluster, &mut commit);
    engine
        .registry
        .recount(found.queues, found.next_queue_id, found.fanout);
    log::info!("{} queues at the start of this leadership", found.queues);
    cluster.serving.store(true, Ordering::Release);
    log::info!("serving as the established leader");
}

/// Under `--cluster`: the state was replaced by a snapshot's (only a follower installs one).
/// Forgets what memory holds, as a step-down does, and counts the queues again, as start-up
/// does; a node serving (it cannot be, raft-rs installs only on followers) steps down first.
/// The count reads every queue record (seconds with a million queues): not on the raft thread,
/// which called this and must go on answering heartbeats, or a leader that needs this
/// follower for its majority steps down (as a leader's own count is not, `leading`).
pub(super) fn restored(engine: &Arc<Engine>) {
    let Some(cluster) = &engine.cluster else {
        return;
    };
    step_down(engine, "a snapshot replaced the state");
    let mut commit = engine.committer.lock();
    forget_state(engine, cluster, &mut commit);
    drop(commit);
    let leadership = cluster.leaderships.load(Ordering::Acquire);
    count_aside(engine, "recount", leadership, recount_queues);
}

/// Stops serving and forgets every state RocksDB's applied one does not have (see the module
/// doc); nothing if this node does not serve.
fn step_down(engine: &Engine, why: &str) {
    let Some(cluster) = &engine.cluster else {
        return;
    };
    let mut commit = engine.committer.lock();
    if !cluster.serving() {
        return;
    }
    // Refused from here on; the count tells the event loops to close what is in flight.
    cluster.serving.store(false, Ordering::Release);
    cluster.step_downs.fetch_add(1, Ordering::AcqRel);
    forget_state(engine, cluster, &mut commit);
    drop(commit);
    if engine.stopping.load(Ordering::Acquire) {
        log::info!("{why}: no longer serving (stopping)");
    } else {
        log::warn!(
            "{why}: stepping down; connections with anything in flight are closed, queue \
             commands are refused until this node leads again"
        );
    }
    for mailbox in &engine.mailboxes {
        mailbox.waker.wake();
    }
}

/// Forgets the in-memory queues, the removals deferred to the next commit and the writes not
/// yet applied: what is left is RocksDB's applied state. Under the commit lock.
fn forget_state(engine: &Engine, cluster: &Cluster, commit: &mut CommitState) {
    commit.forget_deferred();
    cluster.unapplied.lock().clear();
    engine.registry.forget_all();
}

/// Runs `count`, which reads every queue record, on a thread of its own named `name` (here if
/// none can start), with the leadership count it was asked at.
fn count_aside(engine: &Arc<Engine>, name: &str, leadership: u64, count: fn(&Engine, u64)) {
    let counting = engine.clone();
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || count(&counting, leadership));
    if let Err(e) = spawned {
        log::warn!("cannot start a thread to count the queues ({e}): counting here");
        count(engine, leadership);
    }
}

/// Every queue record, read after `what`. Damage is reported (the member resyncs) and gives
/// None; any other failure stops the process, as a failed fsync does.
fn read_queues(engine: &Engine, what: &str) -> Option<super::store::Found> {
    match super::store::scan(&engine.db) {
        Ok(found) => Some(found),
        Err(e) if e.kind() == rocksdb::ErrorKind::Corruption && damaged(engine, e.as_ref()) => {
            log::error!("cannot read the queues after {what}: {e}");
            None
        }
        Err(e) => {
            log::error!("cannot read the queues after {what}: {e}; stopping");
            std::process::exit(1);
        }
    }
}

/// Counts the queues of an installed snapshot, as start-up does, unless this node became the
/// leader since (`leadership` is the count of leaderships then): a leader counts them itself,
/// and a count made earlier must not replace its own. None is loaded (`forget_state`).
fn recount_queues(engine: &Engine, leadership: u64) {
    let Some(cluster) = &engine.cluster else {
        return;
    };
    let Some(found) = read_queues(engine, "installing a snapshot") else {
        return;
    };
    let _commit = engine.committer.lock();
    if cluster.serving() || cluster.leaderships.load(Ordering::Acquire) != leadership {
        return;
    }
    engine
        .registry
        .recount(found.queues, found.next_queue_id, found.fanout);
    log::info!("{} queues in the installed snapshot", found.queues);
}
