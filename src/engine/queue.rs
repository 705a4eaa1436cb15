//! One queue's in-memory state: where its messages start and end, which were given back or are
//! held open, who waits for it, and its counters. RocksDB holds the messages; this holds only
//! what is small. Every field that must survive a restart is written to the metadata column
//! family by the committer (see `store::QueueMeta`).
//!
//! Its fields are private: the engine's modules read them through accessors and change them
//! only through the methods below, each named for the event it records (a commit published, a
//! read claimed, a sweep moved on), so that the rules tying the fields together live here. The
//! state is always used under its queue's lock; the lock order is the registry's (`registry`).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use super::conn_ref::ConnRef;
use super::durability::SyncPoint;
use super::recent::{CacheBudgets, Fresh, RecentCache};
use super::sequence::{NextSeq, SeqToken};
use super::store::QueueMeta;
use crate::id_hash::IdMap;

/// How a read treats the message it finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TakeMode {
    /// Remove it: delivered at most once while the server runs.
    Remove,
    /// Hand it out but keep it until confirmed or given back.
    Open,
    /// Look at the head without changing anything.
    Peek,
}

/// A connection blocked in a read on this queue.
#[derive(Clone, Debug)]
pub struct Waiter {
    pub conn: ConnRef,
    pub wait_id: u64,
    /// A waiting `Peek` is shown the message that arrives and leaves it at the head; any other
    /// waiter is handed it open.
    pub mode: TakeMode,
    /// Longest body this waiter can be handed now (its connection's room for replies).
    pub room: usize,
}

/// Counters kept across restarts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages dropped unread because they expired.
    pub expired: u64,
    /// Messages dropped to make room (`--discard-old-when-full`).
    pub discarded: u64,
    /// Times the queue was flushed.
    pub flushes: u64,
    /// Body bytes of the messages still in the queue (open ones included).
    pub bytes: u64,
}

pub struct QueueState {
    /// Unique for the life of the data directory; prefixes the keys of its messages.
    id: u64,
    name: Arc<[u8]>,
    /// Whether the queue has a record on disk: a queue first named by a read lives only in memory
    /// until its first message is committed.
    persisted: bool,
    /// This state is no longer the queue's: the queue was deleted, or unloaded from memory
    /// (`super::registry`). Holders of a stale handle look the name up again.
    retired: bool,
    /// Whether the queue counts against `--max-queues` (it has had a message staged).
    counted: bool,
    /// The second (`registry::Registry::touch`) it was last used in.
    last_used: u32,
    /// Lowest sequence number never handed out to a reader (messages given back are in
    /// `returned`, before it). Not necessarily the front of the queue: see `front`.
    next_unclaimed: u64,
    /// End (exclusive) of the committed messages: `next_unclaimed..tail` are waiting to be read.
    tail: u64,
    /// End (exclusive) of the messages written to RocksDB. `written_end..tail` were published
    /// ahead of their write (`commit::CommitRounds`): they are read from the recent cache
    /// only, and one not kept there (given back after a claiming read took its body) is not
    /// readable until the write.
    written_end: u64,
    /// Next sequence number the committer assigns; equals `tail` between commits.
    next_seq: NextSeq,
    /// Messages given back (abort, disconnect, restart), served before `next_unclaimed`, sorted: oldest
    /// first.
    returned: VecDeque<u64>,
    /// Messages handed out with `/open`, not yet confirmed: sequence number → body length.
    open: IdMap<u64>,
    waiters: VecDeque<Waiter>,
    counters: Counters,
    /// Messages in `next_unclaimed..tail` that the sweep already dropped because they expired:
    /// `next_unclaimed` skips them, and is itself never in here.
    swept: BTreeSet<u64>,
    /// When the sweep should next look at this queue (unix ms; 0: never): no earlier than its
    /// next message may expire. The committer keeps the expiry index in step with it.
    next_expiry: u64,
    /// The time of this queue's entry in the expiry index on disk (0: none).
    indexed_expiry: u64,
    /// How far the sweep of the messages behind the head has got.
    sweep: SweepCursor,
    /// The newest committed messages, kept in memory (`super::recent`).
    recent: RecentCache,
    /// The messages right after the head of a backlog, read ahead from RocksDB in one scan by
    /// the read that met the head not in memory (`super::reading`), for the reads after it.
    ahead: RecentCache,
    /// Every message below this that is not pending (open or given back) has had its key
    /// deleted in a write already made. Messages consumed from the head are not deleted one by
    /// one: the reclaimer asks (`reclaim_wanted`) and the next write of the queue's record
    /// deletes them with a few range tombstones (`store::delete_consumed`).
    deleted_below: u64,
    /// Whether the next write of the queue's record should also delete the messages consumed
    /// since `deleted_below`.
    reclaim_wanted: bool,
    /// Whether the reclaimer watches the queue (its head moved past messages not deleted yet).
    reclaim_watched: bool,
    /// Every consumed message below this was compacted away (as far as the reclaimer knows).
    compacted_below: u64,
    /// Messages written but maybe not synced yet: (end of the write's messages, exclusive; the
    /// write's point), oldest first. A reply showing one of them waits for that point.
    unsynced: VecDeque<(u64, SyncPoint)>,
    /// The point of the last write that held its record. Under `--cluster` a write is a
    /// proposal, in RocksDB only once applied: the queue may leave memory only after that, or
    /// loading it again would read an older record (`unload`).
    record_point: SyncPoint,
}

/// Where the sweep of a queue's messages behind its head stands. It reads a bounded number per
/// round, resuming where it stopped, and learns when the earliest of the messages it read that
/// did not expire will: the queue's `next_expiry` once the pass is over.
#[derive(Clone, Copy, Debug, Default)]
pub struct SweepCursor {
    /// Where the current pass goes on; None: no pass is under way.
    from: Option<u64>,
    /// The earliest expiry among the messages the current pass read and kept, and among those
    /// staged since it started (0: none).
    earliest: u64,
}

/// The earlier of two expiry times, where 0 means none.
pub fn earliest(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, t) | (t, 0) => t,
        (a, b) => a.min(b),
    }
}

impl QueueState {
    pub fn new(id: u64, name: Arc<[u8]>, budgets: &CacheBudgets) -> QueueState {
        QueueState {
            id,
            name,
            persisted: false,
            retired: false,
            counted: false,
            last_used: u32::MAX,
            next_unclaimed: 0,
            tail: 0,
            written_end: 0,
            next_seq: NextSeq::starting_at(0),
            returned: VecDeque::new(),
            open: IdMap::default(),
            waiters: VecDeque::new(),
            counters: Counters::default(),
            swept: BTreeSet::new(),
            next_expiry: 0,
            indexed_expiry: 0,
            sweep: SweepCursor::default(),
            recent: RecentCache::new(&budgets.recent),
            ahead: RecentCache::new(&budgets.ahead),
            deleted_below: 0,
            reclaim_wanted: false,
            reclaim_watched: false,
            compacted_below: 0,
            unsynced: VecDeque::new(),
            record_point: SyncPoint::NONE,
        }
    }

    /// The state of a queue loaded from its record: what a restart knows of it.
    pub fn from_record(name: Arc<[u8]>, meta: &QueueMeta, budgets: &CacheBudgets) -> QueueState {
        let mut state = QueueState::new(meta.id, name, budgets);
        state.persisted = true;
        state.counted = true;
        state.next_unclaimed = meta.next_unclaimed;
        state.deleted_below = meta.deleted_below.min(meta.next_unclaimed);
        // Below that, RocksDB's own compactions drop what the range deletes cover.
        state.compacted_below = state.deleted_below;
        state.tail = meta.tail;
        state.written_end = meta.tail;
        state.next_seq = NextSeq::starting_at(meta.tail);
        state.counters = meta.counters;
        state.next_expiry = meta.next_expiry;
        state.indexed_expiry = meta.next_expiry;
        // Messages that were open or given back when the server stopped are delivered again.
        state.returned = meta.pending.iter().copied().collect();
        state
    }

    // What the engine's modules read.

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn name(&self) -> &Arc<[u8]> {
        &self.name
    }

    /// Whether the queue has a record on disk.
    pub fn is_persisted(&self) -> bool {
        self.persisted
    }

    /// Whether this state is no longer the queue's (deleted or unloaded).
    pub fn is_retired(&self) -> bool {
        self.retired
    }

    /// Whether the queue counts against `--max-queues`.
    pub fn is_counted(&self) -> bool {
        self.counted
    }

    /// The second it was last used in.
    pub fn last_used(&self) -> u32 {
        self.last_used
    }

    pub fn next_unclaimed(&self) -> u64 {
        self.next_unclaimed
    }

    pub fn tail(&self) -> u64 {
        self.tail
    }

    pub fn written_end(&self) -> u64 {
        self.written_end
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq.get()
    }

    /// Messages given back, oldest first.
    pub fn returned(&self) -> &VecDeque<u64> {
        &self.returned
    }

    /// Messages held open: sequence number → body length.
    pub fn open(&self) -> &IdMap<u64> {
        &self.open
    }

    pub fn waiters(&self) -> &VecDeque<Waiter> {
        &self.waiters
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn next_expiry(&self) -> u64 {
        self.next_expiry
    }

    pub fn indexed_expiry(&self) -> u64 {
        self.indexed_expiry
    }

    pub fn recent(&self) -> &RecentCache {
        &self.recent
    }

    pub fn ahead(&self) -> &RecentCache {
        &self.ahead
    }

    pub fn deleted_below(&self) -> u64 {
        self.deleted_below
    }

    pub fn reclaim_wanted(&self) -> bool {
        self.reclaim_wanted
    }

    pub fn reclaim_watched(&self) -> bool {
        self.reclaim_watched
    }

    pub fn compacted_below(&self) -> u64 {
        self.compacted_below
    }

    // What changes it, each named for what happened.

    /// The queue counts against `--max-queues` from now on.
    pub fn mark_counted(&mut self) {
        self.counted = true;
    }

    /// It is used in second `now` (`registry::Registry::touch`).
    pub fn used_in(&mut self, now: u32) {
        self.last_used = now;
    }

    /// Assigns the next sequence number to a message being staged.
    pub fn assign_seq(&mut self, token: &mut SeqToken) -> u64 {
        self.next_seq.assign(token)
    }

    /// A commit of the messages staged since the last one is published: readers see them
    /// (from `next_unclaimed`, past messages the commit discarded), `fresh` are kept in memory,
    /// and `written` says whether they are in RocksDB already.
    pub fn publish(
        &mut self,
        next_unclaimed: u64,
        written: bool,
        added_bytes: u64,
        fresh: Option<Fresh>,
    ) {
        self.persisted = true;
        self.next_unclaimed = next_unclaimed;
        self.tail = self.next_seq.get();
        if written {
            self.written_end = self.tail;
        }
        self.counters.bytes += added_bytes;
        if let Some(fresh) = fresh {
            self.recent.extend(fresh, next_unclaimed);
        }
    }

    /// The messages published ahead of their write are written now.
    pub fn all_written(&mut self) {
        self.written_end = self.tail;
    }

    /// The messages before `end` are written now (in cluster mode: applied here), those after
    /// it not necessarily.
    pub fn written_up_to(&mut self, end: u64) {
        self.written_end = self.written_end.max(end.min(self.tail));
    }

    /// A commit failed: the sequence numbers it assigned are free again, and the messages it
    /// discarded to make room (`discarded`: sequence number, body length; `dropped_staged` of
    /// its own puts besides) are back in the queue.
    pub fn commit_failed(
        &mut self,
        token: &mut SeqToken,
        discarded: &[(u64, u64)],
        dropped_staged: u64,
    ) {
        self.next_seq.roll_back(self.tail, token);
        self.counters.discarded -= discarded.len() as u64 + dropped_staged;
        for &(seq, len) in discarded {
            self.counters.bytes += len;
            self.returned.push_back(seq);
        }
        self.returned.make_contiguous().sort_unstable();
    }

    /// A message was dropped to make room (`--discard-old-when-full`).
    pub fn count_discarded(&mut self) {
        self.counters.discarded += 1;
    }

    /// A message of `len` body bytes left the queue (taken, confirmed or discarded).
    pub fn forget_bytes(&mut self, len: u64) {
        self.counters.bytes = self.counters.bytes.saturating_sub(len);
    }

    /// A message of `len` body bytes was dropped unread because it expired.
    pub fn count_expired(&mut self, len: u64) {
        self.counters.expired += 1;
        self.forget_bytes(len);
    }

    /// A message kept in memory (`recent`, or read ahead if not) is claimed: its body moves
    /// out of memory.
    pub fn claim_kept(&mut self, seq: u64, recent: bool) -> Option<Vec<u8>> {
        let cache = if recent {
            &mut self.recent
        } else {
            &mut self.ahead
        };
        cache.forget_before(seq);
        cache.take_front(seq).map(|kept| kept.body)
    }

    /// Messages read ahead from RocksDB, from `from` on, kept for the reads after this one.
    pub fn keep_read_ahead(&mut self, fresh: Fresh, from: u64) {
        self.ahead.extend(fresh, from);
    }

    /// Message `seq`, already claimed, of `len` body bytes, is held open.
    pub fn hold_open(&mut self, seq: u64, len: u64) {
        self.open.insert(seq, len);
    }

    /// An open message is confirmed: it is gone for good. Its body length, if it was open.
    pub fn confirm(&mut self, seq: u64) -> Option<u64> {
        let len = self.open.remove(&seq)?;
        self.forget_bytes(len);
        Some(len)
    }

    /// A reader waits for a message.
    pub fn add_waiter(&mut self, waiter: Waiter) {
        self.waiters.push_back(waiter);
    }

    /// The waiter at `at` was handed a message: it waits no more.
    pub fn served(&mut self, at: usize) -> Option<Waiter> {
        self.waiters.remove(at)
    }

    /// Every waiter, taken away (the queue is deleted).
    pub fn take_waiters(&mut self) -> VecDeque<Waiter> {
        std::mem::take(&mut self.waiters)
    }

    /// Readers that waited on a deleted queue wait on this one, its successor, ahead of those
    /// that started waiting on it since.
    pub fn adopt_waiters(&mut self, mut earlier: VecDeque<Waiter>) {
        earlier.append(&mut self.waiters);
        self.waiters = earlier;
    }

    /// The queue is emptied (`flush`): everything not held open is gone.
    pub fn flush(&mut self) {
        self.next_unclaimed = self.tail;
        self.deleted_below = self.tail;
        self.recent.clear();
        self.ahead.clear();
        self.returned.clear();
        self.swept.clear();
        self.counters.bytes = self.open.values().sum();
        self.counters.flushes += 1;
        self.next_expiry = 0;
        self.sweep = SweepCursor::default();
    }

    /// Starts a sweep pass behind the head, or goes on with the current one: where it reads
    /// from. The first unclaimed message is the head's (the peek sweeps it) unless given-back
    /// messages come first.
    pub fn sweep_from(&mut self) -> u64 {
        let start = self.next_unclaimed + u64::from(self.returned.is_empty());
        let from = match self.sweep.from {
            Some(from) => from.max(start),
            None => {
                self.sweep.earliest = 0;
                start
            }
        };
        self.sweep.from = Some(from);
        from
    }

    /// A sweep round read up to `next` (None: the pass is over) and kept messages of which the
    /// earliest expires at `kept_earliest`: the sweep looks at the queue again when the
    /// earliest kept message (or the head's, `head_expiry`) expires once the pass is over, at
    /// `resume_at` while it goes on, and never if nothing is left that could expire.
    pub fn swept_to(
        &mut self,
        next: Option<u64>,
        kept_earliest: u64,
        head_expiry: u64,
        resume_at: u64,
    ) {
        self.sweep.earliest = earliest(self.sweep.earliest, kept_earliest);
        match next {
            None => {
                self.sweep.from = None;
                self.next_expiry = earliest(self.sweep.earliest, head_expiry);
            }
            Some(next) => {
                self.sweep.from = Some(next);
                self.next_expiry = resume_at;
            }
        }
        if self.items() == 0 && self.open.is_empty() {
            self.next_expiry = 0;
            self.sweep = SweepCursor::default();
        }
    }

    /// The expiry index on disk is written for `next_expiry`.
    pub fn expiry_indexed(&mut self) {
        self.indexed_expiry = self.next_expiry;
    }

    /// The next write of the queue's record should delete the messages consumed since
    /// `deleted_below`.
    pub fn want_reclaim(&mut self) {
        self.reclaim_wanted = true;
    }

    /// A write deletes every consumed message below `deleted_below`.
    pub fn reclaimed_to(&mut self, deleted_below: u64) {
        self.reclaim_wanted = false;
        self.deleted_below = deleted_below;
    }

    /// Whether the reclaimer watches the queue.
    pub fn set_reclaim_watched(&mut self, watched: bool) {
        self.reclaim_watched = watched;
    }

    /// Every consumed message below `below` was compacted away.
    pub fn compacted_to(&mut self, below: u64) {
        self.compacted_below = below;
    }

    /// A queue that exists only because someone named it: nothing was ever committed to it or
    /// staged for it, and nothing is held open (see `Registry::forget_if_unused`).
    pub fn is_ghost(&self) -> bool {
        !self.persisted
            && self.next_seq.get() == 0
            && self.tail == 0
            && self.returned.is_empty()
            && self.open.is_empty()
    }

    /// Whether `stats` and `Info` show the queue: a ghost only while someone waits on it.
    pub fn is_listed(&self) -> bool {
        !self.is_ghost() || !self.waiters.is_empty()
    }

    /// Whether its record says all there is to know about it, so that it can be unloaded and
    /// loaded again from the record: nobody waits on it or holds its messages open (messages
    /// given back are in the record), none was swept out of order, and every write of it was
    /// made and synced up to `synced` (a reader of a message not synced yet must wait for the
    /// sync, which only memory knows of).
    pub fn unloadable(&mut self, synced: SyncPoint) -> bool {
        self.forget_synced(synced);
        self.persisted
            && !self.retired
            && self.waiters.is_empty()
            && self.open.is_empty()
            && self.swept.is_empty()
            && self.written_end == self.tail
            && self.next_seq.get() == self.tail
            && self.unsynced.is_empty()
            && self.sweep.from.is_none()
    }

    /// Marks this state as no longer the queue's (deleted, unloaded or forgotten), and gives
    /// back the memory its messages hold now: stale handles may keep the state itself a while.
    pub fn retire(&mut self) {
        self.retired = true;
        self.recent.clear();
        self.ahead.clear();
    }

    /// A message that expires at `at` (unix ms) was staged: the sweep looks at the queue by
    /// then.
    pub fn note_expiry(&mut self, at: u64) {
        self.next_expiry = earliest(self.next_expiry, at);
        if self.sweep.from.is_some() {
            self.sweep.earliest = earliest(self.sweep.earliest, at);
        }
    }

    /// Records that the messages up to `tail` were written at `point`, while everything up to
    /// `synced` is on disk.
    pub fn written_at(&mut self, point: SyncPoint, synced: SyncPoint) {
        self.forget_synced(synced);
        if point > synced {
            self.unsynced.push_back((self.tail, point));
        }
    }

    /// Its record was in the write made (or proposed) at `point`.
    pub fn record_written_at(&mut self, point: SyncPoint) {
        self.record_point = self.record_point.max(point);
    }

    /// Whether the last write of its record is made and applied as of `synced`.
    pub fn record_applied(&self, synced: SyncPoint) -> bool {
        self.record_point <= synced
    }

    /// The point a reply showing message `seq` waits for.
    pub fn durable_at(&mut self, seq: u64, synced: SyncPoint) -> SyncPoint {
        self.forget_synced(synced);
        self.unsynced
            .iter()
            .find(|&&(end, _)| seq < end)
            .map_or(SyncPoint::NONE, |&(_, point)| point)
    }

    fn forget_synced(&mut self, synced: SyncPoint) {
        while self.unsynced.front().is_some_and(|&(_, p)| p <= synced) {
            self.unsynced.pop_front();
        }
    }

    /// Messages that a read could be handed now.
    pub fn items(&self) -> u64 {
        self.tail - self.next_unclaimed + self.returned.len() as u64 - self.swept.len() as u64
    }

    /// Messages ever committed to this queue.
    pub fn enqueued(&self) -> u64 {
        self.tail
    }

    /// Messages that have left the queue for good (confirmed, expired, discarded, flushed).
    pub fn removed(&self) -> u64 {
        self.enqueued() - self.items() - self.open.len() as u64
    }

    /// The sequence number a read would look at next, without claiming it.
    pub fn front(&self) -> Option<u64> {
        match self.returned.front() {
            Some(&seq) => Some(seq),
            None if self.next_unclaimed < self.tail => Some(self.next_unclaimed),
            None => None,
        }
    }

    /// Claims the sequence number a read looks at next.
    pub fn pop_front(&mut self) -> Option<u64> {
        if let Some(seq) = self.returned.pop_front() {
            return Some(seq);
        }
        if self.next_unclaimed < self.tail {
            let seq = self.next_unclaimed;
            self.next_unclaimed += 1;
            self.skip_swept();
            // A message claimed (even if given back later) is read from RocksDB from now on.
            self.recent.forget_before(self.next_unclaimed);
            self.ahead.forget_before(self.next_unclaimed);
            return Some(seq);
        }
        None
    }

    /// Marks message `seq` (not yet claimed) as dropped by the sweep. False if it is not in
    /// `next_unclaimed..tail` any more (a reader took it meanwhile) or was marked already.
    pub fn mark_swept(&mut self, seq: u64) -> bool {
        if seq < self.next_unclaimed || seq >= self.tail || !self.swept.insert(seq) {
            return false;
        }
        self.skip_swept();
        true
    }

    /// Moves `next_unclaimed` past messages the sweep dropped.
    fn skip_swept(&mut self) {
        while self.swept.remove(&self.next_unclaimed) {
            self.next_unclaimed += 1;
        }
    }

    /// Sequence numbers below `next_unclaimed` that are not gone: what a restart must deliver again.
    pub fn pending(&self) -> Vec<u64> {
        let mut pending: Vec<u64> = self.returned.iter().copied().collect();
        pending.extend(self.open.keys().copied());
        pending.sort_unstable();
        pending
    }

    /// Gives open messages back to the head of the queue. `returned` stays sorted, so messages
    /// given back at different times, in any order, are read again in their original order.
    /// Returns how many were open.
    pub fn give_back(&mut self, seqs: &[u64]) -> usize {
        let mut count = 0;
        for &seq in seqs {
            if self.open.remove(&seq).is_some() {
                let at = self.returned.partition_point(|&r| r < seq);
                self.returned.insert(at, seq);
                count += 1;
            }
        }
        count
    }

    /// Removes a waiter; false if it was already served (its delivery is on the way).
    pub fn cancel_wait(&mut self, wait_id: u64, conn: ConnRef) -> bool {
        match self
            .waiters
            .iter()
            .position(|w| w.wait_id == wait_id && w.conn == conn)
        {
            Some(at) => {
                self.waiters.remove(at);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> QueueState {
        let mut q = QueueState::new(1, Arc::from(&b"q"[..]), &CacheBudgets::new());
        q.tail = 5;
        q.next_seq = NextSeq::starting_at(5);
        q
    }

    #[test]
    fn pops_in_order_and_counts() {
        let mut q = queue();
        assert_eq!(q.items(), 5);
        assert_eq!(q.pop_front(), Some(0));
        assert_eq!(q.pop_front(), Some(1));
        assert_eq!(q.items(), 3);
        assert_eq!(q.removed(), 2);
    }

    #[test]
    fn given_back_messages_come_first_in_original_order() {
        let mut q = queue();
        for _ in 0..3 {
            let seq = q.pop_front().unwrap();
            q.open.insert(seq, 1);
        }
        assert_eq!(q.pending(), vec![0, 1, 2]);
        // Given back one at a time, newest first: still read again oldest first.
        assert_eq!(q.give_back(&[2]), 1);
        assert_eq!(q.give_back(&[0]), 1);
        assert_eq!(q.give_back(&[0]), 0, "not open any more");
        assert_eq!(q.pop_front(), Some(0));
        assert_eq!(q.pop_front(), Some(2));
        assert_eq!(q.pop_front(), Some(3));
        assert_eq!(q.removed(), 3, "0, 2 and 3 were taken; 1 is still open");
        assert_eq!(q.pending(), vec![1]);
    }
}
