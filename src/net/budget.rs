//! Server-wide memory budgets shared by every event loop, so that no mix of clients can grow the
//! server without bound:
//!
//! - the **input budget** caps the bytes held in connections' input buffers beyond the small
//!   buffer every connection may always use (partial requests, large bodies on their way in);
//! - the **write budget** caps the messages and body bytes written and not yet synced (or not
//!   yet committed), across all connections: nobody writes faster than the disk syncs, and what
//!   one sync has to cover stays bounded. A put counts once per queue it is written to (its
//!   fan-out copies too);
//! - the **output budget** caps the reply bytes held for all connections beyond the small
//!   allowance each one has (`--output-budget`): replies that clients do not read, and messages
//!   handed to blocked readers. Room that frees up goes to the connections waiting for it in
//!   the order they asked (`OutputBudget`), so small readers cannot starve a large one.
//!
//! A connection that cannot get what it needs stops reading (TCP pushes back on its client) and
//! asks its loop to retry it later; nothing is queued in memory while it waits.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::engine::ConnRef;

/// Bytes of input buffer every connection may hold without asking the input budget: enough for
/// any command line and small bodies, so a bystander's request is never stuck behind a budget
/// exhausted by others.
pub const FREE_INPUT: usize = 16 << 10;

/// Writes one connection may have in flight (not yet synced) before it stops executing more.
pub const MAX_WRITES_PER_CONNECTION: usize = 256;
/// Body bytes one connection may have in flight (one write is always allowed, whatever its size).
pub const MAX_WRITE_BYTES_PER_CONNECTION: usize = 4 << 20;
/// Writes and body bytes all connections together may have in flight: what one sync covers at
/// most.
pub const MAX_WRITES: usize = 16384;
pub const MAX_WRITE_BYTES: usize = 64 << 20;

/// Bytes of replies every connection may hold without asking the output budget: a bystander's
/// replies, and any pipeline of small ones, never wait for room that others hold.
pub const FREE_OUTPUT: usize = 64 << 10;

/// A shared counter with a ceiling.
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Budget {
        Budget {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Takes `n` if it fits under the limit. With `always_one`, takes it even if it does not fit
    /// as long as nothing else is taken (a single request larger than the whole budget must
    /// still be able to run, alone).
    pub fn try_take(&self, n: usize, always_one: bool) -> bool {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let fits = used.checked_add(n).is_some_and(|total| total <= self.limit);
            if !fits && (!always_one || used != 0) {
                return false;
            }
            match self.used.compare_exchange_weak(
                used,
                used.saturating_add(n),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    pub fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Takes `n` even past the limit: for bytes that are held already.
    pub fn force_take(&self, n: usize) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    /// What may still be taken before the limit.
    pub fn remaining(&self) -> usize {
        self.limit.saturating_sub(self.used())
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// The input budget: bytes of input buffers beyond each connection's free allowance. A request
/// whose length is known (a `set` line, an mqmq frame header) takes room for all of it at once
/// (`Connection::fill`), so that the budget is never spent on halves of many requests none of
/// which could finish; and room goes to connections in the order they asked.
pub struct InputBudget {
    pub bytes: Budget,
    line: Line,
}

impl InputBudget {
    pub fn new(limit: usize) -> InputBudget {
        InputBudget {
            bytes: Budget::new(limit),
            line: Line::default(),
        }
    }

    /// Takes `n` bytes for `who` if they fit (one request larger than the whole budget may
    /// take it alone) and nobody waits before it; otherwise `who` waits in line.
    pub fn try_take(&self, who: ConnRef, n: usize) -> bool {
        if self.line.may_go(who) && self.bytes.try_take(n, true) {
            self.line.leave(who);
            return true;
        }
        self.line.join(who);
        false
    }

    pub fn give(&self, n: usize) {
        self.bytes.give(n);
    }

    /// `who` no longer waits for room (its connection closed).
    pub fn leave(&self, who: ConnRef) {
        self.line.leave(who);
    }
}

/// The write budget: messages and bytes in flight to the committer.
pub struct WriteBudget {
    pub writes: Budget,
    pub bytes: Budget,
    /// Connections refused a write, served in turn: a flood spread over many connections
    /// cannot keep a bystander's write out.
    line: Line,
}

impl WriteBudget {
    pub fn new(max_writes: usize, max_bytes: usize) -> WriteBudget {
        WriteBudget {
            writes: Budget::new(max_writes),
            bytes: Budget::new(max_bytes),
            line: Line::default(),
        }
    }

    /// Admits one write of `bytes` body bytes for `who`, or refuses it whole (`who` then waits
    /// in line, and must ask again).
    pub fn try_admit(&self, who: ConnRef, bytes: usize) -> bool {
        if !self.line.may_go(who) {
            self.line.join(who);
            return false;
        }
        if !self.writes.try_take(1, true) {
            self.line.join(who);
            return false;
        }
        if !self.bytes.try_take(bytes, true) {
            self.writes.give(1);
            self.line.join(who);
            return false;
        }
        self.line.leave(who);
        true
    }

    /// `who` no longer waits to write (its connection closed).
    pub fn leave(&self, who: ConnRef) {
        self.line.leave(who);
    }

    /// A write admitted with `bytes` body bytes was answered (or its connection went away and
    /// the committer has answered it since).
    pub fn release(&self, bytes: usize) {
        self.writes.give(1);
        self.bytes.give(bytes);
    }
}

/// The output budget, and the line of connections waiting for room in it.
pub struct OutputBudget {
    pub bytes: Budget,
    /// Connections refused room: only the first may take room that frees up.
    line: Line,
}

impl OutputBudget {
    pub fn new(limit: usize) -> OutputBudget {
        OutputBudget {
            bytes: Budget::new(limit),
            line: Line::default(),
        }
    }

    /// Whether `who` may add to its replies now without a size known in advance: the budget
    /// is not spent and nobody else waits for room.
    pub fn has_room(&self, who: ConnRef) -> bool {
        self.bytes.remaining() > 0 && self.line.may_go(who)
    }

    /// Room `who` could take now (0 while others are ahead of it in line).
    pub fn room_for(&self, who: ConnRef) -> usize {
        if !self.line.may_go(who) {
            return 0;
        }
        self.bytes.remaining()
    }

    /// Puts `who` in line for room, once.
    pub fn join(&self, who: ConnRef) {
        self.line.join(who);
    }

    /// `who` no longer waits for room (it got some, its connection closed, or its client
    /// stopped reading).
    pub fn leave(&self, who: ConnRef) {
        self.line.leave(who);
    }
}

/// Connections waiting for a budget, first come, first served: while anyone waits, only the
/// first in line may take what frees up. Touched only when a budget is short.
#[derive(Default)]
struct Line {
    waiting: Mutex<VecDeque<ConnRef>>,
    /// How many wait, read without the lock on the common path (nobody).
    len: AtomicUsize,
}

impl Line {
    /// Whether `who` may take what a budget has: nobody waits, or it is first.
    fn may_go(&self, who: ConnRef) -> bool {
        self.len.load(Ordering::Acquire) == 0 || self.waiting.lock().front() == Some(&who)
    }

    fn join(&self, who: ConnRef) {
        let mut waiting = self.waiting.lock();
        if !waiting.contains(&who) {
            waiting.push_back(who);
            self.len.store(waiting.len(), Ordering::Release);
        }
    }

    fn leave(&self, who: ConnRef) {
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut waiting = self.waiting.lock();
        waiting.retain(|&w| w != who);
        self.len.store(waiting.len(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_refuses_past_its_limit_but_always_admits_a_lone_request() {
        let budget = Budget::new(10);
        assert!(budget.try_take(6, false));
        assert!(!budget.try_take(6, false));
        assert!(!budget.try_take(6, true), "something else is taken");
        budget.give(6);
        assert!(
            budget.try_take(100, true),
            "alone, an oversized request may go"
        );
        assert!(!budget.try_take(1, true));
        budget.give(100);
        assert_eq!(budget.used(), 0);
    }

    fn conn(n: u64) -> ConnRef {
        ConnRef {
            mailbox: 0,
            conn: n,
        }
    }

    #[test]
    fn a_write_is_admitted_whole_or_not_at_all() {
        let budget = WriteBudget::new(2, 10);
        assert!(budget.try_admit(conn(1), 8));
        assert!(!budget.try_admit(conn(1), 8));
        assert_eq!(budget.writes.used(), 1, "the refused write took nothing");
        assert!(budget.try_admit(conn(1), 2), "first in line");
        assert!(!budget.try_admit(conn(1), 0), "out of writes");
        budget.release(8);
        budget.release(2);
        assert_eq!((budget.writes.used(), budget.bytes.used()), (0, 0));
    }

    #[test]
    fn writes_refused_are_admitted_in_turn() {
        let budget = WriteBudget::new(1, 100);
        assert!(budget.try_admit(conn(1), 1));
        assert!(!budget.try_admit(conn(2), 1), "full: 2 waits");
        budget.release(1);
        assert!(!budget.try_admit(conn(1), 1), "2 asked first");
        assert!(budget.try_admit(conn(2), 1));
        budget.release(1);
        assert!(budget.try_admit(conn(1), 1), "then 1");
    }

    #[test]
    fn output_room_goes_to_the_first_in_line() {
        let budget = OutputBudget::new(10);
        budget.bytes.force_take(8);
        budget.join(conn(2));
        assert!(!budget.has_room(conn(3)), "2 waits first");
        assert_eq!(budget.room_for(conn(3)), 0);
        assert_eq!(budget.room_for(conn(2)), 2);
        budget.leave(conn(2));
        assert!(budget.has_room(conn(3)));
        budget.bytes.force_take(2);
        assert!(!budget.has_room(conn(3)), "spent");
    }
}
