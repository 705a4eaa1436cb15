//! Three nodes in one process, each with its raft thread, syncer and real RocksDB in a
//! temporary directory, their messages carried by channels, in real time with the default
//! timing (50 ms ticks). The state machine records each applied entry under its index, so
//! the nodes' databases can be compared. Nodes are killed as a power cut would: stopped, their
//! database closed, and their WAL cut back to what the last fsync covered.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use raft::prelude::{Entry, Message, MessageType};
use rocksdb::{WriteBatch, DB};

use super::admin::codec::{AdminError, AdminReply, AdminRequest};
use super::keys::STATE_CF;
use super::resync;
use super::snapshot;
use super::status::Role;
use super::test_support::{FsyncStage, PowerCut, Syncer, TempDir};
use super::transport::Transport;
use super::{db, Applier, Input, LogLimits, Mailbox, Node, NodeConfig, Outcome, Timing};

/// Prefix of the test state machine's keys in `meta`: `V` + index -> the entry's data.
const VALUE_PREFIX: u8 = b'V';

/// Channels between the nodes; a node not connected (killed) loses what is sent to it. A
/// snapshot's file is copied from the sender's snapshot directory to the receiver's, as
/// `snapshot::receive` leaves it, before the message is delivered (node id -> directory in
/// `dirs`).
/// The next `.2` snapshot transfers fail (the follower never gets the file).
#[derive(Clone, Default)]
struct Network(
    Arc<Mutex<HashMap<u64, Sender<Input>>>>,
    Arc<Mutex<HashMap<u64, PathBuf>>>,
    Arc<AtomicUsize>,
);

impl Transport for Network {
    fn send(&mut self, messages: Vec<Message>) {
        let peers = self.0.lock().unwrap();
        for message in messages {
            let Some(peer) = peers.get(&message.to) else {
                continue;
            };
            if message.get_msg_type() == MessageType::MsgSnapshot {
                let dirs = self.1.lock().unwrap();
                let meta = message.get_snapshot().get_metadata();
                let from = snapshot::generated_path(&dirs[&message.from], meta.index, meta.term);
                let to = snapshot::received_path(&dirs[&message.to], meta.index, meta.term);
                std::fs::create_dir_all(&dirs[&message.to]).unwrap();
                let fail = self
                    .2
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                    .is_ok();
                let done = !fail && std::fs::copy(from, to).is_ok();
                if let Some(leader) = peers.get(&message.from) {
                    let to = message.to;
                    if done {
                        let _ = peer.try_send(Input::Message(Box::new(message)));
                    }
                    let _ = leader.try_send(Input::SnapshotSent { to, done });
                }
                continue;
            }
            let _ = peer.try_send(Input::Message(Box::new(message)));
        }
    }
}

/// Writes each entry's data under its index; reports this node's settled proposals.
struct Recorder {
    db: Arc<DB>,
    node: u64,
    settled: Sender<(u64, u64, Outcome)>,
}

impl Applier for Recorder {
    fn apply(&mut self, entry: &Entry, batch: &mut WriteBatch) {
        let mut key = vec![VALUE_PREFIX];
        key.extend_from_slice(&entry.index.to_be_bytes());
        batch.put_cf(self.db.cf_handle(STATE_CF).unwrap(), key, &entry.data);
    }

    fn settled(&mut self, id: u64, outcome: Outcome) {
        let _ = self.settled.send((self.node, id, outcome));
    }
}

/// A node's disk as the test wants it: fsyncs finish (`Open`), never start (`Stalled`: its
/// writes from then on stay unacknowledged), or the power is off (`Cut`: fsyncs from that
/// moment count for nothing).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Disk {
    Open,
    Stalled,
    Cut,
}

#[derive(Clone)]
struct DiskGate(Arc<(Mutex<Disk>, Condvar)>);

impl DiskGate {
    fn new() -> DiskGate {
        DiskGate(Arc::new((Mutex::new(Disk::Open), Condvar::new())))
    }

    fn set(&self, disk: Disk) {
        *self.0 .0.lock().unwrap() = disk;
        self.0 .1.notify_all();
    }

    /// Runs before and after each of the node's fsyncs, before the node hears of it.
    fn observe(&self, stage: FsyncStage, power: &PowerCut) {
        let mut disk = self.0 .0.lock().unwrap();
        match stage {
            FsyncStage::Starting => {
                while *disk == Disk::Stalled {
                    disk = self.0 .1.wait(disk).unwrap();
                }
            }
            // Stalled while it ran: it finished, and the node will hear of it.
            FsyncStage::Done if *disk != Disk::Cut => power.synced(),
            FsyncStage::Done => {}
        }
    }
}

struct Member {
    dir: TempDir,
    power: PowerCut,
    disk: DiskGate,
    running: Option<(Node, Arc<DB>)>,
}

struct Cluster {
    ids: Vec<u64>,
    /// Nodes started with `--join` (added to the group later).
    joiners: BTreeSet<u64>,
    members: BTreeMap<u64, Member>,
    network: Network,
    settled_tx: Sender<(u64, u64, Outcome)>,
    settled: Receiver<(u64, u64, Outcome)>,
    log: LogLimits,
}

/// Long enough for an election on a busy 2-core machine shared with other builds.
const PATIENCE: Duration = Duration::from_secs(20);

impl Cluster {
    fn start(ids: &[u64]) -> Cluster {
        Cluster::with_log(ids, LogLimits::default())
    }

    fn with_log(ids: &[u64], log: LogLimits) -> Cluster {
        let (settled_tx, settled) = crossbeam_channel::unbounded();
        let mut cluster = Cluster {
            ids: ids.to_vec(),
            joiners: BTreeSet::new(),
            members: BTreeMap::new(),
            network: Network::default(),
            settled_tx,
            settled,
            log,
        };
        for &id in ids {
            cluster.add_member(id);
        }
        cluster
    }

    fn add_member(&mut self, id: u64) {
        let dir = TempDir::new("cluster");
        let power = PowerCut::new(dir.path());
        self.members.insert(
            id,
            Member {
                dir,
                power,
                disk: DiskGate::new(),
                running: None,
            },
        );
        self.run(id);
    }

    /// Starts node `id` as `--join` does, on an empty directory: a node to add.
    fn join(&mut self, id: u64) {
        self.joiners.insert(id);
        self.ids.push(id);
        self.add_member(id);
    }

    /// Asks node `id`'s raft thread, as an admin connection does.
    fn admin(&self, id: u64, request: AdminRequest) -> AdminReply {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let patience = request.patience();
        self.node(id)
            .inputs()
            .send(Input::Admin { request, reply })
            .unwrap();
        answer.recv_timeout(patience).expect("an answer")
    }

    /// Starts (or restarts) node `id` on its directory.
    fn run(&mut self, id: u64) {
        let member = self.members.get_mut(&id).unwrap();
        let db = db::open(member.dir.path()).unwrap();
        let recorder = Recorder {
            db: db.clone(),
            node: id,
            settled: self.settled_tx.clone(),
        };
        let config = NodeConfig {
            id,
            founders: self.ids.clone(),
            timing: Timing::default(),
            log: self.log,
            join: self.joiners.contains(&id),
            addresses: Default::default(),
            seeding: false,
            group: Default::default(),
        };
        member.disk.set(Disk::Open);
        let (power, disk) = (member.power.clone(), member.disk.clone());
        let mailbox = Mailbox::new();
        self.network.0.lock().unwrap().insert(id, mailbox.sender());
        self.network
            .1
            .lock()
            .unwrap()
            .insert(id, snapshot::dir(&db));
        let inputs = mailbox.sender();
        let syncer = Syncer::start(
            db.clone(),
            format!("raft-sync-{id}"),
            move |synced| {
                let _ = inputs.send(Input::Synced(synced));
            },
            move |stage| disk.observe(stage, &power),
        )
        .unwrap();
        let node = Node::start(
            config,
            db.clone(),
            mailbox,
            Box::new(self.network.clone()),
            Box::new(recorder),
            Box::new(syncer),
        )
        .unwrap();
        // Bootstrapping (or an earlier life) synced everything on disk now.
        member.power.synced();
        member.running = Some((node, db));
    }

    /// Stops node `id` and cuts its power: what its last fsync did not cover is lost.
    /// Returns the WAL bytes lost.
    fn kill(&mut self, id: u64) -> u64 {
        self.network.0.lock().unwrap().remove(&id);
        let member = self.members.get_mut(&id).unwrap();
        let (mut node, db) = member.running.take().unwrap();
        // The raft thread first: once it stopped reading, a stalled fsync let go now is one it
        // never hears of, as if the power went before it.
        let _ = node.inputs().send(Input::Stop);
        while !matches!(node.status().view().role, Role::Stopped | Role::Removed) {
            std::thread::sleep(Duration::from_millis(1));
        }
        member.disk.set(Disk::Cut);
        node.stop();
        drop(node);
        assert_eq!(Arc::strong_count(&db), 1, "the database is still in use");
        drop(db);
        member.power.cut()
    }

    /// Kills node `id` and empties its data directory, as an operator replacing its disk.
    fn wipe(&mut self, id: u64) {
        self.kill(id);
        let member = self.members.get_mut(&id).unwrap();
        std::fs::remove_dir_all(member.dir.path()).unwrap();
        std::fs::create_dir_all(member.dir.path()).unwrap();
        member.power = PowerCut::new(member.dir.path());
    }

    /// From now on node `id`'s fsyncs never complete, as far as it can tell.
    fn stall_disk(&self, id: u64) {
        self.members[&id].disk.set(Disk::Stalled);
    }

    fn node(&self, id: u64) -> &Node {
        &self.members[&id].running.as_ref().unwrap().0
    }

    fn running(&self) -> Vec<u64> {
        self.members
            .iter()
            .filter(|(_, m)| m.running.is_some())
            .map(|(&id, _)| id)
            .collect()
    }

    /// The leader a majority of the group follows (or is), if any.
    fn leader(&self) -> Option<u64> {
        let views: Vec<_> = self
            .running()
            .iter()
            .map(|&id| self.node(id).status().view())
            .collect();
        views
            .iter()
            .filter(|v| v.role == Role::Leader)
            .map(|v| v.node)
            .find(|&leader| {
                let agree = views.iter().filter(|v| v.leader == leader).count();
                agree * 2 > self.ids.len()
            })
    }

    fn wait_for<T>(&self, what: &str, mut check: impl FnMut(&Cluster) -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(value) = check(self) {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn wait_for_leader(&self) -> u64 {
        self.wait_for("a leader", |c| c.leader())
    }

    /// The running nodes other than `id`, in id order.
    fn others(&self, id: u64) -> Vec<u64> {
        self.ids.iter().copied().filter(|&n| n != id).collect()
    }

    /// Waits for the outcome of each of `ids`, proposed at some node.
    fn settle(&self, ids: impl IntoIterator<Item = u64>) -> BTreeMap<u64, Outcome> {
        let mut open: BTreeSet<u64> = ids.into_iter().collect();
        let mut outcomes = BTreeMap::new();
        while !open.is_empty() {
            let Ok((_, id, outcome)) = self.settled.recv_timeout(PATIENCE) else {
                panic!("proposals never settled: {open:?}");
            };
            if open.remove(&id) {
                outcomes.insert(id, outcome);
            }
        }
        outcomes
    }

    /// Proposes `ids` (each one's data is its id) at the leader, 100 at a time, until every
    /// one is committed; a proposal dropped (leadership moved) is proposed again at the new
    /// leader: a dropped one was never committed, so that is no duplicate.
    fn commit_all(&self, ids: impl IntoIterator<Item = u64>) {
        let mut todo: BTreeSet<u64> = ids.into_iter().collect();
        let deadline = Instant::now() + PATIENCE;
        while !todo.is_empty() {
            assert!(
                Instant::now() < deadline,
                "{} proposals never committed",
                todo.len()
            );
            let leader = self.wait_for_leader();
            let window: Vec<u64> = todo.iter().take(100).copied().collect();
            for &id in &window {
                self.node(leader).propose(id, id.to_be_bytes().to_vec());
            }
            for (id, outcome) in self.settle(window) {
                assert_ne!(outcome, Outcome::Unknown, "no node was stopped");
                if outcome == Outcome::Committed {
                    todo.remove(&id);
                }
            }
        }
    }

    /// Every running node's recorded values, in log order.
    fn values(&self, id: u64) -> Vec<u64> {
        let db = &self.members[&id].running.as_ref().unwrap().1;
        db.prefix_iterator_cf(db.cf_handle(STATE_CF).unwrap(), [VALUE_PREFIX])
            .map(|item| item.unwrap())
            .take_while(|(key, _)| key.first() == Some(&VALUE_PREFIX))
            .map(|(_, value)| u64::from_be_bytes(value[..].try_into().unwrap()))
            .collect()
    }

    /// Waits until every running node applied as far as the leader committed, then checks
    /// they recorded the same values in the same order; returns them.
    fn converged(&self) -> Vec<u64> {
        // Up to the leader's last entry: a view is published after the pass that applied,
        // so the leader's commit index may lag what its proposals' settling already showed.
        self.wait_for("every node to apply the leader's log", |c| {
            let leader = c.leader()?;
            let last = c.node(leader).status().view().last_index;
            c.running()
                .iter()
                .all(|&id| c.node(id).status().view().applied >= last)
                .then_some(())
        });
        let running = self.running();
        let values = self.values(running[0]);
        for &id in &running[1..] {
            assert_eq!(
                self.values(id),
                values,
                "node {id} differs from node {}",
                running[0]
            );
        }
        values
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for member in self.members.values_mut() {
            member.running = None;
        }
    }
}

/// Checks each of `expected` is there exactly once.
fn exactly_once(values: &[u64], expected: impl IntoIterator<Item = u64>) {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for &v in values {
        *counts.entry(v).or_default() += 1;
    }
    for v in expected {
        assert_eq!(counts.get(&v), Some(&1), "value {v}");
    }
}

#[test]
fn three_nodes_commit_and_apply_1000_proposals_on_every_node() {
    let cluster = Cluster::start(&[1, 2, 3]);
    let started = Instant::now();
    let leader = cluster.wait_for_leader();
    eprintln!("leader {leader} elected in {:?}", started.elapsed());
    let started = Instant::now();
    cluster.commit_all(1..=1000);
    let took = started.elapsed();
    eprintln!(
        "1000 proposals committed in {took:?}: {:.0}/s",
        1000.0 / took.as_secs_f64()
    );
    let values = cluster.converged();
    assert_eq!(values.len(), 1000, "nothing applied twice");
    exactly_once(&values, 1..=1000);
}

#[test]
fn a_follower_that_loses_unsynced_entries_in_a_power_cut_catches_up() {
    let mut cluster = Cluster::start(&[1, 2, 3]);
    let leader = cluster.wait_for_leader();
    cluster.commit_all(1..=200);
    let follower = *cluster.ids.iter().find(|&&id| id != leader).unwrap();
    // Its disk stalls: it writes what the leader sends but never acknowledges it, while the
    // leader and the other follower commit without it.
    cluster.stall_disk(follower);
    cluster.commit_all(201..=400);
    let lost = cluster.kill(follower);
    assert!(lost > 0, "the power cut took nothing back");
    cluster.commit_all(401..=500);
    cluster.run(follower);
    let restarted = cluster.node(follower).status().view();
    let values = cluster.converged();
    eprintln!(
        "node {follower} lost {lost} WAL bytes, restarted at applied {} and caught up to {}",
        restarted.applied,
        cluster.node(follower).status().view().applied
    );
    assert!(restarted.applied < 400, "{restarted:?}");
    assert_eq!(cluster.running().len(), 3);
    assert_eq!(values.len(), 500);
    exactly_once(&values, 1..=500);
}

#[test]
fn a_leader_whose_disk_lags_dies_and_nothing_committed_is_lost() {
    let mut cluster = Cluster::start(&[1, 2, 3]);
    let old = cluster.wait_for_leader();
    cluster.commit_all(1..=100);
    // The leader's own copies stop becoming durable; the followers' acknowledgements still
    // commit its entries. Then its power goes.
    cluster.stall_disk(old);
    let before = cluster.node(old).status().view().last_index;
    for id in 101..=150 {
        cluster.node(old).propose(id, id.to_be_bytes().to_vec());
    }
    // Committed: both followers have them on disk (the leader's own copy is not).
    cluster.wait_for("the 50 entries to be committed", |c| {
        let view = c.node(old).status().view();
        (view.commit >= before + 50 && view.applied < before + 50).then_some(())
    });
    let lost = cluster.kill(old);
    assert!(lost > 0, "the power cut took nothing back");
    let outcomes = cluster.settle(101..=150);
    assert!(
        outcomes.values().all(|&o| o == Outcome::Unknown),
        "{outcomes:?}"
    );
    let new = cluster.wait_for_leader();
    assert_ne!(new, old);
    cluster.commit_all(151..=200);
    cluster.run(old);
    let values = cluster.converged();
    assert_eq!(cluster.values(old), values);
    exactly_once(&values, (1..=100).chain(151..=200));
    // Committed before the leader died, though never applied by it: kept.
    exactly_once(&values, 101..=150);
    assert_eq!(values.len(), 200);
}

#[test]
fn a_follower_killed_by_a_power_cut_restarts_and_catches_up() {
    let mut cluster = Cluster::start(&[1, 2, 3]);
    let leader = cluster.wait_for_leader();
    cluster.commit_all(1..=200);
    let follower = *cluster.ids.iter().find(|&&id| id != leader).unwrap();
    // Proposals in flight while the follower dies.
    for id in 201..=300 {
        cluster.node(leader).propose(id, id.to_be_bytes().to_vec());
    }
    let lost = cluster.kill(follower);
    eprintln!("node {follower} lost {lost} unsynced WAL bytes");
    // The leader and the other follower are a majority: nothing waits for the dead one.
    let outcomes = cluster.settle(201..=300);
    assert!(
        outcomes.values().all(|&o| o == Outcome::Committed),
        "{outcomes:?}"
    );
    cluster.commit_all(301..=400);
    cluster.run(follower);
    cluster.commit_all(401..=500);
    let values = cluster.converged();
    assert_eq!(cluster.running().len(), 3);
    exactly_once(&values, 1..=500);
}

#[test]
fn losing_the_leader_elects_another_and_the_old_one_rejoins() {
    let mut cluster = Cluster::start(&[1, 2, 3]);
    let old = cluster.wait_for_leader();
    let old_term = cluster.node(old).status().view().term;
    cluster.commit_all(1..=300);
    cluster.kill(old);
    let killed = Instant::now();
    let new = cluster.wait_for("a new leader", |c| c.leader());
    eprintln!(
        "node {new} leads {:?} after the leader died",
        killed.elapsed()
    );
    assert_ne!(new, old);
    assert!(cluster.node(new).status().view().term > old_term);
    cluster.commit_all(301..=400);
    cluster.run(old);
    cluster.commit_all(401..=450);
    let values = cluster.converged();
    exactly_once(&values, 1..=450);
    assert_eq!(cluster.values(old), values);
}

/// Entries each node's log holds now.
fn log_entries(cluster: &Cluster, id: u64) -> u64 {
    let view = cluster.node(id).status().view();
    view.last_index + 1 - view.first_index
}

/// A log compacted past 50 entries down to the 10 behind the applied index: a few hundred
/// proposals cross the limit several times.
const SMALL_LOG: LogLimits = LogLimits {
    max_entries: 50,
    max_bytes: 1 << 30,
    keep: 10,
};

#[test]
fn logs_stay_bounded_and_a_follower_down_a_while_catches_up_from_the_leaders_log() {
    let mut cluster = Cluster::with_log(&[1, 2, 3], SMALL_LOG);
    let leader = cluster.wait_for_leader();
    for round in 0..5 {
        cluster.commit_all(round * 100 + 1..=round * 100 + 100);
        cluster.converged();
        for id in cluster.running() {
            // A pass adds at most the 100 proposals of a round before it compacts.
            let held = log_entries(&cluster, id);
            assert!(held <= 150, "node {id} holds {held} entries");
        }
    }
    for id in cluster.running() {
        let view = cluster.node(id).status().view();
        assert!(view.first_index > 300, "node {id}: {view:?}");
    }
    // A follower down for a while: the leader keeps every entry it lacks (no snapshot can
    // replace them), the other follower does not need to.
    let follower = *cluster.ids.iter().find(|&&id| id != leader).unwrap();
    let had = cluster.node(follower).status().view().applied;
    cluster.kill(follower);
    cluster.commit_all(501..=700);
    let view = cluster.node(leader).status().view();
    assert!(
        view.first_index <= had + 1,
        "{view:?}, the follower had {had}"
    );
    cluster.run(follower);
    cluster.commit_all(701..=750);
    let values = cluster.converged();
    assert_eq!(values.len(), 750);
    exactly_once(&values, 1..=750);
    cluster.commit_all(751..=800);
    cluster.converged();
    for id in cluster.running() {
        let held = log_entries(&cluster, id);
        assert!(
            held <= 150,
            "node {id} holds {held} entries after the catch-up"
        );
    }
}

#[test]
fn a_wiped_follower_catches_up_from_a_snapshot_and_the_logs_stay_bounded() {
    let mut cluster = Cluster::with_log(&[1, 2, 3], SMALL_LOG);
    let leader = cluster.wait_for_leader();
    cluster.commit_all(1..=300);
    let follower = *cluster.ids.iter().find(|&&id| id != leader).unwrap();
    cluster.wipe(follower);
    // Past four times the limit: the leader cuts what the wiped follower lacks.
    cluster.commit_all(301..=700);
    // The first two transfers fail: raft-rs hears it and sends again.
    cluster.network.2.store(2, Ordering::Release);
    assert!(cluster.node(leader).status().view().first_index > 300);
    cluster.run(follower);
    cluster.commit_all(701..=750);
    let values = cluster.converged();
    assert_eq!(cluster.values(follower), values);
    assert_eq!(values.len(), 750);
    exactly_once(&values, 1..=750);
    let view = cluster.node(follower).status().view();
    assert_eq!(view.snapshots_installed, 1, "{view:?}");
    assert_eq!(
        cluster.network.2.load(Ordering::Acquire),
        0,
        "no transfer failed"
    );
    // It goes on from the log after the snapshot, and compacts it.
    cluster.commit_all(751..=900);
    cluster.converged();
    assert!(log_entries(&cluster, follower) <= 150);
}

#[test]
fn a_wiped_follower_does_not_elect_a_node_missing_what_was_committed_with_its_lost_copy() {
    let mut cluster = Cluster::start(&[1, 2, 3]);
    let leader = cluster.wait_for_leader();
    cluster.commit_all(1..=100);
    let followers = cluster.others(leader);
    let (lagging, wiped) = (followers[0], followers[1]);
    // Committed by the leader and `wiped` alone; `lagging` never makes them durable.
    cluster.stall_disk(lagging);
    cluster.commit_all(101..=200);
    cluster.kill(lagging);
    cluster.wipe(wiped);
    cluster.kill(leader);
    cluster.run(lagging);
    cluster.run(wiped);
    // `lagging` misses 101..=200, and only the wiped node's vote could elect it.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for id in cluster.running() {
            let view = cluster.node(id).status().view();
            assert_ne!(view.role, Role::Leader, "node {id} was elected: {view:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cluster.run(leader);
    cluster.commit_all(201..=250);
    let values = cluster.converged();
    assert_eq!(values.len(), 250);
    exactly_once(&values, 1..=250);
}

#[test]
fn a_follower_down_past_the_leaders_compaction_gets_a_snapshot_over_its_old_log() {
    let mut cluster = Cluster::with_log(&[1, 2, 3], SMALL_LOG);
    let leader = cluster.wait_for_leader();
    cluster.commit_all(1..=100);
    let follower = *cluster.ids.iter().find(|&&id| id != leader).unwrap();
    cluster.kill(follower);
    cluster.commit_all(101..=500);
    let had = cluster.node(leader).status().view().first_index;
    cluster.run(follower);
    cluster.commit_all(501..=550);
    let values = cluster.converged();
    assert_eq!(cluster.values(follower), values);
    exactly_once(&values, 1..=550);
    assert_eq!(values.len(), 550);
    let view = cluster.node(follower).status().view();
    assert_eq!(
        view.snapshots_installed, 1,
        "{view:?}, the leader's log began at {had}"
    );
    // Restarted after the install: its state and log are the snapshot's and what followed.
    cluster.kill(follower);
    cluster.run(follower);
    cluster.commit_all(551..=600);
    let values = cluster.converged();
    exactly_once(&values, 1..=600);
}

#[test]
fn a_follower_installing_a_snapshot_keeps_answering_and_the_leader_that_needs_it_keeps_leading() {
    let mut cluster = Cluster::with_log(&[1, 2, 3], SMALL_LOG);
    let leader = cluster.wait_for_leader();
    cluster.commit_all(1..=100);
    let others = cluster.others(leader);
    let (installing, other) = (others[0], others[1]);
    cluster.kill(installing);
    cluster.commit_all(101..=500);
    // Its state takes 4 s to replace (a million messages' worth): 8 election timeouts.
    let install = Duration::from_secs(4);
    snapshot::install::SLOW_FOR_TESTS.lock().unwrap().push((
        cluster.members[&installing].dir.path().to_path_buf(),
        install,
    ));
    cluster.run(installing);
    cluster.wait_for("the snapshot's install to begin", |c| {
        let view = c.node(installing).status().view();
        (view.first_index > 500).then_some(())
    });
    // The leader now needs the installing follower for every commit.
    cluster.kill(other);
    let term = cluster.node(leader).status().view().term;
    let started = Instant::now();
    cluster.commit_all(501..=550);
    let view = cluster.node(installing).status().view();
    assert_eq!(
        view.snapshots_installed,
        0,
        "committed with the follower in {:?}, before its install ended",
        started.elapsed()
    );
    assert_eq!(cluster.wait_for_leader(), leader, "the leader kept leading");
    assert_eq!(cluster.node(leader).status().view().term, term);
    // Then the state is installed and the entries committed meanwhile applied, in order.
    cluster.wait_for("the install to end", |c| {
        (c.node(installing).status().view().snapshots_installed == 1).then_some(())
    });
    cluster.run(other);
    let values = cluster.converged();
    assert_eq!(cluster.values(installing), values);
    exactly_once(&values, 1..=550);
}

#[test]
fn a_joiner_is_added_as_a_learner_then_a_voter_and_a_leader_removes_itself_by_handing_over() {
    let mut cluster = Cluster::with_log(&[1, 2, 3], LogLimits::entries(16));
    cluster.commit_all(1..=100);
    cluster.join(4);
    let add = |id| AdminRequest::Add {
        id,
        addr: format!("h:{id}"),
        wait: PATIENCE,
    };
    let leader = cluster.wait_for_leader();
    let follower = [1, 2, 3].into_iter().find(|&n| n != leader).unwrap();
    assert_eq!(
        cluster.admin(follower, add(4)),
        Err(AdminError::NoLeader),
        "only the leader changes the membership"
    );
    let view = cluster.admin(leader, add(4)).expect("added");
    let voters: Vec<(u64, bool)> = view.members.iter().map(|m| (m.id, m.voter)).collect();
    assert_eq!(voters, [(1, true), (2, true), (3, true), (4, true)]);
    assert_eq!(
        view.members[3].addr.as_deref(),
        Some("h:4"),
        "the address came with the change"
    );
    assert!(matches!(
        cluster.admin(leader, add(4)),
        Err(AdminError::Refused(_))
    ));
    // The new voter took a snapshot (the log was compacted) and then the log: it holds
    // everything, and counts for commits.
    cluster.commit_all(101..=200);
    let values = cluster.converged();
    assert_eq!(cluster.values(4), values);
    exactly_once(&values, 1..=200);
    assert_eq!(cluster.node(4).status().view().voters, 4);

    // The leader asked to remove itself hands its leadership to another voter first.
    let leader = cluster.wait_for_leader();
    let remove = |id| AdminRequest::Remove { id, wait: PATIENCE };
    assert!(matches!(
        cluster.admin(leader, remove(leader)),
        Err(AdminError::Retry(_))
    ));
    let next = cluster.wait_for("another leader", |c| c.leader().filter(|&l| l != leader));
    let view = cluster.admin(next, remove(leader)).expect("removed");
    assert!(view.members.iter().all(|m| m.id != leader && m.voter));
    assert_eq!(view.members.len(), 3);
    assert!(matches!(
        cluster.admin(next, remove(leader)),
        Err(AdminError::Refused(_))
    ));
    // Having applied its removal, the removed node's raft thread ends.
    cluster.wait_for("the removed node to stop", |c| {
        (c.node(leader).status().view().role == Role::Removed).then_some(())
    });
    cluster.kill(leader);
    cluster.ids.retain(|&id| id != leader);
    cluster.commit_all(201..=250);
    exactly_once(&cluster.converged(), 1..=250);
}

/// Tells node `id` its copy is damaged, as its engine does on a read that meets RocksDB's
/// corruption error.
fn damage(cluster: &Cluster, id: u64) {
    let _ = cluster
        .node(id)
        .inputs()
        .send(Input::Damaged("Corruption: block checksum mismatch".into()));
}

/// Waits until node `id` says it is `resyncing` (it takes no part in the group).
fn wait_resyncing(cluster: &Cluster, id: u64, what: &str) {
    cluster.wait_for(what, |c| {
        (c.node(id).status().view().role == Role::Resyncing).then_some(())
    });
}

/// The stage of node `id`'s resync marker (`resync`), if any.
fn marker(cluster: &Cluster, id: u64) -> Option<resync::Stage> {
    resync::read(cluster.members[&id].dir.path())
}

/// What `mqd serve` does once a damaged node decided to drop its copy: it exits, and its next
/// start empties the directory (`resync::wipe_if_decided`); here the node is killed and
/// started again on the emptied directory.
fn restart_resynced(cluster: &mut Cluster, id: u64) {
    cluster.kill(id);
    let member = cluster.members.get_mut(&id).unwrap();
    assert!(resync::wipe_if_decided(member.dir.path()).unwrap());
    member.power = PowerCut::new(member.dir.path());
    cluster.run(id);
    // A joiner until the group's copy is installed, then a member as before.
    cluster.wait_for("the resynced node to install the group's copy", |c| {
        let installed = c.node(id).status().view().snapshots_installed >= 1;
        (installed && marker(c, id).is_none()).then_some(())
    });
}

#[test]
fn a_damaged_follower_drops_its_copy_once_the_others_commit_without_it_and_gets_it_back() {
    let mut cluster = Cluster::with_log(&[1, 2, 3], SMALL_LOG);
    let leader = cluster.wait_for_leader();
    cluster.commit_all(1..=300);
    let damaged = *cluster.ids.iter().find(|&&id| id != leader).unwrap();
    damage(&cluster, damaged);
    wait_resyncing(&cluster, damaged, "the damaged node to stop taking part");
    assert_eq!(marker(&cluster, damaged), Some(resync::Stage::Damaged));
    // The other two commit without it: the proof.
    cluster.commit_all(301..=700);
    cluster.wait_for("the decision to drop the damaged copy", |c| {
        (marker(c, damaged) == Some(resync::Stage::Wipe)).then_some(())
    });
    restart_resynced(&mut cluster, damaged);
    cluster.commit_all(701..=750);
    let values = cluster.converged();
    assert_eq!(cluster.values(damaged), values);
    exactly_once(&values, 1..=750);
    assert!(cluster.node(damaged).status().view().snapshots_installed >= 1);
    assert_eq!(marker(&cluster, damaged), None);
}

#[test]
fn a_damaged_member_keeps_its_copy_while_the_others_cannot_commit_without_it() {
    let mut cluster = Cluster::start(&[1, 2, 3]);
    let leader = cluster.wait_for_leader();
    cluster.commit_all(1..=100);
    let followers = cluster.others(leader);
    let (damaged, down) = (followers[0], followers[1]);
    cluster.kill(down);
    damage(&cluster, damaged);
    wait_resyncing(&cluster, damaged, "the damaged node to stop taking part");
    // Entries 1..=100 are on the leader and the damaged node alone: its copy must stay.
    for id in 101..=110 {
        cluster.node(leader).propose(id, id.to_be_bytes().to_vec());
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(marker(&cluster, damaged), Some(resync::Stage::Damaged));
    // Its rare heartbeat answers do not keep the leader's quorum check passing: the leader
    // steps down (clients hear `no leader` rather than wait on writes nobody commits).
    cluster.wait_for("the leader to step down", |c| {
        (c.node(leader).status().view().role != Role::Leader).then_some(())
    });
    // Restarted meanwhile, it still takes no part, and keeps its copy.
    cluster.kill(damaged);
    cluster.run(damaged);
    wait_resyncing(
        &cluster,
        damaged,
        "the restarted damaged node to stop taking part",
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(marker(&cluster, damaged), Some(resync::Stage::Damaged));
    // The third member back: the group commits without the damaged one, which then resyncs.
    cluster.run(down);
    cluster.commit_all(111..=200);
    cluster.wait_for("the decision to drop the damaged copy", |c| {
        (marker(c, damaged) == Some(resync::Stage::Wipe)).then_some(())
    });
    restart_resynced(&mut cluster, damaged);
    cluster.commit_all(201..=250);
    let values = cluster.converged();
    assert_eq!(cluster.values(damaged), values);
    exactly_once(&values, (1..=100).chain(111..=250));
}

#[test]
fn a_damaged_leader_stops_leading_the_others_elect_and_it_gets_every_entry_back() {
    let mut cluster = Cluster::start(&[1, 2, 3]);
    let leader = cluster.wait_for_leader();
    cluster.commit_all(1..=200);
    damage(&cluster, leader);
    let next = cluster.wait_for("another leader", |c| c.leader().filter(|&l| l != leader));
    // The new leader's first entry, committed without the damaged node, is the proof.
    cluster.wait_for("the decision to drop the damaged copy", |c| {
        (marker(c, leader) == Some(resync::Stage::Wipe)).then_some(())
    });
    cluster.commit_all(201..=300);
    restart_resynced(&mut cluster, leader);
    cluster.commit_all(301..=350);
    let values = cluster.converged();
    assert_eq!(cluster.values(leader), values);
    exactly_once(&values, 1..=350);
    assert_ne!(next, leader);
}
