//! Server-wide memory budgets shared by every event loop, so that no mix of clients can grow the
//! server without bound:
//!
//! - the **input budget** caps the bytes held in connections' input buffers beyond the small
//!   buffer every connection may always use (partial requests, large bodies on their way in);
//! - the **write budget** caps the messages and body bytes written and not yet synced (or not
//!   yet committed), across all connections: nobody writes faster than the disk syncs, and what
//!   one sync has to cover stays bounded.
//!
//! A connection that cannot get what it needs stops reading (TCP pushes back on its client) and
//! asks its loop to retry it later; nothing is queued in memory while it waits.

use std::sync::atomic::{AtomicUsize, Ordering};

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

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// The write budget: messages and bytes in flight to the committer.
pub struct WriteBudget {
    pub writes: Budget,
    pub bytes: Budget,
}

impl WriteBudget {
    pub fn new(max_writes: usize, max_bytes: usize) -> WriteBudget {
        WriteBudget {
            writes: Budget::new(max_writes),
            bytes: Budget::new(max_bytes),
        }
    }

    /// Admits one write of `bytes` body bytes, or refuses it whole.
    pub fn try_admit(&self, bytes: usize) -> bool {
        if !self.writes.try_take(1, true) {
            return false;
        }
        if !self.bytes.try_take(bytes, true) {
            self.writes.give(1);
            return false;
        }
        true
    }

    /// A write admitted with `bytes` body bytes was answered (or its connection went away and
    /// the committer has answered it since).
    pub fn release(&self, bytes: usize) {
        self.writes.give(1);
        self.bytes.give(bytes);
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

    #[test]
    fn a_write_is_admitted_whole_or_not_at_all() {
        let budget = WriteBudget::new(2, 10);
        assert!(budget.try_admit(8));
        assert!(!budget.try_admit(8));
        assert_eq!(budget.writes.used(), 1, "the refused write took nothing");
        assert!(budget.try_admit(2));
        assert!(!budget.try_admit(0), "out of writes");
        budget.release(8);
        budget.release(2);
        assert_eq!((budget.writes.used(), budget.bytes.used()), (0, 0));
    }
}
