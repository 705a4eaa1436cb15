//! What every write command shares: it is handed to the engine, and answered in order when the
//! committer's outcome for it comes back. Each write command's file says what its reply is.

use super::state::PendingWrite;
use super::{error_kind, Client};
use crate::engine::Outcome;
use crate::net::{Ctx, LoopStats};
use crate::protocol::{Reply, ReplyStyle};

/// Remembers a write just handed to the engine: `answer` spells its reply when it did not fail.
pub(super) fn awaiting(
    client: &mut impl Client,
    answer: fn(Outcome, &LoopStats) -> Reply,
    noreply: bool,
    style: ReplyStyle,
) {
    client.state().pending_writes.push_back(PendingWrite {
        answer,
        noreply,
        style,
    });
}

/// The committer finished this connection's oldest outstanding write.
pub(in crate::net) fn answered(client: &mut impl Client, outcome: Outcome, ctx: &mut Ctx) {
    let Some(pending) = client.state().pending_writes.pop_front() else {
        log::error!("write outcome for a connection with no write outstanding");
        return;
    };
    let (reply, noreply) = match outcome {
        Outcome::Failed(error) => (Reply::Error(error_kind(error)), false),
        outcome => ((pending.answer)(outcome, ctx.stats), pending.noreply),
    };
    if !noreply {
        client.reply(&reply, &pending.style);
    }
}
