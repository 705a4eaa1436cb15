//! Commands about the connection and the server rather than a queue: `version`, `verbosity`,
//! `quit` and `noop`, answered at once; and `cluster` when it cannot be handed to the admin
//! side.

use super::Client;
use crate::net::Ctx;
use crate::protocol::{ErrorKind, Reply, ReplyStyle};

pub(super) fn version(style: ReplyStyle, client: &mut impl Client) {
    client.reply(&Reply::Version(env!("CARGO_PKG_VERSION")), &style);
}

/// Sets the log level.
pub(super) fn verbosity(level: u32, noreply: bool, style: ReplyStyle, client: &mut impl Client) {
    log::set_max_level(match level {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    });
    if !noreply {
        client.reply(&Reply::Ok, &style);
    }
}

pub(super) fn quit(style: ReplyStyle, client: &mut impl Client) {
    // Nothing in text and mqmq; a binary QUIT's success response.
    client.reply(&Reply::Closing, &style);
    client.close();
}

/// `cluster …` answered here: a single server has no membership (`ERROR`, as for any command
/// it does not know); a member whose admin side could not be reached answers `no leader`
/// (nothing was done, protocol-spec/cluster.md 7).
pub(super) fn cluster(style: ReplyStyle, client: &mut impl Client, ctx: &Ctx) {
    let kind = if ctx.shared.forwarding.is_some() {
        ErrorKind::NoLeader
    } else {
        ErrorKind::UnknownCommand
    };
    client.reply(&Reply::Error(kind), &style);
}

/// Not a write: it runs once every earlier write is answered, so its reply follows theirs (and
/// waits for them to be on disk).
pub(super) fn noop(style: ReplyStyle, client: &mut impl Client) {
    client.reply(&Reply::Noop, &style);
}
