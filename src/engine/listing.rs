//! What `stats`, mqmq's `Info` and the monitoring endpoints list: every queue that exists,
//! whether it is loaded in memory or not (`registry`). A loaded queue reports from memory; the
//! others from their records, which say all there is to say about an idle queue.

use std::collections::HashSet;
use std::sync::Arc;

use super::queue::QueueState;
use super::store::{self, QueueMeta};
use super::{message, Engine, QueueStats};

/// Every queue's counters, sorted by name. `with_age` reads each head message's timestamp.
pub(super) fn stats(engine: &Engine, with_age: bool) -> Vec<QueueStats> {
    let now = message::now_ms();
    // Loaded queues first: one unloaded after this look still reports its last state from
    // memory, and one loaded after it reports the record it was loaded from.
    let loaded = engine.registry.loaded();
    let mut names = HashSet::with_capacity(loaded.len());
    let mut stats = Vec::with_capacity(loaded.len());
    for state in &loaded {
        let q = state.lock();
        names.insert(q.name().clone());
        if q.is_listed() {
            stats.push(of_loaded(engine, &q, with_age, now));
        }
    }
    for (name, record) in store::records(&engine.db) {
        if !names.contains(&name[..]) {
            stats.push(of_record(engine, Arc::from(name), &record, with_age, now));
        }
    }
    stats.sort_by(|a, b| a.name.cmp(&b.name));
    stats
}

fn of_loaded(engine: &Engine, q: &QueueState, with_age: bool, now: u64) -> QueueStats {
    QueueStats {
        name: q.name().clone(),
        items: q.items(),
        bytes: q.counters().bytes,
        enqueued: q.enqueued(),
        removed: q.removed(),
        expired: q.counters().expired,
        discarded: q.counters().discarded,
        flushes: q.counters().flushes,
        waiters: q.waiters().len() as u64,
        open: q.open().len() as u64,
        age_ms: match (with_age, q.front()) {
            (true, Some(seq)) => age_of(engine, q.id(), seq, now),
            _ => 0,
        },
    }
}

fn of_record(
    engine: &Engine,
    name: Arc<[u8]>,
    record: &QueueMeta,
    with_age: bool,
    now: u64,
) -> QueueStats {
    let items = record.items();
    let front = front_of(record);
    QueueStats {
        name,
        items,
        bytes: record.counters.bytes,
        enqueued: record.tail,
        removed: record.tail - items,
        expired: record.counters.expired,
        discarded: record.counters.discarded,
        flushes: record.counters.flushes,
        waiters: 0,
        open: 0,
        age_ms: match (with_age, front) {
            (true, Some(seq)) => age_of(engine, record.id, seq, now),
            _ => 0,
        },
    }
}

/// Milliseconds the head message of queue `name` has waited: 0 if it is empty or gone. For a
/// few queues (`stats` prints at most a thousand): a lookup, and a read of the head message.
pub(super) fn age(engine: &Engine, name: &[u8]) -> u64 {
    let now = message::now_ms();
    let (id, front) = match engine.registry.lookup_loaded(name) {
        Some(state) => {
            let q = state.lock();
            (q.id(), q.front())
        }
        None => match store::read_record(&engine.db, name) {
            Ok(Some(record)) => (record.id, front_of(&record)),
            _ => return 0,
        },
    };
    front.map_or(0, |seq| age_of(engine, id, seq, now))
}

/// The first message a read of an unloaded queue would get.
fn front_of(record: &QueueMeta) -> Option<u64> {
    // The record's pending messages were given back (nothing is open in a queue not loaded).
    match record.pending.first() {
        Some(&seq) => Some(seq),
        None => (record.next_unclaimed < record.tail).then_some(record.next_unclaimed),
    }
}

/// Milliseconds message `seq` of queue `id` has waited (0 if it cannot be read).
fn age_of(engine: &Engine, id: u64, seq: u64, now: u64) -> u64 {
    engine
        .db
        .get_pinned_cf(engine.messages(), store::message_key(id, seq))
        .ok()
        .flatten()
        .and_then(|v| message::decode(&v).map(|(h, _)| now.saturating_sub(h.enqueued_at)))
        .unwrap_or(0)
}
