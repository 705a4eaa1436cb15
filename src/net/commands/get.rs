//! `get` (mqmq `Get`) with its modes: a plain take, `/peek`, `/open` (a reliable read, settled
//! by `open`), `/close` and `/abort`, and `/t=` (blocking: see `wait`). One get can name many
//! keys; they are answered in order, key by key, until one has to wait for a message or for
//! room for one.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::state::{GetInProgress, OpenRead};
use super::{error_kind, open, Client};
use crate::engine::{Error, SyncPoint, TakeMode, Taken};
use crate::net::Ctx;
use crate::protocol::{ErrorKind, Read, Reads, Reply, ReplyStyle, Value, Values};

/// Body bytes after which a multi-key get takes no more messages (at least one message of
/// `--max-message-size` always fits).
const GET_REPLY_BUDGET: usize = 8 << 20;

pub(super) fn get(reads: Reads, style: ReplyStyle, client: &mut impl Client, ctx: &mut Ctx) {
    let state = client.state();
    // Messages of a queue deleted since they were opened are gone; stop counting them.
    state
        .open_reads
        .retain(|open| !open.taken.queue.is_deleted());
    if let Err(kind) = check_reads(&state.open_reads, &reads, ctx.shared.max_open_reads) {
        client.reply(&Reply::Error(kind), &style);
        return;
    }
    let get = GetInProgress {
        reads,
        next: 0,
        values: Values::new(),
        bytes: 0,
        waiting: None,
        durable_at: SyncPoint::NONE,
        room_needed: None,
        style,
    };
    // Run at once: it is kept in the connection's state only if it has to wait.
    run(client, get, ctx);
}

/// Refuses, before anything is taken, a get that Kestrel would refuse: a plain read of a queue
/// this connection holds an open message of, or more open messages than allowed.
fn check_reads(open_reads: &[OpenRead], reads: &[Read], max_open: usize) -> Result<(), ErrorKind> {
    // The common case needs no bookkeeping: nothing held and nothing to open, nothing to
    // refuse.
    if open_reads.is_empty() && !reads.iter().any(|read| read.open) {
        return Ok(());
    }
    let mut held: HashMap<&[u8], usize> = HashMap::new();
    for open in open_reads {
        *held.entry(&open.queue).or_default() += 1;
    }
    let mut total = open_reads.len();
    for read in reads {
        let on_queue = held.entry(read.queue()).or_default();
        if read.abort || read.close {
            total -= *on_queue;
            *on_queue = 0;
        }
        if read.abort || (read.close && !read.open) {
            continue;
        }
        if read.open {
            if total >= max_open {
                return Err(ErrorKind::TooManyOpenReads);
            }
            *on_queue += 1;
            total += 1;
        } else if !read.peek && *on_queue > 0 {
            return Err(ErrorKind::OpenReadPending);
        }
    }
    Ok(())
}

/// A read waits for room for the message it found: whether to try it again.
pub(in crate::net) fn waits_for_room(client: &mut impl Client) -> bool {
    client
        .state()
        .get
        .as_ref()
        .is_some_and(|get| get.room_needed.is_some())
}

/// Runs the get's remaining keys until one has to wait (for a message, or for room for one) or
/// all are done.
pub(in crate::net) fn resume(client: &mut impl Client, ctx: &mut Ctx) {
    if let Some(get) = client.state().get.take() {
        run(client, get, ctx);
    }
}

/// `resume` for a get held by the caller.
fn run(client: &mut impl Client, mut get: GetInProgress, ctx: &mut Ctx) {
    // Set when the read at `get.next` already ran and waits for room: this is a retry of it.
    let mut room_needed = get.room_needed.take();
    // One get line can name thousands of keys: stop taking messages once the reply is big
    // enough, and leave the remaining keys' messages in their queues.
    let budget = GET_REPLY_BUDGET.max(ctx.shared.limits.max_message_size);
    while let Some(read) = get.reads.get(get.next) {
        if get.bytes >= budget {
            break;
        }
        if read.abort || read.close {
            open::settle(client, read.queue(), read.close, ctx);
            if !read.open {
                get.next += 1;
                continue;
            }
        }
        let mode = match (read.open, read.peek) {
            (true, _) => TakeMode::Open,
            (_, true) => TakeMode::Peek,
            _ => TakeMode::Remove,
        };
        let room_needed = room_needed.take();
        if room_needed.is_none() {
            // Counted once: a read waiting for room is retried every few milliseconds.
            ctx.stats.get_cmds.fetch_add(1, Ordering::Relaxed);
            if read.peek {
                ctx.stats.cmd_peek.fetch_add(1, Ordering::Relaxed);
            }
        }
        let wait = match read.wait_ms {
            Some(ms) if ms > 0 => {
                *ctx.next_wait_id += 1;
                Some((client.conn_ref(ctx), *ctx.next_wait_id, ms))
            }
            _ => None,
        };
        let registration = wait.map(|(me, id, _)| (me, id));
        let pending = client.reply_memory() + get.bytes;
        let (own, shared) = client.output_room(pending, ctx);
        // A read that would block reserves room for the message it will be handed: at most
        // the largest message, and only what the budget has, so that blocked readers together
        // cannot be handed more than the budget.
        let reserve = match wait {
            Some(_) => shared.min(ctx.shared.limits.max_message_size),
            None => shared,
        };
        let room = own.saturating_add(reserve);
        if room_needed.is_some_and(|needed| room < needed) {
            // Still no room for the message it found: no use reading it again.
            client.wait_for_output_room(ctx);
            get.room_needed = room_needed;
            client.state().get = Some(get);
            return;
        }
        let taken = ctx
            .shared
            .engine
            .take(read.queue(), mode, registration, room, ctx.uncommitted);
        match taken {
            Ok(Some(taken)) => {
                client.leave_output_line(ctx);
                accept(client, &mut get, taken, ctx);
                client.charge_output(client.reply_memory() + get.bytes, ctx);
            }
            Ok(None) => match wait {
                Some((_, id, ms)) => {
                    get.waiting = Some(id);
                    let deadline = Instant::now() + Duration::from_millis(ms);
                    ctx.timers.add(deadline, client.id(), id);
                    client.reserve_output(reserve);
                    client.charge_output(pending, ctx);
                    client.state().get = Some(get);
                    return;
                }
                None => {
                    client.leave_output_line(ctx);
                    ctx.stats.get_misses.fetch_add(1, Ordering::Relaxed);
                    get.next += 1;
                }
            },
            Err(Error::NoRoom(needed)) if get.values.is_empty() => {
                // Wait, first in line or behind those who asked before, for room (or for its
                // client to read what it has); the message stays in its queue.
                client.wait_for_output_room(ctx);
                get.room_needed = Some(needed);
                client.state().get = Some(get);
                return;
            }
            Err(Error::NoRoom(_)) => break,
            Err(error) => {
                // Answer with what was taken so far, so nothing taken is lost.
                if get.values.is_empty() {
                    client.reply(&Reply::Error(error_kind(error)), &get.style);
                    return;
                }
                break;
            }
        }
    }
    client.reply_after(&Reply::Values(get.values), get.durable_at, &get.style);
    client.charge_output(client.reply_memory(), ctx);
}

/// Records a message taken for the get's current read and moves on to the next key.
pub(super) fn accept(
    client: &mut impl Client,
    get: &mut GetInProgress,
    mut taken: Taken,
    ctx: &mut Ctx,
) {
    ctx.stats.get_hits.fetch_add(1, Ordering::Relaxed);
    // The body moves into the reply; an open read keeps only the queue and sequence number.
    let body = std::mem::take(&mut taken.body);
    get.bytes += body.len();
    get.durable_at = get.durable_at.max(taken.durable_at);
    let read = &mut get.reads[get.next];
    // Before the key (which holds the queue's name) moves into the reply.
    let open_on = read.open.then(|| read.queue().to_vec());
    get.values.push(Value {
        // This read is done: its key moves into the reply too.
        key: std::mem::take(&mut read.key),
        flags: taken.flags,
        body,
        cas: read.cas.then_some(taken.seq),
    });
    if let Some(queue) = open_on {
        open::hold(client, queue, taken, ctx);
    }
    get.next += 1;
}
