//! What a connection's commands have in flight between its requests: writes waiting for the
//! committer, a `get` being answered key by key, and the messages it holds open. The connection
//! keeps it (`Client::state`) and asks it only what its budgets and timeouts need to know.

use std::collections::VecDeque;

use crate::engine::{Outcome, SyncPoint, Taken};
use crate::net::LoopStats;
use crate::protocol::{Reads, Reply, ReplyStyle, Values};

/// The commands' state on one connection (see the module doc).
#[derive(Default)]
pub(in crate::net) struct State {
    /// Writes with the committer, oldest first.
    pub(super) pending_writes: VecDeque<PendingWrite>,
    pub(super) get: Option<GetInProgress>,
    pub(super) open_reads: Vec<OpenRead>,
}

impl State {
    /// Whether some writes wait for the committer's answer.
    pub(in crate::net) fn writes_pending(&self) -> bool {
        !self.pending_writes.is_empty()
    }

    /// Whether a get is being answered (maybe blocked): the connection runs nothing else.
    pub(in crate::net) fn reading(&self) -> bool {
        self.get.is_some()
    }

    /// Whether it holds messages open (reliable reads not yet confirmed or given back).
    pub(in crate::net) fn holds_open(&self) -> bool {
        !self.open_reads.is_empty()
    }

    /// Body bytes of the values a get in progress holds, not yet in the output.
    pub(in crate::net) fn reply_bytes(&self) -> usize {
        self.get.as_ref().map_or(0, |get| get.bytes)
    }
}

/// A write sent to the committer, answered in order when its outcome arrives, spelled as its
/// request's [`ReplyStyle`] says.
pub(super) struct PendingWrite {
    /// Its reply when the write did not fail (each write command's file says which).
    pub(super) answer: fn(Outcome, &LoopStats) -> Reply,
    pub(super) noreply: bool,
    pub(super) style: ReplyStyle,
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
