//! What a connection has in flight besides its buffers: writes waiting for the committer, a
//! `get` being answered key by key, and the messages it holds open. Plain data, shared by the
//! connection's I/O loop (`connection`) and what its commands do (`session`), so that neither
//! of those two modules needs the other's internals.

use crate::engine::{SyncPoint, Taken};
use crate::protocol::{Command, Reads, ReplyStyle, Values};

/// A write sent to the committer, answered in order when its outcome arrives, spelled as its
/// request's [`ReplyStyle`] says (kept beside it in the connection's queue of pending writes).
#[derive(Debug, Clone, Copy)]
pub(super) enum PendingWrite {
    Put { noreply: bool },
    Delete { noreply: bool },
    Flush { noreply: bool },
    FlushAll { noreply: bool },
}

/// A `get` being answered key by key; it may be waiting for a message.
pub(super) struct GetInProgress {
    pub(super) reads: Reads,
    pub(super) next: usize,
    pub(super) values: Values,
    /// Body bytes in `values`.
    pub(super) bytes: usize,
    /// The wait id of the read blocked now.
    pub(super) waiting: Option<u64>,
    /// The reply waits for this point: the latest write of a message in `values`.
    pub(super) durable_at: SyncPoint,
    /// The next read found a message of this many bytes, longer than the connection had room
    /// for: it is tried again once the room may be there.
    pub(super) room_needed: Option<usize>,
    /// How its request's reply is spelled (a binary GETQ's miss is silent, a meta `mg` returns
    /// the flags it asked for): the reply may come long after the request was parsed.
    pub(super) style: ReplyStyle,
}

/// A message this connection opened and has not yet closed or aborted.
pub(super) struct OpenRead {
    /// Unique within the loop, for `--open-timeout`.
    pub(super) id: u64,
    pub(super) queue: Vec<u8>,
    pub(super) taken: Taken,
}

/// Commands that go through the committer and may be pipelined behind one another.
pub fn is_write(command: &Command) -> bool {
    matches!(
        command,
        Command::Set(_) | Command::Delete { .. } | Command::Flush { .. } | Command::FlushAll { .. }
    )
}
