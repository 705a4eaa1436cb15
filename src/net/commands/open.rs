//! Reliable reads: the messages a connection took with `/open` and holds until it confirms them
//! (`/close`), gives them back (`/abort`), lets `--open-timeout` pass, or goes away.

use std::time::Instant;

use super::state::OpenRead;
use super::Client;
use crate::engine::Taken;
use crate::net::Ctx;

/// Holds a message taken open, under `--open-timeout` if one is set.
pub(super) fn hold(client: &mut impl Client, queue: Vec<u8>, taken: Taken, ctx: &mut Ctx) {
    *ctx.next_wait_id += 1;
    let id = *ctx.next_wait_id;
    if let Some(timeout) = ctx.shared.open_timeout {
        ctx.open_timers
            .add(Instant::now() + timeout, client.id(), id);
    }
    client
        .state()
        .open_reads
        .push(OpenRead { id, queue, taken });
}

/// Confirms (`close`) or gives back (`abort`) this connection's open messages on `queue`.
pub(super) fn settle(client: &mut impl Client, queue: &[u8], confirm: bool, ctx: &mut Ctx) {
    let state = client.state();
    let (settled, kept): (Vec<OpenRead>, Vec<OpenRead>) = std::mem::take(&mut state.open_reads)
        .into_iter()
        .partition(|open| open.queue == queue);
    state.open_reads = kept;
    for open in settled {
        let engine = &ctx.shared.engine;
        if confirm {
            engine.confirm(&open.taken.queue, &[open.taken.seq], ctx.uncommitted);
        } else {
            engine.give_back(&open.taken.queue, &[open.taken.seq], ctx.uncommitted);
        }
    }
}

/// An open message was not confirmed in time: it goes back to its queue.
pub(in crate::net) fn expired(client: &mut impl Client, open_id: u64, ctx: &mut Ctx) {
    let open_reads = &mut client.state().open_reads;
    if let Some(at) = open_reads.iter().position(|o| o.id == open_id) {
        let open = open_reads.swap_remove(at);
        ctx.shared
            .engine
            .give_back(&open.taken.queue, &[open.taken.seq], ctx.uncommitted);
    }
}

/// Gives every open message back at once (the connection is going away).
pub(super) fn give_all_back(client: &mut impl Client, ctx: &mut Ctx) {
    for open in std::mem::take(&mut client.state().open_reads) {
        ctx.shared
            .engine
            .give_back(&open.taken.queue, &[open.taken.seq], ctx.uncommitted);
    }
}
