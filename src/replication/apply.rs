//! Committed entries, applied on every node (the leader included) in log order: each normal
//! entry's effect goes into one write batch with the new applied index (and the membership,
//! after a change), written without an fsync: the log, already durable, can replay it. Then
//! raft-rs learns the applied index, which it needs to allow the next membership change and to
//! know what a new leader must look at.
//!
//! The state machine is an `Applier`; plan step 4 makes it the queue engine. This node's own
//! proposals are settled here too: an entry is this node's proposal if it has the index and
//! term the proposal got (two entries with the same index and term are the same entry).

use raft::prelude::{ConfChange, ConfChangeV2, Entry, EntryType};
use rocksdb::WriteBatch;

use super::driver::Driver;

/// What became of a proposal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Committed, and applied on this node.
    Committed,
    /// Never committed: this node was not the leader, or another entry took its place.
    Dropped,
    /// The node stopped before finding out: it may be committed or not.
    Unknown,
}

/// The replicated state machine.
pub trait Applier: Send + 'static {
    /// Adds what committed entry `entry` (a normal entry with data) does to `batch`, which is
    /// written with the applied index.
    fn apply(&mut self, entry: &Entry, batch: &mut WriteBatch);

    /// After the `apply` of a round's last entry, before `batch` is written: an applier that
    /// gathers its entries apart (cheaper than into `batch` one by one) adds them here.
    fn finish(&mut self, _batch: &mut WriteBatch) {}

    /// This node's proposal `id` settled (called once `apply`'s batch is written, for
    /// `Committed`).
    fn settled(&mut self, id: u64, outcome: Outcome);

    /// This node became the established leader (it applied an entry of its own term, so every
    /// committed entry before it is applied), or stopped being the leader.
    fn leading(&mut self, _established: bool) {}

    /// The state was replaced by a snapshot's (on a follower): whatever the state machine
    /// keeps in memory must be read again, as after a restart.
    fn restored(&mut self) {}

    /// This node's copy is damaged and the group holds every committed entry without it
    /// (`super::quarantine`); the decision is on disk (`super::resync`): drop the copy.
    /// `mqd serve` exits for its next start to empty the data directory.
    fn discard(&mut self) {}

    /// A membership change removed this node from the group, and its raft thread ended:
    /// `mqd serve` stops as on SIGTERM (and exits 0: a supervisor leaves it stopped).
    fn removed(&mut self) {}
}

/// A proposal of this node awaiting its entry's commit.
pub(super) struct Pending {
    pub id: u64,
    pub index: u64,
    pub term: u64,
}

pub(super) fn apply(driver: &mut Driver, entries: Vec<Entry>) -> Result<(), String> {
    if let Some(install) = driver.install.as_mut() {
        // After the snapshot being installed, which they change: read back from the log once
        // it is (`installing`).
        if let Some(last) = entries.last() {
            install.committed_to = Some(last.index);
        }
        return Ok(());
    }
    let Some(last) = entries.last() else {
        return Ok(());
    };
    let (last_index, last_term) = (last.index, last.term);
    let mut batch = WriteBatch::default();
    let mut conf_state = None;
    for entry in &entries {
        // The type first: the entry that leaves a joint membership is an EMPTY
        // ConfChangeV2 (notes P4), while an empty normal entry is a new leader's.
        match entry.get_entry_type() {
            EntryType::EntryNormal if !entry.data.is_empty() => {
                driver.applier.apply(entry, &mut batch)
            }
            EntryType::EntryNormal => {}
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                if let Some(cs) = apply_conf_change(driver, entry) {
                    conf_state = Some(cs);
                }
            }
        }
    }
    driver.applier.finish(&mut batch);
    let membership = conf_state
        .as_ref()
        .map(|cs| (cs, &driver.addresses, &driver.removals));
    driver
        .raw
        .mut_store()
        .apply(batch, last_index, last_term, membership)
        .map_err(|e| format!("applying up to {last_index} failed: {e}"))?;
    if let Some(cs) = &conf_state {
        driver.members_changed();
        if !super::membership::is_member(cs, driver.raw.raft.id) {
            driver.removed_at = Some(last_index);
        }
    }
    driver.raw.advance_apply_to(last_index);
    for entry in &entries {
        settle(driver, entry.index, entry.term);
    }
    Ok(())
}

/// A membership change; `None` if the entry is not one raft-rs accepts (then no node
/// applies it: every node sees the same entry and the same membership before it).
fn apply_conf_change(driver: &mut Driver, entry: &Entry) -> Option<raft::prelude::ConfState> {
    let parsed = if entry.get_entry_type() == EntryType::EntryConfChange {
        protobuf::Message::parse_from_bytes(&entry.data).map(|cc: ConfChange| v2(&cc))
    } else {
        protobuf::Message::parse_from_bytes(&entry.data)
    };
    let result = parsed
        .map_err(|e| e.to_string())
        .and_then(|cc: ConfChangeV2| {
            let cs = driver
                .raw
                .apply_conf_change(&cc)
                .map_err(|e| e.to_string())?;
            Ok((cs, cc))
        });
    match result {
        Ok((cs, cc)) => {
            // The new member's address came in the change: every member learns it here.
            super::membership::update_addresses(&mut driver.addresses, &cc);
            super::membership::update_removals(&mut driver.removals, &cc, entry.index);
            log::info!(
                "raft membership at {}: {cs:?}, addresses {:?}",
                entry.index,
                driver.addresses
            );
            Some(cs)
        }
        Err(e) => {
            log::error!("membership change at {} not applied: {e}", entry.index);
            None
        }
    }
}

/// A v1 change as the one-change v2 change raft-rs makes of it (`ConfChangeI`, which raft-rs
/// does not export).
fn v2(cc: &ConfChange) -> ConfChangeV2 {
    let mut v2 = super::membership::conf_change(cc.get_change_type(), cc.node_id, None);
    v2.context = cc.context.clone();
    v2
}

fn settle(driver: &mut Driver, index: u64, term: u64) {
    while let Some(pending) = driver.pending.front() {
        if pending.index > index {
            break;
        }
        let outcome = if pending.index == index && pending.term == term {
            Outcome::Committed
        } else {
            Outcome::Dropped
        };
        let id = pending.id;
        driver.pending.pop_front();
        driver.applier.settled(id, outcome);
    }
}
