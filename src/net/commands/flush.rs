//! `flush <queue>` and `flush_all`: empty one queue, or every queue, keeping them; answered
//! `END` and `OK` once committed.

use super::{writes, Client};
use crate::engine::Outcome;
use crate::net::{Ctx, LoopStats};
use crate::protocol::{Reply, ReplyStyle};

/// Empties `queue`, or every queue if None.
pub(super) fn flush(
    queue: Option<&[u8]>,
    noreply: bool,
    style: ReplyStyle,
    client: &mut impl Client,
    ctx: &mut Ctx,
) {
    let me = client.conn_ref(ctx);
    ctx.shared.engine.flush(queue, me, ctx.uncommitted);
    let answer = match queue {
        Some(_) => flushed,
        None => flushed_all,
    };
    writes::awaiting(client, answer, noreply, style);
}

fn flushed(_: Outcome, _: &LoopStats) -> Reply {
    Reply::End
}

fn flushed_all(_: Outcome, _: &LoopStats) -> Reply {
    Reply::Ok
}
