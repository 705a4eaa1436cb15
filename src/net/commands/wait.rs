//! Blocking reads (`/t=`): a get whose queue is empty waits, registered with the engine, until
//! a message is delivered to it, its deadline passes, the server stops or the connection goes.

use std::sync::atomic::Ordering;

use super::{get, open, Client};
use crate::engine::Taken;
use crate::net::Ctx;

/// A message arrived for a blocked read. Hands it back if this connection was not waiting for
/// it (the caller gives it back to the queue).
pub(in crate::net) fn deliver(
    client: &mut impl Client,
    wait_id: u64,
    taken: Taken,
    ctx: &mut Ctx,
) -> Result<(), Taken> {
    let state = client.state();
    let Some(mut in_progress) = state.get.take() else {
        return Err(taken);
    };
    if in_progress.waiting != Some(wait_id) {
        state.get = Some(in_progress);
        return Err(taken);
    }
    in_progress.waiting = None;
    // The message it was handed is charged as a reply from now on.
    client.reserve_output(0);
    // The engine hands a waiting read its message open (a peek only sees it): a plain read
    // confirms it.
    if taken.open && !in_progress.reads[in_progress.next].open {
        let engine = &ctx.shared.engine;
        engine.confirm(&taken.queue, &[taken.seq], ctx.uncommitted);
    }
    get::accept(client, &mut in_progress, taken, ctx);
    client.state().get = Some(in_progress);
    get::resume(client, ctx);
    Ok(())
}

/// A blocked read's deadline passed.
pub(in crate::net) fn expired(client: &mut impl Client, wait_id: u64, ctx: &mut Ctx) {
    let me = client.conn_ref(ctx);
    let Some(in_progress) = client.state().get.as_mut() else {
        return;
    };
    if in_progress.waiting != Some(wait_id) {
        return;
    }
    let queue = in_progress.reads[in_progress.next].queue();
    if ctx.shared.engine.cancel_wait(queue, me, wait_id) {
        ctx.stats.get_misses.fetch_add(1, Ordering::Relaxed);
        in_progress.waiting = None;
        in_progress.next += 1;
        client.reserve_output(0);
        get::resume(client, ctx);
    }
    // Otherwise a message is already on its way to us: `deliver` will finish the read.
}

/// Ends a blocked read now (the server is stopping), answering what was found so far.
pub(in crate::net) fn end(client: &mut impl Client, ctx: &mut Ctx) {
    let waiting = client.state().get.as_ref().and_then(|g| g.waiting);
    if let Some(wait_id) = waiting {
        expired(client, wait_id, ctx);
    }
}

/// The connection is going away: stop waiting and give every open message back at once.
pub(in crate::net) fn release(client: &mut impl Client, ctx: &mut Ctx) {
    let me = client.conn_ref(ctx);
    client.reserve_output(0);
    if let Some(in_progress) = client.state().get.take() {
        if let Some(wait_id) = in_progress.waiting {
            let queue = in_progress.reads[in_progress.next].queue();
            ctx.shared.engine.cancel_wait(queue, me, wait_id);
        }
    }
    open::give_all_back(client, ctx);
}
