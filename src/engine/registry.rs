//! The queue registry: which queues exist, which of them are loaded in memory, and the one place
//! that creates, loads, unloads and forgets a queue's in-memory state.
//!
//! A queue's record on disk (`store::QueueMeta`) is all a queue needs while nobody uses it, so
//! memory holds only the queues in use: a queue is loaded from its record when a command names
//! it, and unloaded again (its record written first) once it has been idle a few seconds while
//! empty, or sooner, least recently used first, while the loaded queues are over their memory
//! budget. So a server that saw a million queues holds only the few it is using, and its
//! background work (`reclaim`, `expiry`) follows what changed rather than how many queues exist.
//! A queue with anything only memory knows (waiters, open or given-back messages, messages not
//! yet written or synced) stays loaded.
//!
//! **Lock order**, for the whole engine: the commit lock (`Engine::committer`), then `loaded`,
//! then `fanout`, then one queue's own lock, then `Recency` (a leaf). Nothing holds a queue's
//! lock while it takes `loaded` or the commit lock. Whatever writes a queue's record while the
//! queue is not loaded (unloading it, deleting it, flushing it on disk) holds `loaded` for
//! writing and bumps `changes`, so that a load never reads a record that is being replaced.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock, RwLockWriteGuard};

use super::durability::SyncPoint;
use super::queue::QueueState;
use super::recent::CacheBudgets;
use super::store::{self, Db};
use super::{Error, QueueRef};

/// What one loaded queue costs in memory besides its messages, for the budget: the state
/// itself, its map entry, its locks and allocations, and a typical name.
pub(super) const LOADED_QUEUE_COST: usize = std::mem::size_of::<QueueState>() + 256;

/// Seconds an empty queue stays loaded after its last use.
pub(super) const UNLOAD_EMPTY_AFTER: u32 = 5;

/// Most queues unloaded in one write (and one hold of `loaded`).
pub(super) const UNLOAD_CHUNK: usize = 1024;

pub(super) struct Registry {
    /// Queues loaded in memory, by name.
    loaded: RwLock<HashMap<Arc<[u8]>, QueueRef>>,
    /// Names of every queue with a `+` in it, loaded or not, ordered, so that a put finds its
    /// fan-out queues (`<queue>+<child>`) with one range query.
    fanout: RwLock<BTreeSet<Arc<[u8]>>>,
    next_id: AtomicU64,
    /// Queues that exist: with a record on disk, or messages staged. A queue that only a
    /// blocked read named (a ghost, see `forget_if_unused`) does not count.
    count: AtomicU64,
    max_queues: Option<u64>,
    /// Most queues kept loaded before idle ones are unloaded (from `--queue-memory`).
    max_loaded: usize,
    /// Bumped, under `loaded`'s write lock, by everything that writes the record of a queue
    /// that is not loaded: a load that read a record without that lock checks it is unchanged.
    changes: AtomicU64,
    recency: Recency,
    budgets: CacheBudgets,
}

/// When queues were last used, coarsely (in seconds, `epoch`), to find idle ones without looking
/// at every loaded queue: the first use of a queue in each second lists it in that second's
/// generation.
struct Recency {
    epoch: AtomicU32,
    lists: Mutex<RecencyLists>,
}

#[derive(Default)]
struct RecencyLists {
    /// Queues first used in each recent second, oldest first.
    generations: VecDeque<(u32, Vec<QueueRef>)>,
    /// Queues that went idle holding messages, oldest first, with the second of their last use:
    /// unloaded only while the loaded queues are over budget. Weak, so that a queue unloaded or
    /// deleted meanwhile does not stay in memory for it (see `prune_cold`).
    cold: VecDeque<(u32, Weak<Mutex<QueueState>>)>,
}

impl Registry {
    /// A registry of `count` queues found on disk (none loaded), whose fan-out queues are
    /// `fanout`.
    pub(super) fn new(
        count: u64,
        next_id: u64,
        fanout: Vec<Vec<u8>>,
        max_queues: Option<u64>,
        memory: usize,
        budgets: CacheBudgets,
    ) -> Registry {
        Registry {
            loaded: RwLock::new(HashMap::new()),
            fanout: RwLock::new(fanout.into_iter().map(Arc::from).collect()),
            next_id: AtomicU64::new(next_id),
            count: AtomicU64::new(count),
            max_queues,
            max_loaded: (memory / LOADED_QUEUE_COST).max(1),
            changes: AtomicU64::new(0),
            recency: Recency {
                epoch: AtomicU32::new(0),
                lists: Mutex::new(RecencyLists::default()),
            },
            budgets,
        }
    }

    /// Takes the counts of a new scan of the records (`store::scan`), for a cluster node about
    /// to serve (`super::cluster`): no queue is loaded then.
    pub(super) fn recount(&self, count: u64, next_id: u64, fanout: Vec<Vec<u8>>) {
        *self.fanout.write() = fanout.into_iter().map(Arc::from).collect();
        self.next_id.fetch_max(next_id, Ordering::AcqRel);
        self.count.store(count, Ordering::Release);
    }

    /// Under `--cluster`, on a step-down or before serving again (`super::cluster`, under the
    /// commit lock): every loaded queue leaves memory without its record written, retired so
    /// that whoever holds its state looks the name up again. The counts are left for `recount`.
    pub(super) fn forget_all(&self) {
        let mut loaded = self.loaded.write();
        for state in loaded.values() {
            state.lock().retire();
        }
        *loaded = HashMap::new();
        self.changes.fetch_add(1, Ordering::AcqRel);
        drop(loaded);
        *self.recency.lists.lock() = RecencyLists::default();
    }

    /// The queue named `name`, loaded from its record if it is not in memory; None if no such
    /// queue exists.
    pub(super) fn lookup(&self, db: &Db, name: &[u8]) -> Result<Option<QueueRef>, Error> {
        if let Some(state) = self.loaded.read().get(name) {
            return Ok(Some(state.clone()));
        }
        self.load(db, name)
    }

    /// The queue named `name` if it is loaded now (a queue someone waits on always is).
    pub(super) fn lookup_loaded(&self, name: &[u8]) -> Option<QueueRef> {
        self.loaded.read().get(name).cloned()
    }

    /// Loads a queue from its record. The record is read without `loaded`'s lock (a miss, the
    /// common case for a name that names no queue, takes no write lock), then read again under
    /// it if anything replaced a record meanwhile.
    fn load(&self, db: &Db, name: &[u8]) -> Result<Option<QueueRef>, Error> {
        let seen = self.changes.load(Ordering::Acquire);
        let mut record = store::read_record(db, name).map_err(storage_error)?;
        if record.is_none() {
            return Ok(None);
        }
        let mut loaded = self.loaded.write();
        if let Some(state) = loaded.get(name) {
            return Ok(Some(state.clone()));
        }
        if self.changes.load(Ordering::Acquire) != seen {
            record = store::read_record(db, name).map_err(storage_error)?;
        }
        let Some(record) = record else {
            return Ok(None);
        };
        let name: Arc<[u8]> = Arc::from(name);
        let state = QueueState::from_record(name.clone(), &record, &self.budgets);
        let state = Arc::new(Mutex::new(state));
        loaded.insert(name, state.clone());
        // Listed as used now, so that it is unloaded again once idle.
        self.touch(&state, &mut state.lock());
        Ok(Some(state))
    }

    /// The queue named `name`, loaded or created (in memory, not yet on disk) if it is new.
    pub(super) fn lookup_or_create(&self, db: &Db, name: &[u8]) -> Result<QueueRef, Error> {
        if let Some(state) = self.lookup(db, name)? {
            return Ok(state);
        }
        let mut loaded = self.loaded.write();
        let state = loaded.entry(Arc::from(name)).or_insert_with_key(|name| {
            if name.contains(&b'+') {
                self.fanout.write().insert(name.clone());
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            Arc::new(Mutex::new(QueueState::new(id, name.clone(), &self.budgets)))
        });
        let state = state.clone();
        drop(loaded);
        self.touch(&state, &mut state.lock());
        Ok(state)
    }

    /// The next queue id, for the record that keeps ids from being reused.
    pub(super) fn next_id(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed)
    }

    /// Counts a queue that gets its first message staged; `Error::TooManyQueues` if
    /// `--max-queues` are there already.
    pub(super) fn count_new(&self, q: &mut QueueState) -> Result<(), Error> {
        if q.is_counted() {
            return Ok(());
        }
        let mut count = self.count.load(Ordering::Relaxed);
        loop {
            if self.max_queues.is_some_and(|max| count >= max) {
                return Err(Error::TooManyQueues);
            }
            match self.count.compare_exchange_weak(
                count,
                count + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => count = now,
            }
        }
        q.mark_counted();
        Ok(())
    }

    /// Queues that exist (see `count`).
    pub(super) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Queues loaded in memory now.
    pub(super) fn loaded_count(&self) -> usize {
        self.loaded.read().len()
    }

    /// Every loaded queue.
    pub(super) fn loaded(&self) -> Vec<QueueRef> {
        self.loaded.read().values().cloned().collect()
    }

    /// Holds `loaded` for writing while a record of a queue that is not loaded is replaced or
    /// removed (see the module comment); the guard lets the caller unload queues too.
    pub(super) fn replacing_records(&self) -> RecordGuard<'_> {
        RecordGuard {
            registry: self,
            loaded: self.loaded.write(),
        }
    }

    /// Queues that receive a copy of every message put to `queue`: those named `queue+<child>`.
    pub(super) fn fanout_children(&self, queue: &[u8]) -> Vec<Arc<[u8]>> {
        let names = self.fanout.read();
        if names.is_empty() {
            return Vec::new();
        }
        let mut prefix = queue.to_vec();
        prefix.push(b'+');
        names
            .range::<[u8], _>((Bound::Excluded(&prefix[..]), Bound::Unbounded))
            .take_while(|name| name.starts_with(&prefix))
            .cloned()
            .collect()
    }

    /// Whether creating queue `name` would give one of its parents more than `max` fan-out
    /// queues (`a` and `a+b` are both parents of `a+b+c`).
    pub(super) fn fanout_full(&self, name: &[u8], max: usize) -> bool {
        let names = self.fanout.read();
        name.iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'+')
            .any(|(at, _)| {
                let prefix = &name[..=at];
                names
                    .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
                    .take_while(|child| child.starts_with(prefix))
                    .take(max)
                    .count()
                    >= max
            })
    }

    /// Forgets `queue` if it is a ghost no one waits on: a read or a wait names a queue without
    /// making it exist, and once its last waiter leaves, a queue that never held a message is
    /// forgotten, so reads of ever-new names (`get <random>/t=1`, mqmq `Get`) leave nothing
    /// behind. Safe against a put racing it: the committer stages under the queue's lock and
    /// looks again if it finds the queue retired.
    pub(super) fn forget_if_unused(&self, queue: &[u8]) {
        let mut loaded = self.loaded.write();
        let Some(state) = loaded.get(queue).cloned() else {
            return;
        };
        {
            let mut q = state.lock();
            if q.is_retired() || !q.is_ghost() || !q.waiters().is_empty() {
                return;
            }
            q.retire();
            if q.is_counted() {
                // A put was staged and its write failed.
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
        }
        loaded.remove(queue);
        self.fanout.write().remove(queue);
    }

    /// Notes that a queue is being used now (under its lock): idle queues are found by when
    /// they were last used.
    pub(super) fn touch(&self, state: &QueueRef, q: &mut QueueState) {
        let now = self.recency.epoch.load(Ordering::Relaxed);
        if q.last_used() != now {
            q.used_in(now);
            let mut lists = self.recency.lists.lock();
            match lists.generations.back_mut() {
                Some((epoch, queues)) if *epoch == now => queues.push(state.clone()),
                _ => lists.generations.push_back((now, vec![state.clone()])),
            }
        }
    }

    /// Starts a new second of `touch`es; returns it.
    pub(super) fn tick(&self) -> u32 {
        self.recency.epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The queues to unload now: empty ones idle for `UNLOAD_EMPTY_AFTER` seconds, and while
    /// more than the budget are loaded, the least recently used of those holding messages. A
    /// queue that cannot be unloaded yet is looked at again later. `synced`: every write up to
    /// it is on disk. (Queues are locked only while `Recency` is not, whose lock comes last.)
    pub(super) fn unload_candidates(&self, synced: SyncPoint) -> Vec<QueueRef> {
        let now = self.recency.epoch.load(Ordering::Acquire);
        let idle: Vec<(u32, Vec<QueueRef>)> = {
            let mut lists = self.recency.lists.lock();
            let due = lists
                .generations
                .iter()
                .take_while(|(epoch, _)| now.wrapping_sub(*epoch) >= UNLOAD_EMPTY_AFTER)
                .count();
            lists.generations.drain(..due).collect()
        };
        let mut chosen = Vec::new();
        let mut cold = Vec::new();
        let mut again = Vec::new();
        for (epoch, queues) in idle {
            for state in queues {
                let mut q = state.lock();
                if q.is_retired() || q.last_used() != epoch {
                    // Gone, or used since: listed in a later generation.
                    continue;
                }
                let unloadable = q.unloadable(synced);
                if !unloadable {
                    // Listed again as if used now, to be looked at once more when idle.
                    q.used_in(now);
                }
                let empty = q.items() == 0;
                drop(q);
                match (unloadable, empty) {
                    (true, true) => chosen.push(state),
                    (true, false) => cold.push((epoch, state)),
                    (false, _) => again.push(state),
                }
            }
        }
        // Over budget: the coldest queues holding messages, then the least recently used.
        let loaded = self.loaded.read().len();
        let mut excess = loaded.saturating_sub(self.max_loaded + chosen.len());
        if excess > 0 {
            excess += self.max_loaded / 10;
        }
        let mut lists = self.recency.lists.lock();
        let cold = cold
            .into_iter()
            .map(|(epoch, q)| (epoch, Arc::downgrade(&q)));
        lists.cold.extend(cold);
        while excess > 0 {
            let batch: Vec<(u32, QueueRef)> = match lists.cold.len() {
                0 => match lists.generations.pop_front() {
                    Some((epoch, queues)) => queues.into_iter().map(|q| (epoch, q)).collect(),
                    None => break,
                },
                n => {
                    let drained = lists.cold.drain(..n.min(excess));
                    drained
                        .filter_map(|(e, q)| Some((e, q.upgrade()?)))
                        .collect()
                }
            };
            drop(lists);
            for (epoch, state) in batch {
                let mut q = state.lock();
                if q.is_retired() || q.last_used() != epoch {
                    continue;
                }
                if excess > 0 && q.unloadable(synced) {
                    drop(q);
                    chosen.push(state);
                    excess -= 1;
                } else {
                    q.used_in(now);
                    drop(q);
                    again.push(state);
                }
            }
            lists = self.recency.lists.lock();
        }
        if !again.is_empty() {
            lists.generations.push_back((now, again));
        }
        if lists.cold.len() > loaded.max(1024) {
            let stale = std::mem::take(&mut lists.cold);
            drop(lists);
            let fresh = prune_cold(stale);
            let mut lists = self.recency.lists.lock();
            let newer = std::mem::replace(&mut lists.cold, fresh);
            lists.cold.extend(newer);
        }
        chosen
    }
}

/// The entries of a cold list that are still cold: queues neither gone nor used since. Queues
/// go cold, then are used again, unloaded or deleted, leaving stale entries behind; this keeps
/// their number bounded by the queues loaded.
fn prune_cold(
    cold: VecDeque<(u32, Weak<Mutex<QueueState>>)>,
) -> VecDeque<(u32, Weak<Mutex<QueueState>>)> {
    cold.into_iter()
        .filter(|(epoch, q)| {
            q.upgrade().is_some_and(|q| {
                let q = q.lock();
                !q.is_retired() && q.last_used() == *epoch
            })
        })
        .collect()
}

/// `loaded` held for writing while records of queues that are not loaded are written (see
/// `Registry::replacing_records`). Dropping it makes the change visible to loads.
pub(super) struct RecordGuard<'a> {
    registry: &'a Registry,
    loaded: RwLockWriteGuard<'a, HashMap<Arc<[u8]>, QueueRef>>,
}

impl RecordGuard<'_> {
    /// Takes a queue out of memory (its record is written by the caller, under this guard):
    /// holders of its state see it retired and look the name up again, which loads it anew.
    pub(super) fn unload(&mut self, q: &mut QueueState) {
        q.retire();
        self.loaded.remove(q.name());
    }

    /// Gives back the map's memory once most of it is empty (after many queues were unloaded).
    pub(super) fn shrink(&mut self) {
        let len = self.loaded.len();
        if self.loaded.capacity() > 4 * len + 1024 {
            self.loaded.shrink_to(2 * len);
        }
    }

    /// Forgets a deleted queue: its state, its fan-out entry and its count.
    pub(super) fn forget(&mut self, name: &[u8]) -> Option<QueueRef> {
        let removed = self.loaded.remove(name);
        self.registry.fanout.write().remove(name);
        removed
    }

    /// A queue was deleted (its record is gone): it no longer counts.
    pub(super) fn uncount(&self) {
        self.registry.count.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether `name` is loaded now.
    pub(super) fn is_loaded(&self, name: &[u8]) -> bool {
        self.loaded.contains_key(name)
    }
}

impl Drop for RecordGuard<'_> {
    fn drop(&mut self) {
        self.registry.changes.fetch_add(1, Ordering::AcqRel);
    }
}

fn storage_error(e: rocksdb::Error) -> Error {
    log::error!("cannot read a queue's record: {e}");
    Error::Storage
}
