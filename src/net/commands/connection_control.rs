//! Commands about the connection and the server rather than a queue: `version`, `verbosity`,
//! `quit` and `noop`, answered at once.

use super::Client;
use crate::protocol::{Reply, ReplyStyle};

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

/// Not a write: it runs once every earlier write is answered, so its reply follows theirs (and
/// waits for them to be on disk).
pub(super) fn noop(style: ReplyStyle, client: &mut impl Client) {
    client.reply(&Reply::Noop, &style);
}
