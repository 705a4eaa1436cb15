//! `set` (mqmq `Put`): appends a message to a queue (and its fan-out copies); answered
//! `STORED` once committed.

use std::sync::atomic::Ordering;

use super::{writes, Client};
use crate::engine::{self, Outcome};
use crate::net::{Ctx, LoopStats};
use crate::protocol::{Reply, ReplyStyle, Set};

pub(super) fn set(set: Set, style: ReplyStyle, client: &mut impl Client, ctx: &mut Ctx) {
    ctx.stats.set_cmds.fetch_add(1, Ordering::Relaxed);
    let expires_at = set.expires_at(engine::now_ms);
    let me = client.conn_ref(ctx);
    let noreply = set.noreply;
    ctx.shared.engine.put(
        &set.queue,
        set.flags,
        expires_at,
        set.body,
        me,
        ctx.uncommitted,
    );
    writes::awaiting(client, stored, noreply, style);
}

/// Body bytes a `set` adds to the server's write budget: its body once per queue it is
/// written to (its fan-out copies are written too).
pub(super) fn weight(set: &Set, ctx: &Ctx) -> usize {
    let copies = 1 + ctx.shared.engine.fanout_count(&set.queue);
    set.body.len().saturating_mul(copies)
}

fn stored(_: Outcome, stats: &LoopStats) -> Reply {
    stats.set_hits.fetch_add(1, Ordering::Relaxed);
    Reply::Stored
}
