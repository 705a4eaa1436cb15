//! What a caller asks the committer to write: the vocabulary of `Uncommitted`, shared by the
//! modules that collect writes (reading, the sweep, the API) and the one that commits them.

use std::sync::Arc;

use smallvec::SmallVec;

use super::conn_ref::ConnRef;
use super::QueueRef;

/// A queue's name as a put names it: inline up to 32 bytes (most are), so that a put
/// allocates nothing for it.
pub type QueueName = SmallVec<[u8; 32]>;

/// One write to commit.
pub enum Op {
    Put {
        queue: QueueName,
        flags: u32,
        expires_at: u64,
        body: Vec<u8>,
        reply_to: ConnRef,
    },
    /// A consumed message to delete (and its queue's record to rewrite).
    Remove {
        queue: QueueRef,
        seq: u64,
    },
    /// Rewrite the queue's record only (a message was opened: the record lists open ones).
    SaveRecord {
        queue: QueueRef,
    },
    DeleteQueue {
        name: Vec<u8>,
        reply_to: ConnRef,
    },
    /// Empty one queue, or all of them.
    Flush {
        name: Option<Vec<u8>>,
        reply_to: ConnRef,
    },
}

impl Op {
    pub fn reply_to(&self) -> Option<ConnRef> {
        match self {
            Op::Put { reply_to, .. }
            | Op::DeleteQueue { reply_to, .. }
            | Op::Flush { reply_to, .. } => Some(*reply_to),
            _ => None,
        }
    }
}

/// Adds `op` to `ops`, leaving out a record rewrite that the op before it already asks for:
/// a pass of gets from one queue rewrites its record once, and carries one op to the next
/// commit, not one per get.
pub fn push(ops: &mut Vec<Op>, op: Op) {
    if let (
        Op::SaveRecord { queue },
        Some(Op::SaveRecord { queue: last } | Op::Remove { queue: last, .. }),
    ) = (&op, ops.last())
    {
        if Arc::ptr_eq(queue, last) {
            return;
        }
    }
    ops.push(op);
}
