//! The reports: memcache `stats`, `stats queue`, `stats reset` and mqmq `Info`, answered at once
//! from the counters (`monitoring::report` builds them).

use super::Client;
use crate::net::monitoring::report;
use crate::net::Ctx;
use crate::protocol::{Reply, ReplyStyle, StatsKind};

pub(super) fn stats(kind: StatsKind, style: ReplyStyle, client: &mut impl Client, ctx: &Ctx) {
    let reply = match kind {
        StatsKind::General => Reply::Stats(report::general(ctx.shared)),
        StatsKind::Queue => Reply::Stats(report::queues(ctx.shared)),
        StatsKind::Reset => {
            report::reset(ctx.shared);
            Reply::Reset
        }
    };
    client.reply(&reply, &style);
}

pub(super) fn info(style: ReplyStyle, client: &mut impl Client, ctx: &Ctx) {
    client.reply(&Reply::Info(report::info(ctx.shared)), &style);
}
