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
//!   gives back the messages a dead leader had open, as a restart does.
//! - **Losing the lead stops the process.** Held replies may belong to entries that the next
//!   leader commits or drops, and the in-memory queues may be ahead of what is committed: no
//!   reply can be trusted and no state kept. The process exits, closing every connection (the
//!   outcome of their pending writes is unknown, as after a crash) and restarts as a follower
//!   under its supervisor. A graceful step-down is a later step (issue 22).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use parking_lot::Mutex;

use super::durability::SyncPoint;
use super::{Engine, QueueRef};

/// Queues a write published messages to, each with its tail then.
type Published = Vec<(QueueRef, u64)>;

/// Hands a write batch's representation, numbered by its point, to the replication; false if
/// the replication has stopped (nothing will ever settle the proposal).
pub type Proposer = Box<dyn Fn(SyncPoint, Vec<u8>) -> bool + Send + Sync>;

#[derive(Default)]
pub(super) struct Cluster {
    proposer: OnceLock<Proposer>,
    /// This node is the established leader and its queues were counted again: it serves.
    serving: AtomicBool,
    /// Whether it ever served (losing the lead then stops the process).
    served: AtomicBool,
    /// Proposed writes not yet applied here, in point order, with the queues whose messages they
    /// write and the tail each queue had then.
    unapplied: Mutex<VecDeque<(SyncPoint, Published)>>,
}

impl Cluster {
    pub(super) fn serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
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
/// the lead): see the module doc.
pub(super) fn proposal_lost(engine: &Engine, point: SyncPoint) {
    if engine.stopping.load(Ordering::Acquire) {
        return;
    }
    log::error!(
        "write {} was not committed: this node lost the lead; stopping (its held replies \
         cannot be answered truthfully), to restart as a follower",
        point.0
    );
    std::process::exit(1);
}

/// Under `--cluster`: this node became the established leader (`true`) or stopped being the
/// leader (`false`). Becoming it: the queues are counted again from RocksDB, then commands
/// are served. Losing it after serving stops the process (see the module doc).
pub(super) fn leading(engine: &Engine, established: bool) {
    let Some(cluster) = &engine.cluster else {
        return;
    };
    if established {
        if cluster.served.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = recount_queues(engine) {
            log::error!("cannot read the queues after becoming the leader: {e}; stopping");
            std::process::exit(1);
        }
        cluster.served.store(true, Ordering::Release);
        cluster.serving.store(true, Ordering::Release);
        log::info!("serving as the established leader");
    } else if cluster.served.load(Ordering::Acquire) {
        cluster.serving.store(false, Ordering::Release);
        if engine.stopping.load(Ordering::Acquire) {
            return;
        }
        log::error!("this node lost the lead: stopping, to restart as a follower");
        std::process::exit(1);
    }
}

/// Counts the queues on disk again, as start-up does (the followers' applied entries
/// created and deleted some), for a node about to serve. None is loaded yet: nothing was
/// served before.
fn recount_queues(engine: &Engine) -> Result<(), rocksdb::Error> {
    let _commit = engine.committer.lock();
    let found = super::store::scan(&engine.db)?;
    engine
        .registry
        .recount(found.queues, found.next_queue_id, found.fanout);
    log::info!("{} queues at the start of this leadership", found.queues);
    Ok(())
}
