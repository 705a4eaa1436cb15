//! The committer's queue limits: whether one more message fits, and with
//! `--discard-old-when-full` which messages make room for it. Discards are staged in the same
//! batch as the message they make room for, so a failed write gives them back (see
//! `Committer::commit`).

use super::{touch, Batch, Committer};
use crate::engine::message;
use crate::engine::queue::{QueueState, TakeMode};
use crate::engine::{store, Error, QueueRef, Uncommitted};

/// Checks the queue's limits for one more message of `len` bytes, counting what this batch
/// already staged for it. A queue that discards when full drops its oldest messages to make
/// room: committed ones first, then ones this batch staged, all within this batch, so that a
/// failed write gives them back. Nothing is dropped if even dropping every message not held
/// open would not make room.
pub(super) fn make_room(
    c: &mut Committer<'_>,
    batch: &mut Batch,
    queue: &QueueRef,
    q: &mut QueueState,
    len: u64,
) -> Result<(), Error> {
    let limits = c.engine.config.limits;
    let over = |q: &QueueState, staged_items: usize, staged_bytes: u64| {
        let items = q.items() + q.open().len() as u64 + staged_items as u64;
        let bytes = q.counters().bytes + staged_bytes;
        limits.max_items.is_some_and(|max| items + 1 > max)
            || limits.max_bytes.is_some_and(|max| bytes + len > max)
    };
    let staged = batch
        .touched
        .get(&q.id())
        .map_or((0, 0), |t| (t.staged.len(), t.added_bytes));
    if !over(q, staged.0, staged.1) {
        return Ok(());
    }
    let open_bytes: u64 = q.open().values().sum();
    let never_fits = limits
        .max_items
        .is_some_and(|max| q.open().len() as u64 + 1 > max)
        || limits.max_bytes.is_some_and(|max| open_bytes + len > max);
    if !limits.discard_old || never_fits {
        return Err(Error::QueueFull);
    }
    let now = message::now_ms();
    let messages = c.engine.messages();
    let touched = touch(&mut batch.touched, queue, q.id());
    while over(q, touched.staged.len(), touched.added_bytes) {
        if let Some((seq, dropped)) = discard_committed(c, queue, q, now) {
            batch
                .write
                .delete_cf(messages, store::message_key(q.id(), seq));
            touched.discarded.push((seq, dropped));
        } else if let Some((seq, dropped)) = touched.staged.pop_front() {
            // The put and its delete cancel out within the batch.
            batch
                .write
                .delete_cf(messages, store::message_key(q.id(), seq));
            touched.added_bytes -= dropped;
            touched.dropped_staged += 1;
        } else {
            return Err(Error::QueueFull);
        }
        q.count_discarded();
    }
    Ok(())
}

/// Claims the oldest committed message that is not open (dropping expired ones on the way);
/// its sequence number and body length.
fn discard_committed(
    c: &mut Committer<'_>,
    queue: &QueueRef,
    q: &mut QueueState,
    now: u64,
) -> Option<(u64, u64)> {
    let mut uncommitted = Uncommitted::default();
    let front = crate::engine::reading::take_locked(
        c.engine,
        queue,
        q,
        TakeMode::Peek,
        || now,
        &mut uncommitted,
        usize::MAX,
    );
    c.state.carry.extend(uncommitted.ops);
    let taken = front.ok()??;
    let claimed = q.pop_front();
    debug_assert_eq!(claimed, Some(taken.seq));
    let len = taken.body.len() as u64;
    q.forget_bytes(len);
    Some((taken.seq, len))
}
