//! Recent messages served from memory: each queue keeps the messages it committed (header and
//! body, as written) until they are read, so a read of a live queue, or of a backlog that fits,
//! costs no RocksDB lookup, and a plain read takes the body without copying it. Messages not
//! kept, given-back ones and everything after a restart are read from RocksDB as before; a cache
//! is only ever a copy of what is committed there.
//!
//! Bounded twice: per cache (`RecentBudget::per_cache`) and for all caches together
//! (`RecentBudget`). A full cache keeps what it has and refuses newer messages: a queue is read
//! oldest first, so its oldest kept messages are the ones read soonest. (Dropping the oldest
//! instead, once a backlog outgrew the cache, dropped each message just before it was read: every
//! read then went to RocksDB, and every write freed a body long out of the CPU's caches.)

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::message::Header;

/// What an entry costs besides its body (its slot in the cache, the body's allocation).
const ENTRY_OVERHEAD: usize = 64;

/// Bytes all queues' caches of committed messages hold together, and one queue's alone: a
/// backlog of up to `RECENT_PER_QUEUE` is read from memory, in two queues at least.
const RECENT_BYTES: usize = 32 << 20;
const RECENT_PER_QUEUE: usize = 16 << 20;
/// The same for messages read ahead from RocksDB (`super::reading`), which has a budget of its
/// own so that caches holding theirs do not leave a backlog to be read one lookup per message.
const AHEAD_BYTES: usize = 16 << 20;
const AHEAD_PER_QUEUE: usize = 1 << 20;

/// The budgets of every queue's two caches: committed messages, and messages read ahead.
#[derive(Clone)]
pub struct CacheBudgets {
    pub recent: RecentBudget,
    pub ahead: RecentBudget,
}

impl CacheBudgets {
    pub fn new() -> CacheBudgets {
        CacheBudgets {
            recent: RecentBudget::new(RECENT_BYTES, RECENT_PER_QUEUE),
            ahead: RecentBudget::new(AHEAD_BYTES, AHEAD_PER_QUEUE),
        }
    }
}

/// Bytes a set of caches may hold together, and each one alone.
#[derive(Clone)]
pub struct RecentBudget {
    limit: usize,
    per_cache: usize,
    used: Arc<AtomicUsize>,
}

impl RecentBudget {
    pub fn new(limit: usize, per_cache: usize) -> RecentBudget {
        RecentBudget {
            limit,
            per_cache,
            used: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Most bytes one cache holds.
    pub fn per_cache(&self) -> usize {
        self.per_cache
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_take(&self, bytes: usize) -> bool {
        let taken = self.used.fetch_add(bytes, Ordering::Relaxed);
        if taken + bytes > self.limit {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn give(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// A message as committed, kept in memory.
pub struct Recent {
    pub seq: u64,
    pub header: Header,
    pub body: Vec<u8>,
}

impl Recent {
    fn cost(&self) -> usize {
        self.body.len() + ENTRY_OVERHEAD
    }
}

/// Messages staged by one commit for one queue, with their share of the budget taken: they join
/// the queue's cache if the commit succeeds, and give their share back otherwise.
pub struct Fresh {
    budget: RecentBudget,
    entries: Vec<Recent>,
    bytes: usize,
}

impl Fresh {
    pub fn new(budget: &RecentBudget) -> Fresh {
        Fresh {
            budget: budget.clone(),
            entries: Vec::new(),
            bytes: 0,
        }
    }

    /// How many messages it keeps, and what they cost (bodies and overhead).
    pub fn count(&self) -> usize {
        self.entries.len()
    }

    pub fn cost(&self) -> usize {
        self.bytes
    }

    /// Keeps a copy of message `seq` if the budget allows.
    pub fn keep(&mut self, seq: u64, header: Header, body: Vec<u8>) {
        let entry = Recent { seq, header, body };
        if entry.cost() <= self.budget.per_cache && self.budget.try_take(entry.cost()) {
            self.bytes += entry.cost();
            self.entries.push(entry);
        }
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// One queue's committed messages not yet read, oldest first, by sequence number (not
/// necessarily contiguous: a message dropped within its commit, or refused by a full cache, has
/// none).
pub struct RecentCache {
    budget: RecentBudget,
    entries: VecDeque<Recent>,
    bytes: usize,
}

impl RecentCache {
    pub fn new(budget: &RecentBudget) -> RecentCache {
        RecentCache {
            budget: budget.clone(),
            entries: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Adds what a commit wrote, from `from` on (earlier ones were dropped within the commit),
    /// as far as there is room.
    pub fn extend(&mut self, mut fresh: Fresh, from: u64) {
        for entry in fresh.entries.drain(..) {
            let cost = entry.cost();
            fresh.bytes -= cost;
            if entry.seq < from
                || self.entries.back().is_some_and(|e| e.seq >= entry.seq)
                || cost > self.room()
            {
                self.budget.give(cost);
                continue;
            }
            self.bytes += cost;
            self.entries.push_back(entry);
        }
    }

    /// Bytes it may still take.
    pub fn room(&self) -> usize {
        self.budget.per_cache.saturating_sub(self.bytes)
    }

    /// The oldest message kept.
    pub fn first(&self) -> Option<u64> {
        self.entries.front().map(|e| e.seq)
    }

    /// Message `seq`, if it is kept.
    pub fn get(&self, seq: u64) -> Option<&Recent> {
        let first = self.entries.front()?.seq;
        if seq < first {
            return None;
        }
        // Usually contiguous: try the direct position first.
        let guess = (seq - first) as usize;
        match self.entries.get(guess) {
            Some(entry) if entry.seq == seq => Some(entry),
            _ => {
                let at = self.entries.binary_search_by_key(&seq, |e| e.seq).ok()?;
                self.entries.get(at)
            }
        }
    }

    /// Takes message `seq` out if it is the oldest kept (a read claiming the head).
    pub fn take_front(&mut self, seq: u64) -> Option<Recent> {
        if self.entries.front()?.seq != seq {
            return None;
        }
        self.pop_front()
    }

    /// Forgets every message before `seq` (claimed, dropped or swept: never read from here).
    pub fn forget_before(&mut self, seq: u64) {
        while self.entries.front().is_some_and(|e| e.seq < seq) {
            self.pop_front();
        }
    }

    pub fn clear(&mut self) {
        self.forget_before(u64::MAX);
    }

    fn pop_front(&mut self) -> Option<Recent> {
        let entry = self.entries.pop_front()?;
        self.bytes -= entry.cost();
        self.budget.give(entry.cost());
        // A drained backlog does not keep its slots: the budget counts entries, not capacity.
        if self.entries.capacity() > 1024 && self.entries.len() < self.entries.capacity() / 4 {
            self.entries.shrink_to(self.entries.len() * 2);
        }
        Some(entry)
    }
}

impl Drop for RecentCache {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            flags: 0,
            expires_at: 0,
            enqueued_at: 0,
        }
    }

    #[test]
    fn keeps_what_fits_and_gives_everything_back() {
        let budget = RecentBudget::new(3 * (ENTRY_OVERHEAD + 10), 1 << 20);
        let mut cache = RecentCache::new(&budget);
        let mut fresh = Fresh::new(&budget);
        for seq in 0..4 {
            fresh.keep(seq, header(), vec![0; 10]);
        }
        assert_eq!(
            budget.used(),
            3 * (ENTRY_OVERHEAD + 10),
            "the fourth did not fit"
        );
        // Message 0 was dropped within its commit.
        cache.extend(fresh, 1);
        assert!(cache.get(0).is_none());
        assert_eq!(cache.get(2).map(|e| e.seq), Some(2));
        assert!(cache.take_front(2).is_none(), "not the oldest kept");
        assert_eq!(cache.take_front(1).map(|e| e.seq), Some(1));
        cache.forget_before(3);
        assert!(cache.get(2).is_none());
        drop(cache);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_full_cache_keeps_its_oldest_and_refuses_newer() {
        let entry = ENTRY_OVERHEAD + 10;
        let budget = RecentBudget::new(1 << 20, 2 * entry);
        let mut cache = RecentCache::new(&budget);
        let mut fresh = Fresh::new(&budget);
        for seq in 0..3 {
            fresh.keep(seq, header(), vec![0; 10]);
        }
        cache.extend(fresh, 0);
        assert_eq!(
            (cache.first(), cache.get(1).map(|e| e.seq)),
            (Some(0), Some(1))
        );
        assert!(cache.get(2).is_none(), "refused: no room");
        assert_eq!(budget.used(), 2 * entry, "the refused one's share is back");
        // Read, the oldest makes room for a newer one; the refused one stays a gap.
        assert_eq!(cache.take_front(0).map(|e| e.seq), Some(0));
        let mut fresh = Fresh::new(&budget);
        fresh.keep(3, header(), vec![0; 10]);
        cache.extend(fresh, 3);
        assert!(cache.get(2).is_none());
        assert_eq!(cache.get(3).map(|e| e.seq), Some(3));
        drop(cache);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_failed_commit_gives_its_share_back() {
        let budget = RecentBudget::new(1 << 20, 1 << 20);
        let mut fresh = Fresh::new(&budget);
        fresh.keep(0, header(), vec![0; 100]);
        assert!(budget.used() > 0);
        drop(fresh);
        assert_eq!(budget.used(), 0);
    }
}
