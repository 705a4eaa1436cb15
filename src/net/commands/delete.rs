//! `delete <queue>`: removes a queue and its messages; answered `DELETED` or `NOT_FOUND` once
//! committed.

use super::{writes, Client};
use crate::engine::Outcome;
use crate::net::{Ctx, LoopStats};
use crate::protocol::{Reply, ReplyStyle};

pub(super) fn delete(
    queue: &[u8],
    noreply: bool,
    style: ReplyStyle,
    client: &mut impl Client,
    ctx: &mut Ctx,
) {
    let me = client.conn_ref(ctx);
    ctx.shared.engine.delete_queue(queue, me, ctx.uncommitted);
    writes::awaiting(client, deleted, noreply, style);
}

fn deleted(outcome: Outcome, _: &LoopStats) -> Reply {
    match outcome {
        Outcome::Deleted => Reply::Deleted,
        _ => Reply::NotFound,
    }
}
