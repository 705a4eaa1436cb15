//! What each command does, apart from the connection it arrives on: one file per command
//! family, each a few free functions over the small interface a connection provides
//! ([`Client`]: replies, output room, its state in flight) and the loop's [`Ctx`] (the engine,
//! counters, timers). `execute` is the one dispatch over the protocol crate's [`Command`], as
//! memcached's `proto_text.c` dispatches to its `process_*_command` functions; the codecs stay
//! pure in the protocol crate, and `Connection` knows bytes, buffers, budgets and timers only.
//!
//! Writes (`store`, `delete`, `flush`) are handed to the engine and answered in order when
//! committed (`writes`); reads (`get`, with `open` and `wait`) are answered at once, or when a
//! message arrives or the wait times out; the rest (`stats`, `connection_control`) at once.
//!
//! Adding a command: its variant and spellings in the protocol crate, its file here with a line
//! in `execute` (and in `write_weight` if the committer answers it), and what it asks of the
//! engine in `Engine`'s API.

mod client;
mod connection_control;
mod delete;
mod flush;
mod get;
mod open;
mod state;
mod stats;
mod store;
#[cfg(test)]
mod tests;
mod wait;
mod writes;

pub(super) use client::Client;
pub(super) use get::{resume as resume_get, waits_for_room};
pub(super) use open::expired as open_expired;
pub(super) use state::State;
pub(super) use wait::{
    deliver, end as end_wait, expired as wait_expired, release as release_reads,
};
pub(super) use writes::answered as write_answered;

use super::Ctx;
use crate::engine::Error;
use crate::protocol::{Command, ErrorKind, ReplyStyle};

/// Runs one request; its reply, now or when its write is committed or its read answered, is
/// spelled as `style` says.
pub(super) fn execute(
    command: Command,
    style: ReplyStyle,
    client: &mut impl Client,
    ctx: &mut Ctx,
) {
    match command {
        Command::Set(set) => store::set(set, style, client, ctx),
        Command::Get(reads) => get::get(reads, style, client, ctx),
        Command::Delete { queue, noreply } => delete::delete(&queue, noreply, style, client, ctx),
        Command::Flush { queue, noreply } => {
            flush::flush(Some(&queue), noreply, style, client, ctx)
        }
        Command::FlushAll { noreply } => flush::flush(None, noreply, style, client, ctx),
        Command::Stats(kind) => stats::stats(kind, style, client, ctx),
        Command::Info => stats::info(style, client, ctx),
        Command::Version => connection_control::version(style, client),
        Command::Verbosity { level, noreply } => {
            connection_control::verbosity(level, noreply, style, client)
        }
        Command::Quit => connection_control::quit(style, client),
        Command::Noop => connection_control::noop(style, client),
        Command::Cluster => connection_control::cluster(style, client, ctx),
    }
}

/// Commands that go through the committer and may be pipelined behind one another.
pub(super) fn is_write(command: &Command) -> bool {
    matches!(
        command,
        Command::Set(_) | Command::Delete { .. } | Command::Flush { .. } | Command::FlushAll { .. }
    )
}

/// `cluster …` (protocol-spec/cluster.md 7): under `--cluster` the connection becomes a pipe to
/// this member's admin side (`super::forward`); answered here only when that fails.
pub(super) fn is_admin_command(command: &Command) -> bool {
    matches!(command, Command::Cluster)
}

/// Commands on the queues, which a member that does not serve forwards to the leader
/// (`super::forward`); the rest are answered by every member.
pub(super) fn is_queue_command(command: &Command) -> bool {
    matches!(command, Command::Get(_)) || is_write(command)
}

/// Body bytes a write takes from the server's write budget while in flight.
pub(super) fn write_weight(command: &Command, ctx: &Ctx) -> usize {
    match command {
        Command::Set(set) => store::weight(set, ctx),
        _ => 0,
    }
}

/// How an engine error is spelled in a reply.
fn error_kind(error: Error) -> ErrorKind {
    match error {
        Error::Storage => ErrorKind::Storage,
        Error::QueueFull => ErrorKind::QueueFull,
        Error::ShuttingDown => ErrorKind::ShuttingDown,
        Error::NoLeader => ErrorKind::NoLeader,
        Error::DiskFull => ErrorKind::DiskFull,
        Error::FanoutLimit => ErrorKind::FanoutLimit,
        Error::TooManyQueues => ErrorKind::TooManyQueues,
        // A read that has no room waits for it (`get::resume`): never answered with this.
        Error::NoRoom(_) => ErrorKind::Storage,
    }
}
