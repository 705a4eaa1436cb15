//! How the engine answers the event loops: completions of committed writes and messages handed to
//! blocked readers arrive in a loop's mailbox, and the loop is woken once per batch.

use std::sync::Arc;

use crossbeam_channel::Sender;

use super::conn_ref::ConnRef;
use super::durability::SyncPoint;
use super::queue::QueueState;
use parking_lot::Mutex;

/// The result of a write that went through the committer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Stored,
    Deleted,
    NotFound,
    Flushed,
    Failed(super::Error),
}

/// Which queue a taken message came from, for confirming it or giving it back. Opaque: the
/// holder (an event loop) cannot reach the queue's state, only ask whether the queue is gone.
#[derive(Clone)]
pub struct QueueHandle(pub(super) Arc<Mutex<QueueState>>);

impl QueueHandle {
    /// Whether the queue was deleted since (its open messages are then gone too). A queue
    /// with open messages is never unloaded, so a retired one was deleted.
    pub fn is_deleted(&self) -> bool {
        self.0.lock().is_retired()
    }
}

/// A message taken from a queue.
#[derive(Clone)]
pub struct Taken {
    pub queue: QueueHandle,
    pub seq: u64,
    pub flags: u32,
    /// When it expires (unix ms, 0: never).
    pub expires_at: u64,
    pub body: Vec<u8>,
    /// Held open for the taker, who must confirm it or give it back. False for a peek (the
    /// message stayed in the queue) and for a removal.
    pub open: bool,
    /// The message may not be on disk yet: a reply showing it waits for this point.
    pub durable_at: SyncPoint,
}

impl std::fmt::Debug for Taken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taken")
            .field("seq", &self.seq)
            .field("len", &self.body.len())
            .finish()
    }
}

#[derive(Debug)]
pub enum Event {
    /// A write this connection submitted is done; its reply waits for `durable_at`.
    Completed {
        conn: u64,
        outcome: Outcome,
        durable_at: SyncPoint,
    },
    /// A message for this connection's blocked read. It is held open for the connection: the
    /// loop confirms it (plain read), keeps it (open read) or gives it back (reader gone).
    Delivered {
        conn: u64,
        wait_id: u64,
        taken: Taken,
    },
}

/// Something that wakes an event loop.
pub trait Wake: Send + Sync {
    fn wake(&self);
}

/// An event loop's inbox.
#[derive(Clone)]
pub struct Mailbox {
    pub sender: Sender<Event>,
    pub waker: Arc<dyn Wake>,
}

/// Collects events per mailbox so each loop is woken once for a whole batch. Events for the
/// loop whose pass is committing (`own`) are not sent at all: they are kept in `direct` and
/// handed to that loop by its `Pass` when the commit returns, with no trip through its own
/// mailbox. Whatever is left in `direct` when the outbox is dropped is sent as usual.
pub struct Outbox<'a> {
    mailboxes: &'a [Mailbox],
    /// Bit `i`: mailbox `i` got an event (mailboxes past 64 are always woken).
    touched: u64,
    own: Option<u32>,
    direct: Vec<Event>,
}

impl<'a> Outbox<'a> {
    pub fn new(mailboxes: &'a [Mailbox]) -> Outbox<'a> {
        Outbox::keeping_own(mailboxes, None, Vec::new())
    }

    /// An outbox that keeps the events for mailbox `own` in `direct` (see the type's doc),
    /// after those already there.
    pub fn keeping_own(
        mailboxes: &'a [Mailbox],
        own: Option<u32>,
        direct: Vec<Event>,
    ) -> Outbox<'a> {
        Outbox {
            mailboxes,
            touched: 0,
            own,
            direct,
        }
    }

    /// Tells `to` its oldest outstanding write is done; its reply waits for `durable_at`.
    pub fn complete(&mut self, to: ConnRef, outcome: Outcome, durable_at: SyncPoint) {
        let conn = to.conn;
        let event = Event::Completed {
            conn,
            outcome,
            durable_at,
        };
        self.send(to, event);
    }

    pub fn send(&mut self, to: ConnRef, event: Event) {
        if self.own == Some(to.mailbox) {
            self.direct.push(event);
        } else {
            self.send_to(to.mailbox, event);
        }
    }

    /// The events kept for the own mailbox, in the order they were made.
    pub fn into_direct(mut self) -> Vec<Event> {
        std::mem::take(&mut self.direct)
    }

    fn send_to(&mut self, index: u32, event: Event) {
        if let Some(mailbox) = self.mailboxes.get(index as usize) {
            // A closed mailbox means that loop has stopped: nothing is waiting for this.
            let _ = mailbox.sender.send(event);
            self.touched |= 1u64.checked_shl(index).unwrap_or(0);
            if index >= 64 {
                mailbox.waker.wake();
            }
        }
    }
}

impl Drop for Outbox<'_> {
    fn drop(&mut self) {
        if let Some(own) = self.own {
            for event in std::mem::take(&mut self.direct) {
                self.send_to(own, event);
            }
        }
        let mut touched = self.touched;
        while touched != 0 {
            let index = touched.trailing_zeros() as usize;
            touched &= touched - 1;
            self.mailboxes[index].waker.wake();
        }
    }
}
