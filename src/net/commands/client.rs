//! The small interface a command sees of the connection it runs on: where its reply goes, how
//! the engine and the budgets name the connection, the room it has for replies, and where its
//! state in flight is kept. `Connection` implements it over its socket and buffers; the unit
//! tests over a plain buffer. Everything else a command needs (the engine, the loop's counters
//! and timers) comes from the loop's `Ctx`.

use super::State;
use crate::engine::{ConnRef, SyncPoint};
use crate::net::Ctx;
use crate::protocol::{Reply, ReplyStyle};

/// What a command may do to its connection.
pub(in crate::net) trait Client {
    /// Slot and generation in the loop's connection table (what the loop's timers name).
    fn id(&self) -> u64;
    /// How the engine and the budgets name this connection.
    fn conn_ref(&self, ctx: &Ctx) -> ConnRef;
    /// The commands' state in flight on this connection: kept by it, read only by commands.
    fn state(&mut self) -> &mut State;
    /// Appends a reply spelled as its request's `style` says (maybe nothing, for a quiet
    /// request), sent once this connection's answered writes are on disk.
    fn reply(&mut self, reply: &Reply, style: &ReplyStyle) {
        self.reply_after(reply, SyncPoint::NONE, style);
    }
    /// Appends a reply that also waits for `point` (it shows a message maybe not on disk yet).
    fn reply_after(&mut self, reply: &Reply, point: SyncPoint, style: &ReplyStyle);
    /// Bytes of memory the replies not sent yet hold.
    fn reply_memory(&self) -> usize;
    /// Room for more reply bytes, given `pending` bytes of replies: what is left of the
    /// connection's own allowance, and what the server's output budget would give it.
    fn output_room(&self, pending: usize, ctx: &Ctx) -> (usize, usize);
    /// Brings the output budget's charge in line with `pending` bytes of replies.
    fn charge_output(&mut self, pending: usize, ctx: &Ctx);
    /// Waits in line for room in the output budget (or for its client to read first).
    fn wait_for_output_room(&mut self, ctx: &Ctx);
    /// No longer waits in line for room in the output budget.
    fn leave_output_line(&self, ctx: &Ctx);
    /// Output budget bytes a blocked read holds for the message it will be handed (0: none).
    fn reserve_output(&mut self, bytes: usize);
    /// Closes the connection once its output is written.
    fn close(&mut self);
}
