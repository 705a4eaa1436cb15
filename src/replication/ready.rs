//! What the raft thread does with each `Ready`, in the order that survives a power cut (notes
//! §2, rules R1-R9; raft-rs's docs for `Ready`, `advance_append_async` and `on_persist_ready`):
//!
//! 1. the leader's messages (appends, heartbeats) leave at once: it counts itself towards a
//!    commit only once its own copy is persisted (raft thesis 10.2.1);
//!    a snapshot (on a follower) has its raft state written, durably, before anything else of
//!    the Ready, and its state machine's installed beside (`installing`);
//! 2. new entries and the hard state are written (no fsync), replacing any conflicting tail;
//! 3. messages that promise what is on disk (votes, append acknowledgements) wait for the
//!    fsync covering that write: a vote or an acknowledgement a power cut takes back could
//!    elect two leaders in a term or lose a committed entry;
//!    a follower fsyncs on the raft thread itself (`WalSync::sync_here`), as etcd's raft loop
//!    does: it has nothing to do meanwhile but queue the next appends, which the next fsync
//!    then covers together, and a hand-off to the syncer and back costs two context switches
//!    per entry. The leader hands its fsync over: it sends appends and takes acknowledgements
//!    while its own copy is fsynced. A Ready installing a snapshot hands it over too;
//! 4. a Ready with nothing to fsync (only the commit index moved) rides on the fsync in
//!    progress, or counts as persisted at once when none is;
//! 5. committed entries are applied after the hard state carrying their commit was written, so
//!    a crash never leaves the applied index past the commit index (qdrant#1172).

use raft::StateRole;

use super::driver::{Driver, Unsynced};

pub(super) fn handle_ready(driver: &mut Driver) -> Result<(), String> {
    let mut ready = driver.raw.ready();
    driver.transport.send(ready.take_messages());
    let mut snapshot = None;
    if !ready.snapshot().is_empty() {
        // The raft state at the snapshot is written (durably) before anything of this Ready;
        // the state machine's follows on a thread of its own (`installing`).
        super::installing::begin(driver, ready.snapshot())?;
        snapshot = Some(ready.snapshot().get_metadata().index);
    }
    driver
        .raw
        .mut_store()
        .persist(ready.entries(), ready.hs())
        .map_err(|e| format!("raft log write failed: {e}"))?;
    let mut committed = ready.take_committed_entries();
    let mut after_sync = ready.take_persisted_messages();
    let number = ready.number();
    if ready.must_sync() {
        driver.unsynced.push_back(Unsynced {
            requested: number,
            number,
            messages: after_sync,
            snapshot,
        });
        driver.raw.advance_append_async(ready);
        if let Some((_, after @ None)) = &mut driver.installed_file {
            *after = Some(number);
        }
        if driver.raw.raft.state == StateRole::Leader || snapshot.is_some() {
            driver.syncer.request(number);
        } else if let Some(covered) = driver.syncer.sync_here(number) {
            driver.synced(covered)?;
        }
    } else if let Some(last) = driver.unsynced.back_mut() {
        // Persisted by the fsync that persists the Ready before it.
        last.number = number;
        last.messages.append(&mut after_sync);
        driver.raw.advance_append_async(ready);
    } else {
        // Nothing to fsync and nothing waiting for one: persisted now.
        driver.transport.send(after_sync);
        let mut light = driver.raw.advance_append(ready);
        if let Some(commit) = light.commit_index() {
            // Persisting moved the commit index: write it before applying up to it.
            let mut hard_state = driver.raw.store().hard_state().clone();
            hard_state.commit = commit;
            driver
                .raw
                .mut_store()
                .persist(&[], Some(&hard_state))
                .map_err(|e| format!("raft log write failed: {e}"))?;
        }
        driver.transport.send(light.take_messages());
        committed.extend(light.take_committed_entries());
    }
    super::apply::apply(driver, committed)
}
