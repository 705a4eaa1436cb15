//! Engine tests without sockets: a real RocksDB in a temporary directory, the engine's events read
//! from a channel, writes submitted the way an event loop submits them. Interleavings that a
//! socket test cannot force are pinned here by calling the engine in the racy order directly.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::test_dir::TempDir;
use crossbeam_channel::Receiver;

use super::*;

const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

struct NoWake;

impl Wake for NoWake {
    fn wake(&self) {}
}

/// A directory removed when dropped.
fn limits(max_items: Option<u64>, max_bytes: Option<u64>, discard_old: bool) -> QueueLimits {
    QueueLimits {
        max_items,
        max_bytes,
        discard_old,
    }
}

/// A proposal: its point and its write batch's representation.
type Proposal = (SyncPoint, Vec<u8>);

/// What a cluster engine proposed and the test has not committed yet.
#[derive(Clone, Default)]
struct Proposals(Arc<Mutex<Vec<Proposal>>>);

impl Proposals {
    /// The group commits every proposal made so far, and this node applies them (as a
    /// follower does, or the leader): written to RocksDB, then reported. The points.
    fn commit_all(&self, engine: &Engine) -> Vec<SyncPoint> {
        let proposed = std::mem::take(&mut *self.0.lock());
        for (point, data) in &proposed {
            engine
                .database()
                .write(rocksdb::WriteBatch::from_data(data))
                .unwrap();
            engine.committed(*point);
        }
        proposed.into_iter().map(|(point, _)| point).collect()
    }
}

/// An engine on a data directory, with one mailbox whose events the test reads.
struct Harness {
    engine: Arc<Engine>,
    events: Receiver<Event>,
    /// Events read while looking for another one.
    unclaimed: VecDeque<Event>,
    next_conn: u64,
}

impl Harness {
    /// Makes the engine the established leader and waits until it serves (it counts its
    /// queues on a thread of its own).
    fn lead(&self) {
        self.engine.leading(true);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !self.engine.serving() {
            assert!(std::time::Instant::now() < deadline, "never served");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    fn open(dir: &Path, limits: QueueLimits) -> Harness {
        Harness::start(dir, limits, false)
    }

    /// An engine under `--cluster` whose proposals go to `proposals` (see `Proposals`).
    fn open_cluster(dir: &Path, proposals: &Proposals) -> Harness {
        let harness = Harness::start(dir, limits(None, None, false), true);
        let sink = proposals.0.clone();
        harness.engine.propose_to(Box::new(move |point, data| {
            sink.lock().push((point, data));
            true
        }));
        harness
    }

    fn start(dir: &Path, limits: QueueLimits, cluster: bool) -> Harness {
        let (sender, events) = crossbeam_channel::unbounded();
        let mailbox = Mailbox {
            sender,
            waker: Arc::new(NoWake),
        };
        let config = EngineConfig {
            data_dir: dir.to_path_buf(),
            sync: SyncPolicy::Always,
            memory: MemoryBudget {
                write_buffers: 8 << 20,
                block_cache: 8 << 20,
            },
            limits,
            min_free_bytes: 0,
            max_fanout: 64,
            prime_wal: false,
            cluster,
            max_queues: None,
            queue_memory: 64 << 20,
        };
        Harness {
            engine: Engine::start(config, vec![mailbox]).unwrap(),
            events,
            unclaimed: VecDeque::new(),
            next_conn: 0,
        }
    }

    /// A fresh connection identity.
    fn conn(&mut self) -> ConnRef {
        self.next_conn += 1;
        ConnRef {
            mailbox: 0,
            conn: self.next_conn,
        }
    }

    /// The next event for `conn` that `wanted` accepts, or None after a timeout.
    fn event_for(
        &mut self,
        conn: ConnRef,
        timeout: Duration,
        wanted: impl Fn(&Event) -> bool,
    ) -> Option<Event> {
        let matches = |event: &Event| {
            let to = match event {
                Event::Completed { conn, .. } | Event::Delivered { conn, .. } => *conn,
            };
            to == conn.conn && wanted(event)
        };
        if let Some(at) = self.unclaimed.iter().position(matches) {
            return self.unclaimed.remove(at);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self.events.recv_timeout(left).ok()?;
            if matches(&event) {
                return Some(event);
            }
            self.unclaimed.push_back(event);
        }
    }

    fn completed(&mut self, conn: ConnRef) -> Outcome {
        let completed = |e: &Event| matches!(e, Event::Completed { .. });
        match self.event_for(conn, EVENT_TIMEOUT, completed) {
            Some(Event::Completed { outcome, .. }) => outcome,
            other => panic!("no outcome for {conn:?}: {other:?}"),
        }
    }
    /// The outcome of `conn`'s next write, and the point its reply waits for.
    fn answered(&mut self, conn: ConnRef) -> (Outcome, SyncPoint) {
        let completed = |e: &Event| matches!(e, Event::Completed { .. });
        match self.event_for(conn, EVENT_TIMEOUT, completed) {
            Some(Event::Completed {
                outcome,
                durable_at,
                ..
            }) => (outcome, durable_at),
            other => panic!("no outcome for {conn:?}: {other:?}"),
        }
    }

    /// The message delivered to a blocked read, if one arrives within `timeout`.
    fn delivered(&mut self, conn: ConnRef, timeout: Duration) -> Option<Taken> {
        let delivered = |e: &Event| matches!(e, Event::Delivered { .. });
        match self.event_for(conn, timeout, delivered) {
            Some(Event::Delivered { taken, .. }) => Some(taken),
            _ => None,
        }
    }

    /// Puts every body in one submission (as a pipelining client does), returns the outcomes.
    fn put_many(&mut self, queue: &str, bodies: &[&str]) -> Vec<Outcome> {
        let me = self.conn();
        let mut uncommitted = Uncommitted::default();
        for body in bodies {
            let body = body.as_bytes().to_vec();
            self.engine
                .put(queue.as_bytes(), 0, 0, body, me, &mut uncommitted);
        }
        self.engine.submit_now(&mut uncommitted);
        bodies.iter().map(|_| self.completed(me)).collect()
    }

    /// Puts `m0`, `m1`, ... in one submission; returns the bodies.
    fn put_numbered(&mut self, queue: &str, count: usize) -> Vec<String> {
        let bodies: Vec<String> = (0..count).map(|i| format!("m{i}")).collect();
        let all: Vec<&str> = bodies.iter().map(String::as_str).collect();
        self.put_many(queue, &all);
        bodies
    }

    fn put(&mut self, queue: &str, body: &str) -> Outcome {
        self.put_many(queue, &[body])[0]
    }

    /// Puts a message that expires at `expires_at` (unix ms).
    fn put_expiring(&mut self, queue: &str, body: &str, expires_at: u64) -> Outcome {
        let me = self.conn();
        let mut uncommitted = Uncommitted::default();
        let body = body.as_bytes().to_vec();
        self.engine
            .put(queue.as_bytes(), 0, expires_at, body, me, &mut uncommitted);
        self.engine.submit_now(&mut uncommitted);
        self.completed(me)
    }

    /// A non-blocking read; what it changed is submitted at once.
    fn take(&self, queue: &str, mode: TakeMode) -> Option<Taken> {
        let mut uncommitted = Uncommitted::default();
        let taken = self
            .engine
            .take(queue.as_bytes(), mode, None, usize::MAX, &mut uncommitted)
            .unwrap();
        self.engine.submit_now(&mut uncommitted);
        taken
    }

    fn take_body(&self, queue: &str, mode: TakeMode) -> Option<String> {
        self.take(queue, mode).map(|t| body(&t))
    }

    /// Takes every message left, oldest first.
    fn drain(&self, queue: &str) -> Vec<String> {
        std::iter::from_fn(|| self.take_body(queue, TakeMode::Remove)).collect()
    }

    fn confirm(&self, taken: &Taken) {
        let mut uncommitted = Uncommitted::default();
        self.engine
            .confirm(&taken.queue, &[taken.seq], &mut uncommitted);
        self.engine.submit_now(&mut uncommitted);
    }

    fn give_back(&self, taken: &Taken) {
        let mut uncommitted = Uncommitted::default();
        self.engine
            .give_back(&taken.queue, &[taken.seq], &mut uncommitted);
        self.engine.submit_now(&mut uncommitted);
    }

    fn delete(&mut self, queue: &str) -> Outcome {
        let me = self.conn();
        let mut uncommitted = Uncommitted::default();
        self.engine
            .delete_queue(queue.as_bytes(), me, &mut uncommitted);
        self.engine.submit_now(&mut uncommitted);
        self.completed(me)
    }

    fn flush(&mut self, queue: Option<&str>) -> Outcome {
        let me = self.conn();
        let mut uncommitted = Uncommitted::default();
        self.engine
            .flush(queue.map(str::as_bytes), me, &mut uncommitted);
        self.engine.submit_now(&mut uncommitted);
        self.completed(me)
    }

    fn stats(&self, queue: &str) -> QueueStats {
        self.engine
            .stats(false)
            .into_iter()
            .find(|s| &*s.name == queue.as_bytes())
            .unwrap_or_else(|| panic!("no queue {queue}"))
    }

    /// Whether message `seq` of `queue` still has a key in RocksDB.
    fn stored(&self, queue_id: u64, seq: u64) -> bool {
        let key = store::message_key(queue_id, seq);
        self.engine
            .db
            .get_cf(self.engine.messages(), key)
            .unwrap()
            .is_some()
    }

    fn queue_id(&self, queue: &str) -> u64 {
        self.engine
            .lookup(queue.as_bytes())
            .unwrap()
            .unwrap()
            .lock()
            .id()
    }

    /// Stops the engine and closes its database, so the directory can be opened again.
    fn close(self) {
        self.engine.shutdown();
        assert_eq!(
            Arc::strong_count(&self.engine),
            1,
            "engine still referenced"
        );
    }
}

fn body(taken: &Taken) -> String {
    String::from_utf8(taken.body.clone()).unwrap()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

// --------------------------------------------------------------------------------------------
// Commit, claim, give back
// --------------------------------------------------------------------------------------------

#[test]
fn committed_messages_are_read_in_order_once() {
    let dir = TempDir::new("engine");
    let mut h = Harness::open(dir.path(), QueueLimits::default());
    assert_eq!(h.put_many("q", &["a", "b", "c"]), vec![Outcome::Stored; 3]);
    assert_eq!(h.take_body("q", TakeMode::Peek).as_deref(), Some("a"));
    assert_eq!(h.drain("q"), strings(&["a", "b", "c"]));
    assert_eq!(h.take_body("q", TakeMode::Remove), None);
    let stats = h.stats("q");
    assert_eq!((stats.items, stats.enqueued, stats.removed), (0, 3, 3));
    assert_eq!(h.take_body("missing", TakeMode::Remove), None);
    h.close();
}

/// Recent messages are read from memory, older ones from RocksDB, with the same result; the
/// memory comes back when they are read, flushed or deleted.
#[test]
fn recent_messages_come_from_memory_and_their_memory_comes_back() {
    let dir = TempDir::new("engine");
    let mut h = Harness::open(dir.path(), QueueLimits::default());
    h.put_many("q", &["a", "b", "c"]);
    assert!(h.engine.caches.recent.used() > 0, "kept in memory");
    // Given back after being read from memory: read again from RocksDB, in order.
    let a = h.take("q", TakeMode::Open).unwrap();
    assert_eq!(body(&a), "a");
    h.give_back(&a);
    assert_eq!(h.drain("q"), strings(&["a", "b", "c"]));
    assert_eq!(h.engine.caches.recent.used(), 0, "read: nothing kept");
    h.put_many("f", &["x", "y"]);
    h.flush(Some("f"));
    h.put_many("d", &["z"]);
    h.delete("d");
    assert_eq!(
        h.engine.caches.recent.used(),
        0,
        "flushed and deleted: nothing kept"
    );
    h.close();
}

/// A backlog bigger than a queue's recent cache: the cache keeps the oldest messages and
/// refuses newer ones, takes new ones again once reads make room, and every message is read
/// once, in order, across the messages it never kept.
#[test]
fn a_full_tail_keeps_the_oldest_and_reads_stay_in_order() {
    let dir = TempDir::new("engine");
    let mut h = Harness::open(dir.path(), QueueLimits::default());
    let big = |i: usize| format!("m{i}-{}", "x".repeat(1 << 20));
    let first: Vec<String> = (0..20).map(big).collect();
    h.put_many("q", &first.iter().map(String::as_str).collect::<Vec<_>>());
    let queue = h.engine.lookup(b"q").unwrap().unwrap();
    let kept = |seq: u64| queue.lock().recent().get(seq).is_some();
    assert!(kept(0) && !kept(19), "the oldest kept, the newest refused");
    let refused = (0..20).find(|&seq| !kept(seq)).unwrap();
    for i in 0..5 {
        assert_eq!(h.take_body("q", TakeMode::Remove), Some(big(i)));
    }
    let more: Vec<String> = (20..25).map(big).collect();
    h.put_many("q", &more.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(kept(20), "kept again once reads made room");
    assert!(!kept(refused), "the refused ones are read from RocksDB");
    assert_eq!(h.drain("q"), (5..25).map(big).collect::<Vec<_>>());
    drop(queue);
    assert_eq!(h.engine.caches.recent.used(), 0);
    h.close();
}

/// A read that meets the head of a backlog not in memory reads the messages after it in the
/// same scan; they are then read from memory, in order and once, with a given-back message first.
#[test]
fn a_backlog_is_read_ahead_in_order_once() {
    let dir = TempDir::new("engine");
    let mut h = Harness::open(dir.path(), QueueLimits::default());
    let bodies = h.put_numbered("b", 150);
    h.close();
    // Nothing is in memory after a restart.
    let h = Harness::open(dir.path(), QueueLimits::default());
    let first = h.take("b", TakeMode::Open).unwrap();
    assert_eq!(body(&first), "m0");
    let queue = h.engine.lookup(b"b").unwrap().unwrap();
    assert_eq!(
        queue.lock().ahead().first(),
        Some(1),
        "the next ones were read ahead"
    );
    drop(queue);
    h.give_back(&first);
    assert_eq!(h.drain("b"), bodies);
    h.close();
}

#[test]
fn opened_messages_are_confirmed_or_given_back_in_order() {
    let dir = TempDir::new("engine");
    let mut h = Harness::open(dir.path(), QueueLimits::default());
    h.put_many("q", &["a", "b", "c"]);
    let a = h.take("q", TakeMode::Open).unwrap();
    let b = h.take("q", TakeMode::Open).unwrap();
    assert_eq!((h.stats("q").items, h.stats("q").open), (1, 2));
    // Given back newest first, read again oldest first, before what was never opened.
    h.give_back(&b);
    h.give_back(&a);
    assert_eq!(h.take_body("q", TakeMode::Peek).as_deref(), Some("a"));
    let a = h.take("q", TakeMode::Open).unwrap();
    h.confirm(&a);
    h.confirm(&a); // a second confirmation changes nothing
    assert_eq!(h.drain("q"), strings(&["b", "c"]));
    let stats = h.stats("q");
    assert_eq!((stats.items, stats.open, stats.bytes), (0, 0, 0));
    h.close();
}

#[test]
fn a_blocked_reader_gets_the_next_committed_message() {
    let dir = TempDir::new("engine");
    let mut h = Harness::open(dir.path(), QueueLimits::default());
    let reader = h.conn();
    let mut uncommitted = Uncommitted::default();
    let taken = h
        .engine
        .take(
            b"w",
            TakeMode::Remove,
            Some((reader, 1)),
            usize::MAX,
            &mut uncommitted,
        )
        .unwrap();
    assert!(taken.is_none());
    h.put("w", "hello");
    let taken = h.delivered(reader, EVENT_TIMEOUT).expect("delivered");
    assert_eq!(body(&taken), "hello");
    // Delivered open: the reader's loop confirms it.
    assert_eq!(h.stats("w").open, 1);
    h.confirm(&taken);
    assert_eq!(h.stats("w").open, 0);
    assert!(
        !h.engine.cancel_wait(b"w", reader, 1),
        "served: not waiting any more"
    );
    h.close();
}

/// Bug 1 of issue 8: a message handed to a waiting peek was claimed (opened) for it, so a plain
/// reader waiting behind the peek got the second message while the first was still queued.
#[test]
fn a_waiting_peek_leaves_the_message_at_the_head() {
    let dir = TempDir::new("engine");
    let mut h = Harness::open(dir.path(), QueueLimits::default());
    let (peeker, reader) = (h.conn(), h.conn());
    let mut uncommitted = Uncommitted::default();
    for (conn, mode) in [(peeker, TakeMode::Peek), (reader, TakeMode::Remove)] {
        let taken = h
            .engine
            .take(b"p", mode, Some((conn, 1)), usize::MAX, &mut uncommitted);
        assert!(taken.unwrap().is_none());
    }
    h.put_many("p", &["m1", "m2"]);
    let peeked = h.delivered(peeker, EVENT_TIMEOUT).expect("peek answered");
    let read = h.delivered(reader, EVENT_TIMEOUT).expect("read answered");
    assert_eq!((body(&peeked), body(&read)), ("m1".into(), "m1".into()));
    h.confirm(&read);
    assert_eq!(h.drain("p"), strings(&["m2"]));
    h.close();
}

// --------------------------------------------------------------------------------------------
// Limits and discarding
// --------------------------------------------------------------------------------------------

#[test]
fn a_full_queue_refuses_unless_it_discards() {
    let dir = TempDir::new("engine");
    let mut h = Harness::open(dir.path(), limits(Some(2), None, false));
    let outcomes = h.put_many("f", &["a", "b", "c"]);
    assert_eq!(
        outcomes,
        vec![
            Outcome::Stored,
            Outcome::Stored,
            Outcome::Failed(Error::QueueFull)
        ]
    );
    assert_eq!(h.drain("f"), strings(&["a", "b"]));
    h.close();
}

/// Bug 2 of issue 8: staged messages counted toward the limit but only committed ones could be
/// discarded, so a pipelined burst larger than the limit was refused.
#[test]
fn discarding_makes_room_for_a_pipelined_burst() {
    let dir = TempDir::new("engine");
    let mut h = Harness::open(dir.path(), limits(Some(2), None, true));
    h.put("d", "old");
    let outcomes = h.put_many("d", &["a", "b", "c", "d", "e"]);
    assert_eq!(outcomes, vec![Outcome::Stored; 5]);
    let stats = h.stats("d");
    assert_eq!((stats.items, stats.discarded, stats.enqueued), (2, 4, 6));
    assert_eq!(h.drain("d"), strings(&["d", "e"]));
    h.close();
    // What was dropped within the batch is not resurrected by a restart.
    let mut h = Harness::open(dir.path(), limits(Some(2), None, true));
    assert_eq!(h.drain("d"), Vec::<String>::new());
    assert_eq!(h.put_many("d", &["x", "y", "z"]), vec![Outcome::Stored; 3]);
    assert_eq!(h.drain("d"), strings(&["y", "z"]));
    h.close();
}

#[test]
fn discarding_by_bytes_never_drops_open_messages() {
    let dir = TempDir::new("engine");
    let mut h = Harness::open(dir.path(), limits(None, Some(4), true));
    h.put_many("b", &["aa", "bb"]);
    let open = h.take("b", TakeMode::Open).unwrap();
    assert_eq!(h.put("b", "cc"), Outcome::Stored, "discards bb");
    assert_eq!(
        h.put("b", "ddd"),
        Outcome::Failed(Error::QueueFull),
        "with the open aa kept, dropping cc would not make room: nothing is dropped"
    );
    assert_eq!(h.put("b", "eeeee"), Outcome::Failed(Error::QueueFull));
    assert_eq!(h.stats("b").discarded, 1);
    h.give_back(&open);
    assert_eq!(h.drain("b"), strings(&["aa", "cc"]));
    h.close();
}

/// Bug 2 of issue 8: messages discarded to make room for a write that then failed stayed gone.
#[test]
fn a_failed_write_discards_nothing() {
    let dir = TempDir::new("engine");
    let mut h = Harness::open(dir.path(), limits(Some(2), None, true));
    h.put_many("r", &["m1", "m2"]);
    h.engine.fail_writes.store(true, Ordering::Relaxed);
    assert_eq!(h.put("r", "m3"), Outcome::Failed(Error::Storage));
    h.engine.fail_writes.store(false, Ordering::Relaxed);
    let stats = h.stats("r");
    assert_eq!((stats.items, stats.discarded, stats.enqueued), (2, 0, 2));
    // Later commits (which carry the removals of the batch before) lose nothing either.
    h.put("other", "x");
    assert_eq!(h.drain("r"), strings(&["m1", "m2"]));
    h.close();
}

#[test]
fn a_failed_write_leaves_no_trace_and_the_next_one_works() {
    let dir = TempDir::new("engine");
    let mut h = Harness::open(dir.path(), QueueLimits::default());
    h.put("w", "m1");
    h.engine.fail_writes.store(true, Ordering::Relaxed);
    assert_eq!(
        h.put_many("w", &["x", "y"]),
        vec![Outcome::Failed(Error::Storage); 2]
    );
    h.engine.fail_writes.store(false, Ordering::Relaxed);
    assert_eq!(h.stats("w").enqueued, 1);
    assert_eq!(h.put("w", "m2"), Outcome::Stored);
    assert_eq!(h.drain("w"), strings(&["m1", "m2"]));
    h.close();
}

// --------------------------------------------------------------------------------------------
// Delete and flush
// --------------------------------------------------------------------------------------------

/// A loop pass's commit rounds after its first are published before they are written
/// (`CommitRounds`): readers take them from memory, replies showing them wait for the write
/// to come, and one given back meanwhile waits for that write rather than being skipped as gone.
#[test]
fn a_pass_publishes_later_commit_rounds_ahead_of_their_write() {
    let dir = TempDir::new("engine");
    let mut h = Harness::open(dir.path(), QueueLimits::default());
    let me = h.conn();
    let engine = h.engine.clone();
    let mut pass = engine.pass(me.mailbox);
    let mut uncommitted = Uncommitted::default();
    let mut answers = Vec::new();
    for body in ["m1", "m2"] {
        engine.put(b"s", 0, 0, body.as_bytes().to_vec(), me, &mut uncommitted);
        pass.commit(&mut uncommitted, &mut answers);
    }
    // The pass's own loop gets its answers from `commit`, not through its mailbox.
    assert!(h.events.is_empty());
    let answered: Vec<(Outcome, SyncPoint)> = answers
        .into_iter()
        .map(|event| match event {
            Event::Completed {
                conn,
                outcome,
                durable_at,
            } if conn == me.conn => (outcome, durable_at),
            other => panic!("not an answer to {me:?}: {other:?}"),
        })
        .collect();
    let [first, second] = answered[..] else {
        panic!("two answers expected: {answered:?}");
    };
    assert_eq!((first.0, second.0), (Outcome::Stored, Outcome::Stored));
    let id = h.queue_id("s");
    assert!(
        h.stored(id, 0),
        "the first commit is written before it is published"
    );
    assert!(
        !h.stored(id, 1),
        "a later one is published before its write"
    );
    assert!(second.1 > first.1 && second.1 > engine.synced());

    let mut reads = Uncommitted::default();
    let mut take = |mode| {
        engine
            .take(b"s", mode, None, usize::MAX, &mut reads)
            .unwrap()
    };
    let m1 = take(TakeMode::Remove).unwrap();
    let m2 = take(TakeMode::Open).unwrap();
    assert_eq!((body(&m1), body(&m2)), ("m1".to_string(), "m2".to_string()));
    assert_eq!(
        m2.durable_at, second.1,
        "a reply showing m2 waits for its write"
    );
    // Given back, m2 is no longer in memory and not on disk yet: not readable, not gone.
    engine.give_back(&m2.queue, &[m2.seq], &mut reads);
    assert!(engine
        .take(b"s", TakeMode::Remove, None, usize::MAX, &mut reads)
        .unwrap()
        .is_none());
    drop(pass);
    assert!(h.stored(id, 1));
    engine.submit_now(&mut reads);
    drop(engine);
    assert_eq!(h.drain("s"), strings(&["m2"]));
    h.close();
}

#[test]
fn delete_removes_the_queue_and_its_messages() {
    let dir = TempDir::new("engine");
    let mut h = Harness::open(dir.path(), QueueLimits::default());
    h.put_many("d", &["a", "b"]);
    let id = h.queue_id("d");
    assert_eq!(h.delete("d"), Outcome::Deleted);
    assert_eq!(h.delete("d"), Outcome::NotFound);
    assert!(!h.stored(id, 0) && !h.stored(id, 1));
    assert_eq!(h.take_body("d", TakeMode::Remove), None);
    h.put("d", "new");
    assert_ne!(h.queue_id("d"), id, "a new queue, with a new id");
    assert_eq!(h.drain("d"), strings(&["new"]));
    h.close();
}

/// Bug 3 of issue 8: a blocking read that looked its queue up just before a delete registered on
/// the dead queue; no message ever reached it and `cancel_wait` (which looks the queue up by
/// name) did not find it, so the connection waited for a delivery forever.
#[test]
fn a_read_that_races_a_delete_waits_on_the_live_queue() {
    let dir = TempDir::new("engine");
    let mut h = Harness::open(dir.path(), QueueLimits::default());
    for cancel in [true, false] {
        h.put("race", "m0");
        assert!(h.take("race", TakeMode::Remove).is_some());
        let stale = h.engine.lookup(b"race").unwrap().unwrap();
        assert_eq!(h.delete("race"), Outcome::Deleted);
        let mut uncommitted = Uncommitted::default();
        let other = h.conn();
        if cancel {
            // Another blocking read creates the queue again, empty.
            let taken = h.engine.take(
                b"race",
                TakeMode::Remove,
                Some((other, 1)),
                usize::MAX,
                &mut uncommitted,
            );
            assert!(taken.unwrap().is_none());
        }
        // The reader looked the queue up before the delete, and locks it after.
        let reader = h.conn();
        let taken = h
            .engine
            .take_from(
                &stale,
                TakeMode::Remove,
                Some((reader, 9)),
                usize::MAX,
                &mut uncommitted,
            )
            .unwrap();
        assert!(taken.is_none());
        if cancel {
            assert!(
                h.engine.cancel_wait(b"race", reader, 9),
                "the wait must be found to be cancelled, or its connection waits forever"
            );
            assert!(h.engine.cancel_wait(b"race", other, 1));
            // Only those two reads named the queue again: it went with the last of them.
            assert_eq!(h.delete("race"), Outcome::NotFound);
        } else {
            h.put("race", "m1");
            let taken = h.delivered(reader, Duration::from_secs(2));
            let taken = taken.expect("the waiter must get the next message of the queue");
            assert_eq!(body(&taken), "m1");
            h.confirm(&taken);
            assert_eq!(h.delete("race"), Outcome::Deleted);
        }
    }
    h.close();
}

#[test]
fn flush_empties_but_keeps_open_messages_and_counters() {
    let dir = TempDir::new("engine");
    let mut h = Harness::open(dir.path(), QueueLimits::default());
    h.put_many("f", &["a", "b", "c"]);
    h.put("g", "other");
    let open = h.take("f", TakeMode::Open).unwrap();
    assert_eq!(h.flush(Some("f")), Outcome::Flushed);
    let stats = h.stats("f");
    assert_eq!((stats.items, stats.open, stats.flushes), (0, 1, 1));
    h.give_back(&open);
    assert_eq!(h.drain("f"), strings(&["a"]));
    assert_eq!(h.flush(None), Outcome::Flushed);
    assert_eq!(h.drain("g"), Vec::<String>::new());
    h.close();
}

// --------------------------------------------------------------------------------------------
// Recovery
// --------------------------------------------------------------------------------------------

#[test]
fn a_reopened_engine_has_every_queue_and_redelivers_open_messages() {
    let dir = TempDir::new("engine");
    let mut h = Harness::open(dir.path(), QueueLimits::default());
    h.put_many("r", &["a", "b", "c", "d"]);
    h.put("s", "x");
    assert_eq!(h.take_body("r", TakeMode::Remove).as_deref(), Some("a"));
    let b = h.take("r", TakeMode::Open).unwrap();
    let c = h.take("r", TakeMode::Open).unwrap();
    h.confirm(&c);
    drop(b); // still open when the server stops
    h.close();
    let h = Harness::open(dir.path(), QueueLimits::default());
    let stats = h.stats("r");
    assert_eq!((stats.items, stats.enqueued, stats.open), (2, 4, 0));
    assert_eq!(h.drain("r"), strings(&["b", "d"]));
    assert_eq!(h.drain("s"), strings(&["x"]));
    h.close();
}

/// Bug 4 of issue 8: a commit wrote the in-memory head, already past a message whose removal
/// was still in an event loop's uncommitted. After a crash before that removal, nothing ever
/// deleted the message's key: recovery and flush only look at `next_unclaimed..tail`.
#[test]
fn a_crash_leaves_no_orphaned_message_keys() {
    let dir = TempDir::new("engine");
    let mut h = Harness::open(dir.path(), QueueLimits::default());
    h.put_many("o", &["m1", "m2"]);
    let id = h.queue_id("o");
    // A reader takes m1; its loop has not submitted the removal yet...
    let mut unsubmitted = Uncommitted::default();
    let taken = h
        .engine
        .take(b"o", TakeMode::Remove, None, usize::MAX, &mut unsubmitted)
        .unwrap();
    assert_eq!(body(&taken.unwrap()), "m1");
    // ...when another write commits the queue's record, head past m1...
    h.put("o", "m3");
    // ...and the server dies before the removal is submitted.
    drop(unsubmitted);
    h.close();
    let mut h = Harness::open(dir.path(), QueueLimits::default());
    assert!(!h.stored(id, 0), "m1's key must not outlive the crash");
    assert_eq!(h.take_body("o", TakeMode::Peek).as_deref(), Some("m2"));
    // The same through flush, without a restart.
    let mut unsubmitted = Uncommitted::default();
    let taken = h
        .engine
        .take(b"o", TakeMode::Remove, None, usize::MAX, &mut unsubmitted)
        .unwrap();
    assert_eq!(body(&taken.unwrap()), "m2");
    h.put("o", "m4");
    drop(unsubmitted);
    assert_eq!(h.flush(Some("o")), Outcome::Flushed);
    for seq in 0..4 {
        assert!(!h.stored(id, seq), "message {seq} still stored after flush");
    }
    h.close();
}

/// Gets from the head delete nothing one by one: the reclaimer deletes the consumed range, in
/// the write of the queue's record, around the messages still pending (open or given back),
/// which survive it and a restart.
#[test]
fn the_reclaimer_deletes_consumed_messages_but_not_pending_ones() {
    let dir = TempDir::new("engine");
    let mut h = Harness::open(dir.path(), QueueLimits::default());
    h.put_many("r", &["m0", "m1", "m2", "m3", "m4"]);
    let id = h.queue_id("r");
    assert_eq!(h.take_body("r", TakeMode::Remove).as_deref(), Some("m0"));
    let m1 = h.take("r", TakeMode::Open).unwrap();
    let m2 = h.take("r", TakeMode::Open).unwrap();
    h.give_back(&m2);
    assert_eq!(body(&m1), "m1");
    assert_eq!(h.take_body("r", TakeMode::Peek).as_deref(), Some("m2"));
    let m2 = h.take("r", TakeMode::Open).unwrap();
    h.give_back(&m2);
    // m0 is consumed, m1 open, m2 given back; m3 is taken from the head.
    let m2_again = h.take("r", TakeMode::Remove).unwrap();
    assert_eq!(body(&m2_again), "m2");
    h.give_back(&m1);
    assert_eq!(h.take_body("r", TakeMode::Peek).as_deref(), Some("m1"));
    let _m1 = h.take("r", TakeMode::Open).unwrap();
    assert_eq!(h.take_body("r", TakeMode::Remove).as_deref(), Some("m3"));
    assert!(h.stored(id, 0) && h.stored(id, 3), "no delete per get");
    assert!(
        !h.stored(id, 2),
        "a given-back message taken again is deleted by key"
    );

    reclaim::reclaim_pass(&h.engine, &mut Default::default(), true);
    assert!(
        !h.stored(id, 0) && !h.stored(id, 3),
        "the consumed range is deleted"
    );
    assert!(h.stored(id, 1), "the open message is not");
    assert!(h.stored(id, 4), "nor the one not read yet");
    h.close();

    let mut h = Harness::open(dir.path(), QueueLimits::default());
    assert_eq!(
        h.drain("r"),
        strings(&["m1", "m4"]),
        "m1 was open: given back"
    );
    h.put("r", "m5");
    assert_eq!(h.drain("r"), strings(&["m5"]));
    h.close();
}

/// The message table files (start and end sequence numbers) of queue `id` below level 0.
fn leveled_files(h: &Harness, id: u64) -> Vec<(u64, u64)> {
    let mut files: Vec<(u64, u64)> = h
        .engine
        .db
        .live_files()
        .unwrap()
        .into_iter()
        .filter(|f| f.column_family_name == store::MESSAGES_CF && f.level > 0)
        .filter_map(|f| Some((f.start_key?, f.end_key?)))
        .filter(|(start, _)| start.starts_with(&id.to_be_bytes()))
        .map(|(start, end)| (store::message_seq(&start), store::message_seq(&end)))
        .collect();
    files.sort_unstable();
    files
}

/// After a drain, the table files holding nothing but consumed messages are dropped without
/// being read; a file holding a pending (open) message stays whole.
#[test]
fn consumed_files_are_dropped_but_not_one_holding_a_pending_message() {
    let dir = TempDir::new("engine");
    let mut h = Harness::open(dir.path(), QueueLimits::default());
    let id = {
        h.put_numbered("f", 100);
        h.queue_id("f")
    };
    let bodies: Vec<String> = (100..200).map(|i| format!("m{i}")).collect();
    // Two files in the last level: m0..m99 and m100..m199.
    for (range, more) in [((0, 100), None), ((100, 200), Some(&bodies))] {
        if let Some(more) = more {
            h.put_many("f", &more.iter().map(String::as_str).collect::<Vec<_>>());
        }
        store::flush_memtables(&h.engine.db).unwrap();
        h.engine.db.compact_range_cf(
            h.engine.messages(),
            Some(store::message_key(id, range.0)),
            Some(store::message_key(id, range.1)),
        );
    }
    assert_eq!(leveled_files(&h, id), [(0, 99), (100, 199)]);
    for _ in 0..50 {
        assert!(h.take_body("f", TakeMode::Remove).is_some());
    }
    let m50 = h.take("f", TakeMode::Open).unwrap();
    assert_eq!(body(&m50), "m50");
    for _ in 51..200 {
        assert!(h.take_body("f", TakeMode::Remove).is_some());
    }
    let record = {
        let queue = h.engine.lookup(b"f").unwrap().unwrap();
        let q = queue.lock();
        store::QueueMeta::of(&q, q.tail())
    };
    assert_eq!(record.pending, [50]);

    reclaim::drop_consumed_files(&h.engine, &record, 0, record.next_unclaimed);
    assert_eq!(
        leveled_files(&h, id),
        [(0, 99)],
        "m100..m199 dropped, m50's file kept"
    );
    assert!(h.stored(id, 50), "the open message is still there");
    h.give_back(&m50);
    assert_eq!(h.drain("f"), strings(&["m50"]));
    h.close();
}

/// A queue read steadily never stops and may take hours to reach the compaction threshold: its
/// consumed messages are still deleted once there are a thousand of them, without a compaction.
#[test]
fn the_reclaimer_deletes_a_moving_queues_consumed_messages_once_a_thousand_are_consumed() {
    let dir = TempDir::new("engine");
    let mut h = Harness::open(dir.path(), QueueLimits::default());
    h.put_numbered("steady", 1100);
    let id = h.queue_id("steady");
    for _ in 0..1000 {
        assert!(h.take_body("steady", TakeMode::Remove).is_some());
    }
    let mut known = Default::default();
    reclaim::reclaim_pass(&h.engine, &mut known, false);
    assert!(h.stored(id, 0), "1,000 consumed: not yet");
    for _ in 0..100 {
        assert!(h.take_body("steady", TakeMode::Remove).is_some());
    }
    h.put("steady", "next");
    reclaim::reclaim_pass(&h.engine, &mut known, false);
    assert!(!h.stored(id, 0) && !h.stored(id, 1099), "deleted");
    assert!(h.stored(id, 1100), "the next message is not");
    h.close();
}

// --------------------------------------------------------------------------------------------
// The sweep of expired messages
// --------------------------------------------------------------------------------------------

/// One round of the sweep as of `now` (unix ms); how many messages it read.
fn sweep_at(h: &Harness, now: u64) -> usize {
    expiry::sweep_due(&h.engine, now)
}

fn sweep_once(h: &Harness) -> usize {
    sweep_at(h, message::now_ms())
}

/// Bug 6 of issue 8: an expired message behind a live head kept its space until the head
/// reached it.
#[test]
fn the_sweep_drops_expired_messages_behind_a_live_head() {
    let dir = TempDir::new("engine");
    let mut h = Harness::open(dir.path(), QueueLimits::default());
    h.put("s", "live");
    h.put_expiring("s", "dead", 1);
    h.put("s", "live2");
    assert!(sweep_once(&h) > 0);
    let stats = h.stats("s");
    assert_eq!((stats.items, stats.expired, stats.bytes), (2, 1, 9));
    assert_eq!(
        sweep_once(&h),
        0,
        "nothing left that expires: not due again"
    );
    assert_eq!(h.drain("s"), strings(&["live", "live2"]));
    h.close();
}

#[test]
fn the_sweep_reads_only_queues_with_messages_due() {
    let dir = TempDir::new("engine");
    let mut h = Harness::open(dir.path(), QueueLimits::default());
    h.put_many("plain", &["a", "b", "c"]);
    assert_eq!(sweep_once(&h), 0, "nothing with an expiry was ever put");
    let far = message::now_ms() + 3_600_000;
    h.put_expiring("plain", "later", far);
    assert_eq!(sweep_once(&h), 0, "not due before an hour");
    h.close();
    // The expiry index survives a restart, and the queue is swept once due.
    let mut h = Harness::open(dir.path(), QueueLimits::default());
    assert_eq!(sweep_once(&h), 0);
    assert!(sweep_at(&h, far + 1) > 0, "due");
    assert_eq!(h.stats("plain").expired, 1);
    assert_eq!(sweep_at(&h, far + 2), 0, "swept: not due again");
    assert_eq!(h.drain("plain"), strings(&["a", "b", "c"]));
    h.put_many("plain", &["d", "e"]);
    assert_eq!(sweep_at(&h, far + 3), 0);
    h.close();
}

/// A data directory written before queues were unloaded has records without an expiry time:
/// each queue holding messages is swept once after the upgrade, then only when due.
#[test]
fn records_of_the_first_version_are_swept_once_after_the_upgrade() {
    let dir = TempDir::new("engine");
    let mut h = Harness::open(dir.path(), QueueLimits::default());
    h.put_many("old", &["a", "b"]);
    h.put_expiring("old", "gone", 1);
    let id = h.queue_id("old");
    h.close();
    // Rewrite its record as the first version did: no deleted_below, no expiry time.
    {
        let options = StoreOptions::new(MemoryBudget::default());
        let recovered = store::open(dir.path(), &options).unwrap();
        let meta = recovered.db.cf_handle(store::META_CF).unwrap();
        let key = store::meta_key(b"old");
        let record = store::read_record(&recovered.db, b"old").unwrap().unwrap();
        let mut v1 = record.encode();
        v1[0] = 1;
        v1.truncate(v1.len() - 16);
        recovered.db.put_cf(meta, &key, v1).unwrap();
        let index = store::expiry_key(record.next_expiry, id);
        recovered.db.delete_cf(meta, index).unwrap();
        recovered.db.flush_wal(true).unwrap();
    }
    let h = Harness::open(dir.path(), QueueLimits::default());
    assert!(sweep_once(&h) > 0, "swept once");
    assert_eq!(h.stats("old").expired, 1);
    assert_eq!(sweep_once(&h), 0, "then left alone");
    assert_eq!(h.drain("old"), strings(&["a", "b"]));
    h.close();
}

#[test]
fn a_directory_made_before_the_raft_log_opens_with_its_messages_and_the_ids_replicas_need() {
    // What mqd wrote before the raft log's column family existed: only `messages` and `meta`,
    // holding the records and messages of a queue (copied from a directory made today).
    let made = TempDir::new("engine");
    let mut h = Harness::open(made.path(), QueueLimits::default());
    h.put_many("old", &["a", "b", "c"]);
    h.close();
    let old = TempDir::new("engine");
    {
        let source = rocksdb::DB::open_cf(
            &rocksdb::Options::default(),
            made.path(),
            ["messages", "meta", "raft_log"],
        )
        .unwrap();
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let target = rocksdb::DB::open_cf(&options, old.path(), ["messages", "meta"]).unwrap();
        for name in ["messages", "meta"] {
            let (from, to) = (
                source.cf_handle(name).unwrap(),
                target.cf_handle(name).unwrap(),
            );
            for item in source.iterator_cf(from, rocksdb::IteratorMode::Start) {
                let (key, value) = item.unwrap();
                target.put_cf(to, key, value).unwrap();
            }
        }
        target.flush_wal(true).unwrap();
    }
    let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), old.path()).unwrap();
    assert_eq!(cfs, ["default", "messages", "meta"]);
    let h = Harness::open(old.path(), QueueLimits::default());
    assert_eq!(h.engine.check_column_family_ids(), Ok(()));
    assert_eq!(h.drain("old"), strings(&["a", "b", "c"]));
    h.close();
}

#[test]
fn a_leader_that_steps_down_forgets_what_it_held_and_serves_the_applied_state_when_it_leads_again()
{
    let dir = TempDir::new("engine");
    let proposals = Proposals::default();
    let mut h = Harness::open_cluster(dir.path(), &proposals);
    let mut refused = Uncommitted::default();
    let not_yet = h
        .engine
        .take(b"q", TakeMode::Remove, None, 1 << 20, &mut refused);
    assert_eq!(not_yet.err(), Some(Error::NoLeader));

    h.lead();
    assert_eq!(h.put_many("q", &["m0", "m1"]), vec![Outcome::Stored; 2]);
    let first = proposals.commit_all(&h.engine);
    assert!(h.engine.synced() >= *first.last().unwrap());
    // m2 is proposed and not committed yet; m0 is held open: both only in this leader's memory.
    let writer = h.conn();
    let mut uncommitted = Uncommitted::default();
    h.engine
        .put(b"q", 0, 0, b"m2".to_vec(), writer, &mut uncommitted);
    h.engine.submit_now(&mut uncommitted);
    let (outcome, held_for) = h.answered(writer);
    assert_eq!(outcome, Outcome::Stored);
    assert!(held_for > h.engine.synced(), "its reply is held");
    let opened = h.take("q", TakeMode::Open).unwrap();
    assert_eq!(body(&opened), "m0");
    assert_eq!(h.engine.step_downs(), 0);

    h.engine.leading(false);
    // The fence: whoever holds m2's reply sees the count change before any later commit.
    assert_eq!(h.engine.step_downs(), 1);
    assert!(!h.engine.serving());
    let mut uncommitted = Uncommitted::default();
    let refused = h
        .engine
        .take(b"q", TakeMode::Remove, None, 1 << 20, &mut uncommitted);
    assert_eq!(refused.err(), Some(Error::NoLeader));
    assert_eq!(h.put("q", "x"), Outcome::Failed(Error::NoLeader));
    // A handle on the forgotten state does nothing.
    h.confirm(&opened);
    // The next leader commits m2 (and the record of m0 opened); this node applies them as a
    // follower.
    let second = proposals.commit_all(&h.engine);
    assert_eq!(second[0], held_for);
    assert_eq!(h.engine.step_downs(), 1);

    // Leading again: the queue comes back from RocksDB, m0 given back, m2 applied.
    h.lead();
    assert_eq!(h.engine.queue_count(), 1);
    assert_eq!(h.put("q", "m3"), Outcome::Stored);
    let third = proposals.commit_all(&h.engine);
    assert!(third[0] > held_for, "points go on across leaderships");
    assert_eq!(h.drain("q"), ["m0", "m1", "m2", "m3"]);
    assert_eq!(h.engine.step_downs(), 1);

    // Once more, the takes' removals are dropped by the next leader (a node leads again
    // only once its earlier proposals are settled): those messages come back.
    h.engine.leading(false);
    assert_eq!(h.engine.step_downs(), 2);
    proposals.0.lock().clear();
    h.lead();
    assert_eq!(h.put("q", "m4"), Outcome::Stored);
    proposals.commit_all(&h.engine);
    assert_eq!(h.drain("q"), ["m0", "m1", "m2", "m3", "m4"]);
}

#[test]
fn a_lost_proposal_steps_the_leader_down() {
    let dir = TempDir::new("engine");
    let proposals = Proposals::default();
    let mut h = Harness::open_cluster(dir.path(), &proposals);
    h.lead();
    assert_eq!(h.put("q", "m0"), Outcome::Stored);
    let lost = std::mem::take(&mut *proposals.0.lock());
    h.engine.proposal_lost(lost[0].0);
    assert_eq!(h.engine.step_downs(), 1);
    assert!(!h.engine.serving());
    // Lost again (settled late) while not serving: nothing more.
    h.engine.proposal_lost(lost[0].0);
    assert_eq!(h.engine.step_downs(), 1);
    h.lead();
    assert_eq!(h.take_body("q", TakeMode::Remove), None);
}
