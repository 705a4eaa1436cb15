//! One event-loop pass's handle into the engine. A loop opens a `Pass` when it wakes and drops
//! it when it has done what woke it; between the two, every write its commands collected goes
//! through the handle, which decides on its own what to do with it: commit it in rounds under
//! the commit lock (`commit::CommitRounds`: later rounds are published ahead of one closing
//! write), defer removals that no one waits for, write deferred ones when they are overdue, and
//! fsync on the loop's own thread when the loop says every one of its clients waits
//! (`durability::sync_inline`). The syncer knows how many passes run (a write made while one
//! runs does not wake it: the end of the pass does, once for all its writes).
//!
//! What the commits answer for the pass's own loop (its writers' `Completed` events, messages
//! for its blocked readers) comes back from `commit` directly, not through the loop's mailbox.
//!
//! The loop thus asks the engine two things only: this handle, and whether a point is durable
//! yet (`Engine::synced`).

use super::commit::{self, CommitRounds};
use super::{durability, Engine, Event, Uncommitted};

/// An event-loop pass under way (see the module doc). Dropping it writes what its commit rounds
/// published ahead of their write, and tells the syncer the pass is over.
pub struct Pass<'e> {
    engine: &'e Engine,
    /// The loop's index, its mailbox's.
    own: u32,
    /// Open from the pass's first `commit` to the next other call (or the drop).
    rounds: Option<CommitRounds<'e>>,
}

pub(super) fn begin(engine: &Engine, own: u32) -> Pass<'_> {
    engine.durability.pass_begins();
    Pass {
        engine,
        own,
        rounds: None,
    }
}

impl<'e> Pass<'e> {
    /// Commits what `uncommitted` collected as one round, and answers its writers: the
    /// events for this loop (`Completed` for its writers, messages for its blocked readers)
    /// are appended to `answers`, in the order they were made; other loops' are in their
    /// mailboxes. Events this loop's mailbox already held came before these. The commit lock
    /// stays held until the pass's rounds end, so that the loop can run what the answers let
    /// run (a `get` pipelined behind a `set`) and commit it in the next round.
    pub fn commit(&mut self, uncommitted: &mut Uncommitted, answers: &mut Vec<Event>) {
        let (engine, own) = (self.engine, self.own);
        let rounds = self
            .rounds
            .get_or_insert_with(|| commit::begin_rounds(engine, own));
        rounds.commit(uncommitted);
        rounds.take_completed(answers);
    }

    /// Hands over what is left after the rounds: writes someone waits for are committed now,
    /// removals of consumed messages only deferred (the next commit, anyone's, writes them
    /// first; or `write_deferred`), so that a pass of reads alone costs no RocksDB write.
    pub fn submit(&mut self, uncommitted: &mut Uncommitted) {
        self.end_rounds();
        self.engine.submit(uncommitted);
    }

    /// Writes the deferred removals now (they waited long enough).
    pub fn write_deferred(&mut self) {
        self.end_rounds();
        self.engine.commit_deferred();
    }

    /// The loop's every client waits for a reply held for durability, none for more than one
    /// write: no client can send anything more before the fsync, so the engine may fsync on
    /// this thread rather than have the syncer do it and wake the loop (see
    /// `durability::sync_inline`). Whether it synced.
    pub fn all_clients_wait(&mut self) -> bool {
        self.end_rounds();
        durability::sync_inline(self.engine)
    }

    /// Writes what the rounds published ahead of their write, and lets go of the commit lock.
    fn end_rounds(&mut self) {
        if let Some(rounds) = self.rounds.take() {
            rounds.finish();
        }
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.end_rounds();
        self.engine.durability.pass_ends();
    }
}
