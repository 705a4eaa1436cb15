//! Membership changes online (issue 22, step 7), on the raft thread. A change is one
//! `ConfChangeV2` entry with one change, proposed by the leader, so raft-rs makes it a simple
//! (not joint) change; at most one is in the log unapplied at a time (raft-rs refuses a second
//! one, and so do we, earlier and with a reason). An added node's address travels in the
//! change's `context`, so every member learns it from the log (`members`), and is stored with
//! the membership (`C`, `M`) in the apply batch.
//!
//! - **add**: the node joins as a learner (`AddLearnerNode`): it gets the log or a snapshot and
//!   counts for no quorum. The leader promotes every learner whose matched index is within
//!   `CAUGHT_UP` entries of its last index, or that holds what the leader's log held a
//!   heartbeat interval or two ago (`Marks`: under a steady write rate its lag is the entries of
//!   a round trip, which may be more than `CAUGHT_UP`), with `AddNode`, at any pass where no
//!   change is pending: a leader elected meanwhile promotes it too. The request waits until it
//!   is a voter.
//! - **remove**: `RemoveNode`. The leader does not remove itself (raft-rs 0.7 leaves a removed
//!   leader leading, untested): it hands its leadership to the most caught-up voter and answers
//!   `retry`; asked again, the new leader removes it.
//!
//! An admin request comes from `admin::serve` with a channel for the answer, sent when the
//! change is applied here, or when it cannot be (refused, busy, leadership lost, timed out).

use std::time::Instant;

use crossbeam_channel::Sender;
use raft::prelude::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState};
use raft::StateRole;

use super::admin::codec::{AdminError, AdminReply, AdminRequest, ClusterView, MemberInfo};
use super::driver::Driver;
use super::members::{check_address, Addresses, Removals};
use super::peers::MOST_MEMBERS;

/// A learner within this many entries of the leader's last index is made a voter: about what a
/// heartbeat interval's appends carry, so as a voter it does not hold commits back.
pub const CAUGHT_UP: u64 = 64;

/// The leader's last index, sampled once per heartbeat interval: `previous` is what the log
/// held one to two intervals ago (`u64::MAX` until two samples were taken).
pub(super) struct Marks {
    at: Instant,
    mark: u64,
    previous: u64,
}

impl Marks {
    pub(super) fn new() -> Marks {
        Marks {
            at: Instant::now(),
            mark: u64::MAX,
            previous: u64::MAX,
        }
    }

    /// Takes a sample of `last` if an `interval` passed since the last one.
    fn sample(&mut self, now: Instant, interval: std::time::Duration, last: u64) {
        if now.saturating_duration_since(self.at) >= interval {
            self.previous = self.mark;
            self.mark = last;
            self.at = now;
        }
    }
}

/// Whether a learner that holds the log up to `matched` is caught up with a leader whose log
/// ends at `last` and held `previous` a heartbeat interval or two ago.
pub fn caught_up(matched: u64, last: u64, previous: u64) -> bool {
    matched > 0 && (matched.saturating_add(CAUGHT_UP) >= last || matched >= previous)
}

/// An admin request waiting for its change.
pub(super) struct Waiter {
    target: Target,
    reply: Sender<AdminReply>,
    deadline: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Voter(u64),
    Gone(u64),
}

/// Whether `id` is a voter or a learner of `cs` (outgoing or incoming, in a joint one).
pub fn is_member(cs: &ConfState, id: u64) -> bool {
    [
        &cs.voters,
        &cs.learners,
        &cs.voters_outgoing,
        &cs.learners_next,
    ]
    .iter()
    .any(|ids| ids.contains(&id))
}

/// What applying `cc` does to the address map: an added node's address is the change's
/// context; a removed node's is dropped.
pub fn update_addresses(map: &mut Addresses, cc: &ConfChangeV2) {
    let context = std::str::from_utf8(&cc.context)
        .ok()
        .filter(|c| !c.is_empty());
    for change in cc.changes.iter() {
        match change.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                if let Some(addr) = context {
                    match check_address(addr) {
                        Ok(()) => {
                            map.insert(change.node_id, addr.to_string());
                        }
                        Err(e) => log::error!("membership change with a bad address: {e}"),
                    }
                }
            }
            ConfChangeType::RemoveNode => {
                map.remove(&change.node_id);
            }
        }
    }
}

/// What applying `cc`, the entry at `index`, does to the removals: a removed node is recorded
/// with `index`, an added one forgotten (the same id may be added again, on a new directory).
pub fn update_removals(removals: &mut Removals, cc: &ConfChangeV2, index: u64) {
    for change in cc.changes.iter() {
        match change.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                removals.remove(&change.node_id);
            }
            ConfChangeType::RemoveNode => {
                removals.insert(change.node_id, index);
            }
        }
    }
}

/// One change, its address (if any) as context.
pub fn conf_change(kind: ConfChangeType, id: u64, addr: Option<&str>) -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = id;
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(single);
    if let Some(addr) = addr {
        cc.context = addr.as_bytes().to_vec().into();
    }
    cc
}

/// Why an add may not start now, judged on the membership alone.
pub fn check_add(
    cs: &ConfState,
    addresses: &Addresses,
    id: u64,
    addr: &str,
) -> Result<(), AdminError> {
    if cs.voters.contains(&id) || cs.learners.contains(&id) {
        return Err(AdminError::Refused(format!(
            "node {id} is already a member"
        )));
    }
    if let Some(learner) = cs.learners.first() {
        return Err(AdminError::Busy(format!(
            "node {learner} is a learner still catching up: wait until it is a voter, or \
             remove it"
        )));
    }
    if let Some((other, _)) = addresses.iter().find(|(i, a)| **i != id && *a == addr) {
        return Err(AdminError::Refused(format!(
            "{addr} is node {other}'s address"
        )));
    }
    if cs.voters.len() + cs.learners.len() >= MOST_MEMBERS {
        return Err(AdminError::Refused(format!(
            "a group has at most {MOST_MEMBERS} members"
        )));
    }
    Ok(())
}

/// Why a removal may not start now, judged on the membership alone.
pub fn check_remove(cs: &ConfState, id: u64) -> Result<(), AdminError> {
    let voter = cs.voters.contains(&id);
    if !voter && !cs.learners.contains(&id) {
        return Err(AdminError::Refused(format!("node {id} is not a member")));
    }
    if voter && cs.voters.len() == 1 {
        return Err(AdminError::Refused(format!(
            "node {id} is the only voter: a group cannot remove its last voter"
        )));
    }
    Ok(())
}

impl Driver {
    /// Carries out (or starts) an admin request; the answer goes to `reply`, now or when the
    /// change is applied.
    pub(super) fn admin(&mut self, request: AdminRequest, reply: Sender<AdminReply>) {
        if let Err(e) = self.start_change(&request, &reply) {
            let _ = reply.send(Err(e));
        }
    }

    fn start_change(
        &mut self,
        request: &AdminRequest,
        reply: &Sender<AdminReply>,
    ) -> Result<(), AdminError> {
        let (kind, id, addr, wait) = match request {
            AdminRequest::Status => {
                let _ = reply.send(Ok(self.cluster_view()));
                return Ok(());
            }
            AdminRequest::Add { id, addr, wait } => (
                ConfChangeType::AddLearnerNode,
                *id,
                Some(addr.as_str()),
                *wait,
            ),
            AdminRequest::Remove { id, wait } => (ConfChangeType::RemoveNode, *id, None, *wait),
        };
        if self.raw.raft.state != StateRole::Leader {
            return Err(AdminError::NoLeader);
        }
        if let Some(waiting) = &self.admin {
            return Err(AdminError::Busy(format!(
                "a change is under way ({})",
                match waiting.target {
                    Target::Voter(id) => format!("adding node {id}"),
                    Target::Gone(id) => format!("removing node {id}"),
                }
            )));
        }
        if self.raw.raft.has_pending_conf() {
            return Err(AdminError::Busy(
                "a membership change is in the log, not applied yet".into(),
            ));
        }
        let cs = self.raw.raft.prs().conf().to_conf_state();
        let target = match addr {
            Some(addr) => {
                check_add(&cs, &self.addresses, id, addr)?;
                Target::Voter(id)
            }
            None => {
                check_remove(&cs, id)?;
                if id == self.raw.raft.id {
                    return Err(self.hand_over_leadership());
                }
                Target::Gone(id)
            }
        };
        let cc = conf_change(kind, id, addr);
        let context = addr.map(|a| a.as_bytes().to_vec()).unwrap_or_default();
        if let Err(e) = self.raw.propose_conf_change(context, cc) {
            return Err(AdminError::Busy(format!("raft refused the change: {e}")));
        }
        log::info!("membership change proposed: {request:?}");
        self.admin = Some(Waiter {
            target,
            reply: reply.clone(),
            deadline: Instant::now() + wait,
        });
        Ok(())
    }

    /// The leader is asked to remove itself: it hands its leadership to the voter that has the
    /// most of the log, and the request is to be asked again (of the new leader).
    fn hand_over_leadership(&mut self) -> AdminError {
        let me = self.raw.raft.id;
        let best = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(&id, _)| id != me && self.raw.raft.prs().conf().voters().contains(id))
            .max_by_key(|(_, p)| p.matched)
            .map(|(&id, _)| id);
        match best {
            Some(to) => {
                log::info!("node {me} is asked to remove itself: leadership goes to node {to}");
                self.raw.transfer_leader(to);
                AdminError::Retry(format!(
                    "node {me} leads: it hands its leadership to node {to} first; ask again"
                ))
            }
            None => AdminError::Refused(format!("node {me} is the only voter")),
        }
    }

    /// After every pass: promotes a learner that caught up, and answers a waiting request whose
    /// change is applied, or can no longer be awaited.
    pub(super) fn membership_pass(&mut self) {
        self.promote_caught_up();
        let Some(waiter) = &self.admin else {
            return;
        };
        let conf = self.raw.raft.prs().conf();
        let done = match waiter.target {
            Target::Voter(id) => conf.voters().contains(id),
            Target::Gone(id) => !conf.voters().contains(id) && !conf.learners().contains(&id),
        };
        let answer = if done {
            Some(Ok(self.cluster_view()))
        } else if self.raw.raft.state != StateRole::Leader {
            Some(Err(AdminError::Unknown(
                "this node lost its leadership before the change was applied: it may be \
                 applied or not (see cluster status)"
                    .into(),
            )))
        } else if Instant::now() >= waiter.deadline {
            Some(Err(AdminError::Timeout(match waiter.target {
                Target::Voter(id) => format!(
                    "node {id} is not a voter yet: it is made one once it has caught up (see \
                     cluster status; remove it to give up)"
                ),
                Target::Gone(id) => format!("node {id} is not removed yet (see cluster status)"),
            })))
        } else {
            None
        };
        if let Some(answer) = answer {
            let waiter = self.admin.take().expect("checked");
            let _ = waiter.reply.send(answer);
        }
    }

    /// The raft thread stops: a waiting request's change may be applied or not.
    pub(super) fn stopped_waiting(&mut self) {
        if let Some(waiter) = self.admin.take() {
            let _ = waiter.reply.send(Err(AdminError::Unknown(
                "this node stopped before the change was applied: it may be applied or not \
                 (see cluster status)"
                    .into(),
            )));
        }
    }

    /// The leader makes a learner whose log is close to its own a voter, one at a time.
    fn promote_caught_up(&mut self) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            // A later leadership samples its own log from scratch.
            self.marks = Marks::new();
            return;
        }
        let last = raft.raft_log.last_index();
        self.marks.sample(Instant::now(), self.heartbeat, last);
        if raft.has_pending_conf() {
            return;
        }
        let previous = self.marks.previous;
        let caught_up = raft.prs().conf().learners().iter().copied().find(|id| {
            raft.prs()
                .get(*id)
                .is_some_and(|p| caught_up(p.matched, last, previous))
        });
        let Some(id) = caught_up else {
            return;
        };
        let cc = conf_change(ConfChangeType::AddNode, id, None);
        match self.raw.propose_conf_change(Vec::new(), cc) {
            Ok(()) => log::info!("learner {id} caught up: proposed as a voter"),
            Err(e) => log::warn!("learner {id} not promoted: {e}"),
        }
    }

    /// The membership as this node sees it (matched indexes only on the leader).
    pub(super) fn cluster_view(&self) -> ClusterView {
        let raft = &self.raw.raft;
        let cs = raft.prs().conf().to_conf_state();
        let leading = raft.state == StateRole::Leader;
        let last = raft.raft_log.last_index();
        let member = |id: u64, voter: bool| {
            let matched = if id == raft.id {
                leading.then(|| raft.raft_log.persisted.min(last))
            } else {
                leading
                    .then(|| raft.prs().get(id).map(|p| p.matched))
                    .flatten()
            };
            MemberInfo {
                id,
                addr: self.addresses.get(&id).cloned(),
                voter,
                matched,
                lag: matched.map(|m| last.saturating_sub(m)),
            }
        };
        let mut members: Vec<MemberInfo> = cs
            .voters
            .iter()
            .map(|&id| member(id, true))
            .chain(cs.learners.iter().map(|&id| member(id, false)))
            .collect();
        members.sort_by_key(|m| m.id);
        ClusterView {
            node: raft.id,
            leader: raft.leader_id,
            term: raft.term,
            commit: raft.raft_log.committed,
            members,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cs(voters: &[u64], learners: &[u64]) -> ConfState {
        ConfState::from((voters.to_vec(), learners.to_vec()))
    }

    fn map(ids: &[u64]) -> Addresses {
        ids.iter().map(|&i| (i, format!("h:{i}"))).collect()
    }

    #[test]
    fn an_add_is_refused_for_a_member_a_taken_address_or_while_a_learner_catches_up() {
        let three = cs(&[1, 2, 3], &[]);
        assert_eq!(check_add(&three, &map(&[1, 2, 3]), 4, "h:4"), Ok(()));
        assert!(matches!(
            check_add(&three, &map(&[1, 2, 3]), 2, "h:9"),
            Err(AdminError::Refused(_))
        ));
        assert!(matches!(
            check_add(&three, &map(&[1, 2, 3]), 4, "h:2"),
            Err(AdminError::Refused(_))
        ));
        assert!(matches!(
            check_add(&cs(&[1, 2, 3], &[4]), &map(&[1, 2, 3, 4]), 5, "h:5"),
            Err(AdminError::Busy(_))
        ));
        assert!(matches!(
            check_add(&cs(&[1, 2, 3], &[4]), &map(&[1, 2, 3, 4]), 4, "h:4"),
            Err(AdminError::Refused(_))
        ));
        let seven = cs(&[1, 2, 3, 4, 5, 6, 7], &[]);
        assert!(matches!(
            check_add(&seven, &map(&[]), 8, "h:8"),
            Err(AdminError::Refused(_))
        ));
    }

    #[test]
    fn a_removal_needs_a_member_and_leaves_a_voter() {
        assert_eq!(check_remove(&cs(&[1, 2, 3], &[]), 2), Ok(()));
        assert_eq!(check_remove(&cs(&[1, 2, 3], &[4]), 4), Ok(()));
        assert!(matches!(
            check_remove(&cs(&[1, 2, 3], &[]), 9),
            Err(AdminError::Refused(_))
        ));
        assert!(matches!(
            check_remove(&cs(&[1], &[4]), 1),
            Err(AdminError::Refused(_))
        ));
    }

    #[test]
    fn a_learner_is_caught_up_within_64_entries_or_a_heartbeat_behind() {
        assert!(!caught_up(0, 10, u64::MAX), "nothing received yet");
        assert!(caught_up(36, 100, u64::MAX));
        assert!(!caught_up(35, 100, u64::MAX));
        // Steady writes: 500 entries behind, but holding what the leader had a beat ago.
        assert!(caught_up(10_000, 10_500, 9_900));
        assert!(!caught_up(9_000, 10_500, 9_900));
        let beat = std::time::Duration::from_millis(100);
        let mut marks = Marks::new();
        let start = marks.at;
        marks.sample(start, beat, 100);
        assert_eq!(marks.previous, u64::MAX, "too soon: no sample");
        marks.sample(start + beat, beat, 200);
        assert_eq!(marks.previous, u64::MAX, "one sample");
        marks.sample(start + beat * 2, beat, 300);
        assert_eq!(marks.previous, 200, "what the log held a beat ago");
    }

    #[test]
    fn addresses_follow_the_changes_in_the_log() {
        let mut addresses = map(&[1, 2, 3]);
        update_addresses(
            &mut addresses,
            &conf_change(ConfChangeType::AddLearnerNode, 4, Some("h:44")),
        );
        assert_eq!(addresses.get(&4).map(String::as_str), Some("h:44"));
        // A promotion carries no address: the learner's stays.
        update_addresses(
            &mut addresses,
            &conf_change(ConfChangeType::AddNode, 4, None),
        );
        assert_eq!(addresses.get(&4).map(String::as_str), Some("h:44"));
        update_addresses(
            &mut addresses,
            &conf_change(ConfChangeType::RemoveNode, 2, None),
        );
        assert_eq!(addresses.keys().copied().collect::<Vec<_>>(), [1, 3, 4]);
        // A bad address is not taken.
        update_addresses(
            &mut addresses,
            &conf_change(ConfChangeType::AddLearnerNode, 5, Some("no port")),
        );
        assert!(!addresses.contains_key(&5));
    }

    #[test]
    fn removals_are_recorded_with_their_index_and_forgotten_when_added_again() {
        let mut removals = Removals::new();
        update_removals(
            &mut removals,
            &conf_change(ConfChangeType::RemoveNode, 2, None),
            40,
        );
        update_removals(
            &mut removals,
            &conf_change(ConfChangeType::RemoveNode, 3, None),
            52,
        );
        assert_eq!(removals, [(2, 40), (3, 52)].into());
        let again = conf_change(ConfChangeType::AddLearnerNode, 2, Some("h:2"));
        update_removals(&mut removals, &again, 60);
        assert_eq!(removals, [(3, 52)].into());
    }
}
