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

/// Collects events per mailbox so each loop is woken once for a whole batch.
pub struct Outbox<'a> {
    mailboxes: &'a [Mailbox],
    touched: Vec<bool>,
}

impl<'a> Outbox<'a> {
    pub fn new(mailboxes: &'a [Mailbox]) -> Outbox<'a> {
        Outbox {
            mailboxes,
            touched: vec![false; mailboxes.len()],
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
        if let Some(mailbox) = self.mailboxes.get(to.mailbox as usize) {
            // A closed mailbox means that loop has stopped: nothing is waiting for this.
            let _ = mailbox.sender.send(event);
            self.touched[to.mailbox as usize] = true;
        }
    }
}

impl Drop for Outbox<'_> {
    fn drop(&mut self) {
        for (mailbox, touched) in self.mailboxes.iter().zip(&self.touched) {
            if *touched {
                mailbox.waker.wake();
            }
        }
    }
}
