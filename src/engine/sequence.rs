//! Who may hand out sequence numbers: only the committer, holding the commit lock. A queue's
//! `NextSeq` can be read by anyone but changed only with the one `SeqToken`, which lives inside
//! the commit lock's state (`commit::CommitState`): the rule is the type's, not a comment's.

/// The proof of holding the commit lock. Made once, by `CommitState::new`, and kept inside the
/// lock, so only its holder can lend it out.
pub struct SeqToken(());

impl SeqToken {
    /// Only `CommitState::new` calls this.
    pub(super) fn new() -> SeqToken {
        SeqToken(())
    }
}

/// A queue's next sequence number. Only the committer hands numbers out, and only while it holds
/// the commit lock: `assign` and `roll_back` take the lock's `SeqToken` as proof, so no other code
/// can change it (everyone may look). Numbers thus follow the order of the writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextSeq(u64);

impl NextSeq {
    /// Where a queue's numbers start: 0 for a new queue, its tail for one found on disk at
    /// start-up (before anything is committed).
    pub fn starting_at(seq: u64) -> NextSeq {
        NextSeq(seq)
    }

    pub fn get(self) -> u64 {
        self.0
    }

    /// Hands out the next number.
    pub fn assign(&mut self, _token: &mut SeqToken) -> u64 {
        self.0 += 1;
        self.0 - 1
    }

    /// Takes back every number handed out since `tail` (their write failed).
    pub fn roll_back(&mut self, tail: u64, _token: &mut SeqToken) {
        self.0 = tail;
    }
}
