//! A received snapshot installed without stopping the raft thread. Replacing the state column
//! families takes seconds for millions of messages (4.2 s for a million, measured), and a
//! raft thread busy that long answers no heartbeat: a leader that needs this follower for its
//! majority (the third member down) steps down, and the group has no leader until it is done.
//! So the install is split as TiKV splits it, raft state first, state machine after:
//!
//! 1. on the raft thread, one durable write puts the raft state at the snapshot (the log
//!    emptied, `S` marking the install: `RaftStorage::begin_install`); raft-rs then goes on
//!    with the log after the snapshot, appending, acknowledging and voting as usual, all of
//!    which needs only the raft state;
//! 2. a thread of its own replaces the state column families with the file's records
//!    (`snapshot::install::replace_state`) and reports `Input::Installed`;
//! 3. once that is done and the snapshot's `Ready` is persisted (raft-rs allows applying only
//!    what is persisted), the raft thread finishes (`RaftStorage::finish_install`), tells
//!    raft-rs the snapshot is applied, and applies the entries committed meanwhile in log
//!    order, read back from the log (`Install::committed_to`): however long the install, they
//!    take no memory while they wait (they are persisted, and compaction keeps every entry
//!    after the applied index).
//!
//! A crash at any point: `S` makes the next start replace the state again before anything
//! reads it, and the log written after the snapshot is kept (`RaftStorage::open`).

use std::thread::JoinHandle;

use raft::prelude::Snapshot;
use raft::{GetEntriesContext, Storage};

use super::driver::{Driver, Input};

/// An install under way.
pub(super) struct Install {
    pub index: u64,
    pub term: u64,
    /// raft-rs knows the snapshot's `Ready` persisted.
    persisted: bool,
    /// What the state replacement did: records written, or why it failed.
    replaced: Option<Result<u64, String>>,
    /// The last entry committed after the snapshot, if any: those up to it are applied once
    /// it is installed.
    pub committed_to: Option<u64>,
    thread: Option<JoinHandle<()>>,
}

impl Install {
    /// Waits for the state replacement's thread (the node stops, or another snapshot comes).
    pub fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Step 1, and step 2 started: for the `Ready` holding snapshot `snap`.
pub(super) fn begin(driver: &mut Driver, snap: &Snapshot) -> Result<(), String> {
    if let Some(mut earlier) = driver.install.take() {
        // A newer snapshot replaces it (the entries it deferred are in the newer one).
        log::info!(
            "snapshot {} replaces snapshot {} being installed",
            snap.get_metadata().index,
            earlier.index
        );
        earlier.join();
    }
    let path = driver
        .raw
        .mut_store()
        .begin_install(snap)
        .map_err(|e| format!("installing a snapshot failed: {e}"))?;
    let (index, term) = (snap.get_metadata().index, snap.get_metadata().term);
    if driver
        .installed_file
        .as_ref()
        .is_some_and(|(p, _)| *p == path)
    {
        // The same snapshot received again: its file is needed once more.
        driver.installed_file = None;
    }
    let db = driver.raw.store().db().clone();
    let report = driver.inputs.clone();
    let thread = std::thread::Builder::new()
        .name("raft-install".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            let replaced = super::snapshot::install::replace_state(&db, &path);
            if let Ok(records) = &replaced {
                log::info!(
                    "snapshot {index} (term {term}): {records} records written in {:?}",
                    started.elapsed()
                );
            }
            let _ = report.send(Input::Installed {
                index,
                term,
                replaced,
            });
        })
        .map_err(|e| format!("cannot start a thread to install a snapshot: {e}"))?;
    driver.install = Some(Install {
        index,
        term,
        persisted: false,
        replaced: None,
        committed_to: None,
        thread: Some(thread),
    });
    Ok(())
}

/// The `Ready` holding snapshot `index` persisted.
pub(super) fn persisted(driver: &mut Driver, index: u64) -> Result<(), String> {
    match driver.install.as_mut() {
        Some(install) if install.index == index => install.persisted = true,
        _ => return Ok(()),
    }
    finish_if_done(driver)
}

/// The state replacement of snapshot (`index`, `term`) ended.
pub(super) fn replaced(
    driver: &mut Driver,
    index: u64,
    term: u64,
    replaced: Result<u64, String>,
) -> Result<(), String> {
    match driver.install.as_mut() {
        Some(install) if (install.index, install.term) == (index, term) => {
            install.replaced = Some(replaced);
            install.join();
        }
        // Of a snapshot a newer one replaced.
        _ => return Ok(()),
    }
    finish_if_done(driver)
}

/// Step 3, once both are done.
fn finish_if_done(driver: &mut Driver) -> Result<(), String> {
    let done = driver
        .install
        .as_ref()
        .is_some_and(|i| i.persisted && i.replaced.is_some());
    if !done {
        return Ok(());
    }
    let install = driver.install.take().expect("checked");
    let records = install
        .replaced
        .expect("checked")
        .map_err(|e| format!("installing snapshot {} failed: {e}", install.index))?;
    driver
        .raw
        .mut_store()
        .finish_install(install.index, install.term, records)
        .map_err(|e| format!("installing snapshot {} failed: {e}", install.index))?;
    // The installed state is applied up to it; raft-rs allows saying so once it knows the
    // snapshot persisted (applied <= persisted).
    driver.raw.advance_apply_to(install.index);
    // Its file goes once an fsync asked for from now on is done (`Driver::synced`): a crash
    // before that may find `S` again, and redo the install from it.
    driver.installed_file = Some((
        super::snapshot::received_path(
            &super::snapshot::dir(driver.raw.store().db()),
            install.index,
            install.term,
        ),
        None,
    ));
    driver.applier.restored();
    driver.snapshots_installed += 1;
    // The group's number comes with the state: a joiner learns it here.
    let group = super::storage::stored_group_id(driver.raw.store().db());
    driver.status.group().set(group);
    // The snapshot's address map (stored beside its membership) replaces this node's.
    if let Some(addresses) = driver.raw.store().addresses() {
        driver.addresses = addresses.clone();
    }
    driver.removals = super::storage::stored_removals(driver.raw.store().db());
    driver.members_changed();
    let Some(last) = install.committed_to else {
        return Ok(());
    };
    let mut next = install.index + 1;
    while next <= last {
        let entries = driver
            .raw
            .store()
            .entries(next, last + 1, APPLY_BYTES, GetEntriesContext::empty(false))
            .map_err(|e| format!("reading entries {next}..={last} to apply: {e}"))?;
        let Some(end) = entries.last().map(|e| e.index) else {
            return Err(format!("entries {next}..={last} are not in the log"));
        };
        super::apply::apply(driver, entries)?;
        next = end + 1;
    }
    Ok(())
}

/// At most this many bytes of entries are read back and applied at once.
const APPLY_BYTES: u64 = 4 << 20;
