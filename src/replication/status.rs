//! What a node's raft thread tells everyone else: its role, term, leader and log positions,
//! published after every pass of its loop through atomics, so `stats` and tests read them
//! without touching the `RawNode` (which only the raft thread may).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use raft::StateRole;

use super::group::GroupId;
use super::members::Members;

/// A node's role, as `stats` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    /// Asking whether it could win an election (pre-vote), without raising the term yet.
    PreCandidate,
    Candidate,
    Leader,
    /// The raft thread ended (stopped, or a storage failure).
    Stopped,
    /// Its copy is damaged: it takes no part until the group can do without it, then drops
    /// the copy and takes a snapshot (`super::quarantine`).
    Resyncing,
    /// A membership change removed it from the group: the raft thread ended, and `mqd serve`
    /// stops (protocol-spec/cluster.md 7).
    Removed,
}

impl Role {
    /// Every role, in the order `/metrics` lists them.
    pub const ALL: [Role; 7] = [
        Role::Follower,
        Role::PreCandidate,
        Role::Candidate,
        Role::Leader,
        Role::Stopped,
        Role::Resyncing,
        Role::Removed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "precandidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
            Role::Stopped => "stopped",
            Role::Resyncing => "resyncing",
            Role::Removed => "removed",
        }
    }

    fn from_u8(n: u8) -> Role {
        match n {
            0 => Role::Follower,
            1 => Role::PreCandidate,
            2 => Role::Candidate,
            3 => Role::Leader,
            5 => Role::Resyncing,
            6 => Role::Removed,
            _ => Role::Stopped,
        }
    }
}

impl From<StateRole> for Role {
    fn from(role: StateRole) -> Role {
        match role {
            StateRole::Follower => Role::Follower,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Candidate => Role::Candidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

/// One node's published state.
#[derive(Debug, Default)]
pub struct Status {
    pub node: u64,
    role: AtomicU8,
    term: AtomicU64,
    /// 0 when no leader is known.
    leader: AtomicU64,
    commit: AtomicU64,
    applied: AtomicU64,
    last_index: AtomicU64,
    first_index: AtomicU64,
    log_bytes: AtomicU64,
    snapshots_made: AtomicU64,
    snapshots_installed: AtomicU64,
    voters: AtomicU64,
    learners: AtomicU64,
    /// Every member's replication address, as this node last applied it.
    members: Arc<Members>,
    /// On the leader, how far each member's log matches its own (`progress`); empty elsewhere.
    progress: Mutex<Vec<MemberProgress>>,
    /// The group's number (`super::group`), which the listener checks connections against.
    group: GroupId,
}

/// How far a member's log matches the leader's, as the leader sees it (`/metrics`,
/// `/stats.json`): the lag is in entries behind the leader's last one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberProgress {
    pub id: u64,
    /// A voter; false for a learner catching up.
    pub voter: bool,
    pub matched: u64,
    pub lag: u64,
}

/// A copy of a `Status` at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusView {
    pub node: u64,
    pub role: Role,
    pub term: u64,
    pub leader: u64,
    pub commit: u64,
    pub applied: u64,
    pub last_index: u64,
    /// The first entry the log still holds (the ones before were compacted away).
    pub first_index: u64,
    /// The log's entries' size as stored.
    pub log_bytes: u64,
    /// Snapshot files this node made for followers, and snapshots it installed, since start.
    pub snapshots_made: u64,
    pub snapshots_installed: u64,
    /// Members in this node's membership: voters, and learners catching up.
    pub voters: u64,
    pub learners: u64,
}

impl Status {
    pub fn new(node: u64) -> Status {
        Status {
            node,
            ..Default::default()
        }
    }

    /// A node whose members' addresses are published in `members`.
    pub fn with_members(node: u64, members: Arc<Members>) -> Status {
        Status {
            node,
            members,
            ..Default::default()
        }
    }

    /// The same, with `group` as its group's number (shared with the transport).
    pub fn with_group(mut self, group: GroupId) -> Status {
        self.group = group;
        self
    }

    pub fn group(&self) -> &GroupId {
        &self.group
    }

    pub fn publish(&self, view: &StatusView) {
        self.role.store(view.role as u8, Ordering::Relaxed);
        self.term.store(view.term, Ordering::Relaxed);
        self.leader.store(view.leader, Ordering::Relaxed);
        self.commit.store(view.commit, Ordering::Relaxed);
        self.applied.store(view.applied, Ordering::Relaxed);
        self.last_index.store(view.last_index, Ordering::Relaxed);
        self.first_index.store(view.first_index, Ordering::Relaxed);
        self.log_bytes.store(view.log_bytes, Ordering::Relaxed);
        self.snapshots_made
            .store(view.snapshots_made, Ordering::Relaxed);
        self.snapshots_installed
            .store(view.snapshots_installed, Ordering::Relaxed);
        self.voters.store(view.voters, Ordering::Relaxed);
        self.learners.store(view.learners, Ordering::Relaxed);
    }

    /// Publishes the members' progress (an empty list when this node does not lead). Called
    /// by the raft thread at every pass: the list is rewritten in place, without allocating
    /// once it has its length.
    pub fn publish_progress(&self, members: impl Iterator<Item = MemberProgress>) {
        let mut progress = self.progress.lock();
        progress.clear();
        progress.extend(members);
        progress.sort_unstable_by_key(|m| m.id);
    }

    /// The members' progress as the leader last saw it: empty unless this node leads.
    pub fn progress(&self) -> Vec<MemberProgress> {
        self.progress.lock().clone()
    }

    /// The members' addresses.
    pub fn members(&self) -> &Arc<Members> {
        &self.members
    }

    /// `role`, one in which this node takes no part in the group: it knows no leader and no
    /// member's progress.
    fn out_of_the_group(&self, role: Role) {
        self.role.store(role as u8, Ordering::Relaxed);
        self.leader.store(0, Ordering::Relaxed);
        self.progress.lock().clear();
    }

    pub fn stopped(&self) {
        self.out_of_the_group(Role::Stopped);
    }

    pub fn removed(&self) {
        self.out_of_the_group(Role::Removed);
    }

    pub fn resyncing(&self) {
        self.out_of_the_group(Role::Resyncing);
    }

    pub fn view(&self) -> StatusView {
        StatusView {
            node: self.node,
            role: Role::from_u8(self.role.load(Ordering::Relaxed)),
            term: self.term.load(Ordering::Relaxed),
            leader: self.leader.load(Ordering::Relaxed),
            commit: self.commit.load(Ordering::Relaxed),
            applied: self.applied.load(Ordering::Relaxed),
            last_index: self.last_index.load(Ordering::Relaxed),
            first_index: self.first_index.load(Ordering::Relaxed),
            log_bytes: self.log_bytes.load(Ordering::Relaxed),
            snapshots_made: self.snapshots_made.load(Ordering::Relaxed),
            snapshots_installed: self.snapshots_installed.load(Ordering::Relaxed),
            voters: self.voters.load(Ordering::Relaxed),
            learners: self.learners.load(Ordering::Relaxed),
        }
    }
}
