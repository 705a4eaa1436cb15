//! The raft thread: the one thread that owns a node's `RawNode`. It ticks it on time, steps it
//! with peers' messages, proposes, and handles every `Ready` (`ready`) and the entries it
//! commits (`apply`); the fsync runs on the engine's syncer thread (`WalSync`), which reports
//! back through the same input channel. Nothing else touches the `RawNode`: raft-rs is not thread-safe, needs
//! ticks and peers' messages even when no client writes, and must see no `step` or `propose`
//! between a `ready()` and its `advance`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use raft::prelude::Message;
use raft::{RawNode, StateRole};
use rocksdb::DB;

use super::admin::codec::{AdminReply, AdminRequest};
use super::apply::{Applier, Outcome, Pending};
use super::compaction::{self, LogLimits, LogState};
use super::group::GroupId;
use super::installing::Install;
use super::members::{Addresses, Members, Removals};
use super::membership::{Marks, Waiter};
use super::quarantine::{self, Quarantine};
use super::resync;
use super::slog_bridge;
use super::snapshot::{self, Snapshots};
use super::status::{MemberProgress, Role, Status, StatusView};
use super::storage::{self, RaftStorage, BOOTSTRAP_INDEX};
use super::transport::Transport;

/// Timing of a node (notes §6: failover median 0.63 s, p99 0.96 s with these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub tick: Duration,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// Ticks without a leader before a follower campaigns (randomized up to twice this).
    pub election_ticks: usize,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            tick: Duration::from_millis(50),
            heartbeat_ticks: 2,
            election_ticks: 10,
        }
    }
}

/// What a node is.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: u64,
    /// The voters a new group starts with (this node among them). Ignored once the node has
    /// state: its membership is in it.
    pub founders: Vec<u64>,
    pub timing: Timing,
    /// How large the raft log may grow before it is compacted.
    pub log: LogLimits,
    /// A new member joining a seeded group: no membership until a snapshot brings it.
    pub join: bool,
    /// The members' replication addresses from `--cluster`: the map until a membership change
    /// stores one (which then wins).
    pub addresses: Addresses,
    /// A founder seeding the group with a single server's queues (`group::founding`).
    pub seeding: bool,
    /// Where the group's number is published (read from the state at start and after an
    /// install), for the transport and the listener.
    pub group: GroupId,
}

/// What makes the raft thread's writes durable: the engine's WAL fsync under `mqd serve`, so
/// that one fsync covers the queue writes and the log together. Asked for an fsync covering
/// every write made so far, it reports `Input::Synced(Synced::UpTo(n))` with a number `n` at
/// least that of the request, once an fsync that began after the request is done.
pub trait WalSync: Send + 'static {
    /// Numbers grow.
    fn request(&self, number: u64);

    /// Like `request`, but may fsync on the calling thread instead of handing the fsync to
    /// another: `Some(n)` when every write made before the call is on disk (nothing is
    /// reported then), `None` when it was requested (reported as usual).
    fn sync_here(&self, number: u64) -> Option<u64> {
        self.request(number);
        None
    }
}

/// What an fsync did.
pub enum Synced {
    /// Every write made before `request(n)` was called, for every `n` up to this, is on disk.
    UpTo(u64),
    /// The fsync failed: what reached the disk is unknown.
    Failed(String),
}

/// What the raft thread reads from its channel.
pub enum Input {
    /// From a peer, through the transport.
    Message(Box<Message>),
    /// Append `data` to the log if this node leads; `id` comes back in `Applier::settled`.
    Propose {
        id: u64,
        data: Vec<u8>,
    },
    /// The transport could not reach this peer.
    Unreachable(u64),
    /// Peer `by` refused this node's messages: it applied the membership change at `index`,
    /// which removed this node (`listener`).
    RemovedBy {
        by: u64,
        index: u64,
    },
    /// From the fsync (`WalSync`).
    Synced(Synced),
    /// A snapshot transfer to `to` ended: the follower has the file (`done`), or not.
    SnapshotSent {
        to: u64,
        done: bool,
    },
    /// A snapshot's state replacement ended (`installing`): the records written, or why not.
    Installed {
        index: u64,
        term: u64,
        replaced: Result<u64, String>,
    },
    /// An admin request (`mqd cluster`); the answer goes to `reply`.
    Admin {
        request: AdminRequest,
        reply: Sender<AdminReply>,
    },
    /// The engine found this node's copy damaged (RocksDB's corruption error): it gets the
    /// state back from the group (`quarantine`, `resync`).
    Damaged(String),
    Stop,
}

/// Most inputs handled between two looks at `Ready`, so that a flood of messages does not
/// delay the writes and messages it causes.
const INPUTS_PER_PASS: usize = 256;

/// A node's input channel, made before the node so that its transport can report to it.
pub struct Mailbox {
    sender: Sender<Input>,
    receiver: Receiver<Input>,
}

impl Mailbox {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Mailbox {
        // Unbounded: an event loop proposing never waits for the raft thread, which takes
        // queue locks when it applies (`crate::engine::Engine::committed`). What arrives is
        // bounded upstream: clients' writes by the write budget, peers by raft-rs's
        // `max_inflight_msgs`.
        let (sender, receiver) = crossbeam_channel::unbounded();
        Mailbox { sender, receiver }
    }

    pub fn sender(&self) -> Sender<Input> {
        self.sender.clone()
    }
}

/// Election timeouts a joining member waits for a leader before it says so.
const UNJOINED_ELECTIONS: usize = 20;

/// A running node: its raft thread.
pub struct Node {
    inputs: Sender<Input>,
    status: Arc<Status>,
    thread: Option<JoinHandle<()>>,
}

/// Readies written but not yet fsynced, with the messages that may leave only after the fsync.
pub(super) struct Unsynced {
    /// The syncer reports this number (or a later one) once the Ready's writes are on disk.
    pub requested: u64,
    /// The latest Ready persisted by that fsync (later Readies with nothing to sync ride on it).
    pub number: u64,
    pub messages: Vec<Message>,
    /// A snapshot installed by this Ready: applied once raft-rs knows it persisted.
    pub snapshot: Option<u64>,
}

/// The raft thread's state.
pub(super) struct Driver {
    pub raw: RawNode<RaftStorage>,
    pub transport: Box<dyn Transport>,
    pub applier: Box<dyn Applier>,
    pub syncer: Box<dyn WalSync>,
    pub unsynced: VecDeque<Unsynced>,
    /// This node's proposals not yet applied, in log order.
    pub pending: VecDeque<Pending>,
    pub(super) status: Arc<Status>,
    /// Every member's replication address, as applied here (`members`).
    pub addresses: Addresses,
    /// The members removed, as applied here (`members`).
    pub removals: Removals,
    /// An admin request waiting for its membership change (`membership`).
    pub(super) admin: Option<Waiter>,
    /// The leader's log end a heartbeat or two ago, to judge a learner's lag (`membership`).
    pub(super) marks: Marks,
    /// A heartbeat interval.
    pub(super) heartbeat: Duration,
    published: Option<StatusView>,
    /// Whether the applier was last told this node is the established leader.
    established: bool,
    log_limits: LogLimits,
    /// Snapshots installed since start.
    pub snapshots_installed: u64,
    /// It dropped a damaged copy and has not installed the group's yet (`resync`): no vote.
    rejoining: bool,
    /// A snapshot being installed (`installing`).
    pub(super) install: Option<Install>,
    /// The file of the snapshot installed last, removed once an fsync requested after its
    /// install finished (that Ready's number, once one was requested) is done.
    pub(super) installed_file: Option<(std::path::PathBuf, Option<u64>)>,
    /// This thread's own input channel, for the threads it starts.
    pub(super) inputs: Sender<Input>,
    /// The index of the applied membership change that removed this node: it stops.
    pub(super) removed_at: Option<u64>,
    /// A joining member (no membership yet) that no leader has reached: since when, until it
    /// says so once (`warn_if_unjoined`).
    unjoined_since: Option<Instant>,
    /// How long a joining member waits for a leader before it says so.
    unjoined_warning: Duration,
}

impl Node {
    /// Opens node `config.id`'s raft state in `db` (bootstrapping a founder with none) and
    /// starts its raft thread, reading `mailbox`; `syncer` makes its writes durable and reports
    /// to `mailbox`.
    pub fn start(
        config: NodeConfig,
        db: Arc<DB>,
        mailbox: Mailbox,
        transport: Box<dyn Transport>,
        applier: Box<dyn Applier>,
        syncer: Box<dyn WalSync>,
    ) -> Result<Node, String> {
        let Mailbox {
            sender: inputs,
            receiver,
        } = mailbox;
        let damaged = inputs.clone();
        let snapshots = Snapshots::new(db.clone(), snapshot::dir(&db)).reporting_damage_to(
            Arc::new(move |what| {
                let _ = damaged.send(Input::Damaged(what));
            }),
        );
        // A member that dropped its damaged copy takes the group's as a joiner (`resync`).
        let rejoining = resync::read(db.path()) == Some(resync::Stage::Rejoin);
        let founders: &[u64] = if config.join || rejoining {
            &[]
        } else {
            &config.founders
        };
        let opened = RaftStorage::open_seeding(db.clone(), config.id, founders, config.seeding);
        let storage = match opened {
            Ok(storage) => storage.with_snapshots(snapshots),
            Err(e) if resync::is_damage(&e.to_string()) => {
                let why = format!("raft state of node {}: {e}", config.id);
                let election = config.timing.tick * config.timing.election_ticks as u32;
                let watch = Quarantine::of_damaged_state(
                    &db,
                    config.id,
                    quarantine::answer_every(election),
                );
                let mailbox = Mailbox {
                    sender: inputs,
                    receiver,
                };
                let data_dir = db.path().to_path_buf();
                return Node::quarantined(watch, data_dir, why, mailbox, transport, applier);
            }
            Err(e) => return Err(format!("raft state of node {}: {e}", config.id)),
        };
        let cs = storage.conf_state();
        if !cs.voters.is_empty() && !super::membership::is_member(cs, config.id) {
            return Err(format!(
                "node {} was removed from the group (its last membership: voters {:?}, learners \
                 {:?}): to add it again, empty {} and start it with --join, then `mqd cluster \
                 add` (protocol-spec/cluster.md 7)",
                config.id,
                cs.voters,
                cs.learners,
                db.path().display()
            ));
        }
        let raft_config = raft_config(config.id, storage.applied().0, config.timing);
        raft_config
            .validate()
            .map_err(|e| format!("raft settings: {e}"))?;
        let raw = RawNode::new(&raft_config, storage, &slog_bridge::logger())
            .map_err(|e| format!("raft node {}: {e}", config.id))?;
        // The stored map wins over `--cluster` once a membership change stored one.
        let addresses = raw.store().addresses().cloned().unwrap_or(config.addresses);
        config.group.set(storage::stored_group_id(&db));
        let status = Arc::new(
            Status::with_members(config.id, Arc::new(Members::new(addresses.clone())))
                .with_group(config.group),
        );
        let mut driver = Driver {
            raw,
            transport,
            applier,
            syncer,
            unsynced: VecDeque::new(),
            pending: VecDeque::new(),
            status: status.clone(),
            addresses,
            removals: storage::stored_removals(&db),
            admin: None,
            marks: Marks::new(),
            heartbeat: config.timing.tick * config.timing.heartbeat_ticks as u32,
            published: None,
            established: false,
            log_limits: config.log,
            snapshots_installed: 0,
            rejoining,
            install: None,
            installed_file: None,
            inputs: inputs.clone(),
            removed_at: None,
            unjoined_since: None,
            unjoined_warning: config.timing.tick
                * (config.timing.election_ticks * UNJOINED_ELECTIONS) as u32,
        };
        if driver.raw.raft.prs().conf().voters().ids().is_empty() {
            driver.unjoined_since = Some(Instant::now());
        }
        driver.members_changed();
        driver.publish();
        let tick = config.timing.tick;
        let thread = std::thread::Builder::new()
            .name(format!("raft-{}", config.id))
            .spawn(move || driver.run(receiver, tick))
            .map_err(|e| format!("cannot start the raft thread: {e}"))?;
        Ok(Node {
            inputs,
            status,
            thread: Some(thread),
        })
    }

    /// A node whose raft state cannot be read because it is damaged (or whose database cannot
    /// be opened at all: `damaged_start`): no `RawNode`, only the quarantine
    /// (`quarantine::enter`), on the raft thread, until the group can do without this copy.
    /// Without it the start would fail, and a supervisor would start it again into the same
    /// failure for ever.
    pub(super) fn quarantined(
        watch: Quarantine,
        data_dir: std::path::PathBuf,
        why: String,
        mailbox: Mailbox,
        mut transport: Box<dyn Transport>,
        mut applier: Box<dyn Applier>,
    ) -> Result<Node, String> {
        let Mailbox {
            sender: inputs,
            receiver,
        } = mailbox;
        let id = watch.node;
        let status = Arc::new(Status::new(id));
        status.resyncing();
        let published = status.clone();
        let thread = std::thread::Builder::new()
            .name(format!("raft-{id}"))
            .spawn(move || {
                if !quarantine::record_damage(&why, &data_dir) {
                    published.stopped();
                    return;
                }
                quarantine::enter(
                    &watch,
                    &why,
                    &receiver,
                    transport.as_mut(),
                    applier.as_mut(),
                    &data_dir,
                );
                published.stopped();
            })
            .map_err(|e| format!("cannot start the raft thread: {e}"))?;
        Ok(Node {
            inputs,
            status,
            thread: Some(thread),
        })
    }

    /// Where peers' messages (and proposals) go.
    pub fn inputs(&self) -> Sender<Input> {
        self.inputs.clone()
    }

    pub fn status(&self) -> &Arc<Status> {
        &self.status
    }

    pub fn propose(&self, id: u64, data: Vec<u8>) {
        let _ = self.inputs.send(Input::Propose { id, data });
    }

    /// Stops the raft thread and waits for it.
    pub fn stop(&mut self) {
        let _ = self.inputs.send(Input::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// raft-rs's settings (notes §6): check_quorum (a leader that lost its majority steps down),
/// pre_vote (a node that was cut off cannot raise everyone's term on its return).
fn raft_config(id: u64, applied: u64, timing: Timing) -> raft::Config {
    raft::Config {
        id,
        election_tick: timing.election_ticks,
        heartbeat_tick: timing.heartbeat_ticks,
        applied,
        check_quorum: true,
        pre_vote: true,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        ..Default::default()
    }
}

impl Driver {
    fn run(mut self, inputs: Receiver<Input>, tick: Duration) {
        let id = self.status.node;
        let data_dir = self.raw.store().db().path().to_path_buf();
        let outcome = if resync::read(&data_dir) == Some(resync::Stage::Damaged) {
            // Damage found before a restart, and the group has not yet shown it can do without
            // this copy: it is still kept, and this node still takes no part.
            Ok(Err(format!(
                "{}found before this start ({})",
                resync::DAMAGE_FOUND,
                resync::marker_path(&data_dir).display()
            )))
        } else {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve(&inputs, tick)))
        };
        if let Ok(Err(e)) = &outcome {
            if resync::is_damage(e) {
                let election = tick * self.raw.raft.election_timeout() as u32;
                self.quarantine(&inputs, e, &data_dir, quarantine::answer_every(election));
            }
        }
        // Whoever still sends (the syncer stopped below, readers) now fails instead of waiting
        // for room in a channel nobody reads.
        drop(inputs);
        match outcome {
            Ok(Ok(())) => log::info!("raft node {id} stopped"),
            Ok(Err(e)) => log::error!("raft node {id} stopped: {e}"),
            Err(_) => log::error!("raft node {id} stopped: raft-rs panicked"),
        }
        if let Some(install) = self.install.as_mut() {
            // Its writes end before the database can be closed; `S` redoes it at the next start.
            install.join();
        }
        if self.removed_at.is_some() {
            self.status.removed();
        } else {
            self.status.stopped();
        }
        if self.established {
            // A stopped node leads no more: the engine must not take writes nobody commits.
            self.established = false;
            self.applier.leading(false);
        }
        for pending in std::mem::take(&mut self.pending) {
            self.applier.settled(pending.id, Outcome::Unknown);
        }
        self.stopped_waiting();
        if self.removed_at.is_some() {
            self.applier.removed();
        }
    }

    /// The loop: inputs until the next tick is due, the tick, then whatever raft-rs has ready.
    fn serve(&mut self, inputs: &Receiver<Input>, tick: Duration) -> Result<(), String> {
        let mut next_tick = Instant::now() + tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let first = match inputs.recv_timeout(wait) {
                Ok(input) => Some(input),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            for input in first
                .into_iter()
                .chain(inputs.try_iter().take(INPUTS_PER_PASS))
            {
                if !self.take(input)? {
                    return Ok(());
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                // After a stall (a slow disk, a suspended process) one tick, not one per tick
                // missed: those would fake an election timeout against a healthy leader.
                next_tick = (next_tick + tick).max(now);
            }
            while self.raw.has_ready() {
                super::ready::handle_ready(self)?;
            }
            if let Some(index) = self.removed_at {
                log::warn!(
                    "node {} was removed from the group by the membership change at index \
                     {index}: it stops (protocol-spec/cluster.md 7)",
                    self.raw.raft.id
                );
                return Ok(());
            }
            self.membership_pass();
            self.compact()?;
            if self.rejoining && self.raw.store().applied().0 > 0 {
                self.rejoining = false;
                resync::rejoined(self.raw.store().db().path());
            }
            self.publish();
            self.warn_if_unjoined();
        }
    }

    /// A joining member that no leader has reached for `unjoined_warning` says what it waits
    /// for, once: it never campaigns, so a group whose members all joined never has a leader.
    fn warn_if_unjoined(&mut self) {
        let Some(since) = self.unjoined_since else {
            return;
        };
        let raft = &self.raw.raft;
        if raft.leader_id != 0 || !raft.prs().conf().voters().ids().is_empty() {
            self.unjoined_since = None;
        } else if since.elapsed() >= self.unjoined_warning {
            log::warn!(
                "node {} was started with --join and no leader has reached it in {:?}: it \
                 waits for `mqd cluster add` (protocol-spec/cluster.md 7), or, when the group is \
                 new, for a founder (a member started without --join, cluster.md 5)",
                raft.id,
                self.unjoined_warning
            );
            self.unjoined_since = None;
        }
    }

    /// This node's copy is damaged (`why`): it stops taking part and waits for the group to
    /// show it holds every committed entry without it (`quarantine`), having recorded the
    /// damage durably first (`resync`); a leader stops leading, and its proposals are unknown.
    fn quarantine(
        &mut self,
        inputs: &Receiver<Input>,
        why: &str,
        data_dir: &std::path::Path,
        answer_every: Duration,
    ) {
        if !quarantine::record_damage(why, data_dir) {
            return;
        }
        let raft = &self.raw.raft;
        let watch = Quarantine {
            node: self.status.node,
            last_index: raft.raft_log.last_index().max(self.raw.store().bounds().1),
            term: raft.term,
            committed: raft.raft_log.committed,
            answer_every,
        };
        self.status.resyncing();
        if self.established {
            self.established = false;
            self.applier.leading(false);
        }
        for pending in std::mem::take(&mut self.pending) {
            self.applier.settled(pending.id, Outcome::Unknown);
        }
        quarantine::enter(
            &watch,
            why,
            inputs,
            self.transport.as_mut(),
            self.applier.as_mut(),
            data_dir,
        );
    }

    /// Handles one input; false to stop.
    fn take(&mut self, input: Input) -> Result<bool, String> {
        match input {
            Input::Message(mut message) => {
                if self.abstains(&message) {
                    return Ok(true);
                }
                self.clamp_heartbeat(&mut message);
                if let Err(e) = self.raw.step(*message) {
                    log::debug!("raft message ignored: {e}");
                }
            }
            Input::SnapshotSent { to, done } => {
                let status = if done {
                    raft::SnapshotStatus::Finish
                } else {
                    raft::SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            Input::Propose { id, data } => self.propose(id, data),
            Input::Admin { request, reply } => self.admin(request, reply),
            Input::Unreachable(peer) => self.raw.report_unreachable(peer),
            Input::RemovedBy { by, index } => self.removed_by(by, index),
            Input::Synced(Synced::UpTo(number)) => self.synced(number)?,
            Input::Installed {
                index,
                term,
                replaced,
            } => super::installing::replaced(self, index, term, replaced)?,
            Input::Synced(Synced::Failed(e)) => return Err(e),
            Input::Damaged(what) => return Err(format!("{}{what}", resync::DAMAGE_FOUND)),
            Input::Stop => return Ok(false),
        }
        Ok(true)
    }

    /// Peer `by` applied the change at `index` that removed this node. A node that applied it
    /// stops by itself (`apply`); one that has not was down when it was made, and stops too
    /// (exit 0, as for its own removal). One that applied past it was added again since, and
    /// `by`, behind, does not know yet: it goes on.
    fn removed_by(&mut self, by: u64, index: u64) {
        let applied = self.raw.store().applied().0;
        if applied >= index || self.removed_at.is_some() {
            return;
        }
        log::warn!(
            "node {by} refuses this node's messages: it applied the membership change at index \
             {index}, which removed node {} while it was down (applied here: {applied})",
            self.raw.raft.id
        );
        self.removed_at = Some(index);
    }

    /// A heartbeat carries the commit index the leader believes this node has (the smallest of
    /// its commit and this node's `matched`). A node whose data directory was wiped has lost
    /// what it had matched, and raft-rs would panic committing past its last entry (notes P1):
    /// such a heartbeat commits nothing here. The append that follows finds the log's real end
    /// (or sends a snapshot), and commits then.
    fn clamp_heartbeat(&self, message: &mut Message) {
        let log = &self.raw.raft.raft_log;
        if message.get_msg_type() == raft::prelude::MessageType::MsgHeartbeat
            && message.commit > log.last_index()
        {
            log::debug!(
                "heartbeat commit {} past this log's end {}: a wiped node catching up",
                message.commit,
                log.last_index()
            );
            message.commit = log.committed;
        }
    }

    /// A node whose log never got past the founders' starting point votes only for candidates
    /// at that point too (a new group's first election). Past it, such a node is one whose
    /// data directory was wiped: it has forgotten what it acknowledged and whom it voted for,
    /// and its vote could elect a candidate missing entries that were committed with its own
    /// lost copy (two failures, which a group of three does not survive without losing what
    /// was acknowledged). It waits for a leader's snapshot, which only the group's other
    /// members can elect.
    fn abstains(&self, message: &Message) -> bool {
        use raft::prelude::MessageType::{MsgRequestPreVote, MsgRequestVote};
        let vote = matches!(message.get_msg_type(), MsgRequestVote | MsgRequestPreVote);
        if vote && self.rejoining {
            log::info!(
                "no vote for node {}: this node dropped its damaged copy and waits for the \
                 group's (a leader's snapshot)",
                message.from
            );
            return true;
        }
        let fresh = self.raw.raft.raft_log.last_index() == BOOTSTRAP_INDEX;
        if vote && fresh && message.index > BOOTSTRAP_INDEX {
            log::info!(
                "no vote for node {}: this node holds nothing of the log yet (a wiped data \
                 directory waits for a leader's snapshot)",
                message.from
            );
            return true;
        }
        false
    }

    fn propose(&mut self, id: u64, data: Vec<u8>) {
        // Only on the leader: raft-rs 0.7 forwards a follower's proposal to the leader, which
        // would append an entry no command on the leader produced (notes P7).
        if self.raw.raft.state != StateRole::Leader {
            self.applier.settled(id, Outcome::Dropped);
            return;
        }
        let term = self.raw.raft.term;
        match self.raw.propose(id.to_be_bytes().to_vec(), data) {
            Ok(()) => self.pending.push_back(Pending {
                id,
                index: self.raw.raft.raft_log.last_index(),
                term,
            }),
            Err(e) => {
                log::debug!("proposal {id} dropped: {e}");
                self.applier.settled(id, Outcome::Dropped);
            }
        }
    }

    /// The syncer made every Ready up to `requested` durable: tell raft-rs, and send what waited.
    pub(super) fn synced(&mut self, requested: u64) -> Result<(), String> {
        let mut persisted = None;
        let mut messages = Vec::new();
        let mut snapshot = None;
        while self
            .unsynced
            .front()
            .is_some_and(|u| u.requested <= requested)
        {
            let done = self.unsynced.pop_front().expect("checked");
            persisted = Some(done.number);
            messages.extend(done.messages);
            snapshot = done.snapshot.or(snapshot);
        }
        if let Some(number) = persisted {
            self.raw.on_persist_ready(number);
        }
        self.transport.send(messages);
        if let Some((path, Some(after))) = &self.installed_file {
            if requested >= *after {
                let _ = std::fs::remove_file(path);
                self.installed_file = None;
            }
        }
        if let Some(index) = snapshot {
            super::installing::persisted(self, index)?;
        }
        Ok(())
    }

    /// The address map changed (a membership change applied, a snapshot installed): the
    /// transport's peers and the published map follow.
    pub(super) fn members_changed(&mut self) {
        self.transport.set_peers(&self.addresses);
        self.status.members().set(self.addresses.clone());
        self.status.members().set_removals(self.removals.clone());
    }

    /// Compacts the log when it is over its limits (`compaction` says how far).
    fn compact(&mut self) -> Result<(), String> {
        let store = self.raw.store();
        let (entries, bytes) = store.log_size();
        let raft = &self.raw.raft;
        let followers_have = (raft.state == StateRole::Leader).then(|| {
            raft.prs()
                .iter()
                .filter(|(&id, _)| id != raft.id)
                .map(|(_, progress)| progress.matched)
                .min()
                .unwrap_or(u64::MAX)
        });
        let state = LogState {
            truncated: store.bounds().0 - 1,
            applied: store.applied().0,
            entries,
            bytes,
            followers_have,
            can_snapshot: store.can_snapshot(),
        };
        if let Some(to) = compaction::compact_to(&state, &self.log_limits) {
            self.raw
                .mut_store()
                .compact(to)
                .map_err(|e| format!("raft log compaction failed: {e}"))?;
        }
        Ok(())
    }

    fn publish(&mut self) {
        // Established: the leader applied an entry of its own term, so every entry before it
        // (all that any earlier leader committed) is applied here.
        let established = self.raw.raft.state == StateRole::Leader
            && self.raw.store().applied().1 == self.raw.raft.term;
        if established != self.established {
            self.established = established;
            self.applier.leading(established);
        }
        let raft = &self.raw.raft;
        let view = StatusView {
            node: self.status.node,
            role: Role::from(raft.state),
            term: raft.term,
            leader: raft.leader_id,
            commit: raft.raft_log.committed,
            // raft-rs's own idea (`advance_apply_to`), which the stored one must match.
            applied: raft.raft_log.applied,
            last_index: raft.raft_log.last_index(),
            first_index: self.raw.store().bounds().0,
            log_bytes: self.raw.store().log_size().1,
            snapshots_made: self.raw.store().snapshots_made(),
            snapshots_installed: self.snapshots_installed,
            voters: raft.prs().conf().voters().ids().len() as u64,
            learners: raft.prs().conf().learners().len() as u64,
        };
        let before = self.published.replace(view);
        if before.is_none_or(|b| (b.role, b.term, b.leader) != (view.role, view.term, view.leader))
        {
            log::info!(
                "raft node {} is {} at term {} (leader: {})",
                view.node,
                view.role.name(),
                view.term,
                if view.leader == 0 {
                    "none".to_string()
                } else {
                    view.leader.to_string()
                }
            );
        }
        self.status.publish(&view);
        self.publish_progress();
    }

    /// On the leader, each member's matched index and lag behind the leader's last entry (this
    /// node's own: what it persisted); nothing elsewhere.
    fn publish_progress(&self) {
        let raft = &self.raw.raft;
        let leading = raft.state == StateRole::Leader;
        let last = raft.raft_log.last_index();
        let conf = raft.prs().conf();
        let members = raft.prs().iter().filter(|_| leading).map(|(&id, p)| {
            let matched = if id == raft.id {
                raft.raft_log.persisted.min(last)
            } else {
                p.matched
            };
            MemberProgress {
                id,
                voter: !conf.learners().contains(&id),
                matched,
                lag: last.saturating_sub(matched),
            }
        });
        self.status.publish_progress(members);
    }
}
