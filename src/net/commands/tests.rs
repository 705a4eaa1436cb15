//! The command layer without sockets: requests parsed from memcache text, run against a real
//! engine on a temporary directory, over a `Client` that only keeps its replies' bytes. The
//! engine's events (write outcomes, deliveries to blocked reads) are read from its mailbox and
//! handed to the commands as the event loop would.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::{Client, State};
use crate::engine::{
    ConnRef, Engine, EngineConfig, Event, Mailbox, MemoryBudget, QueueLimits, SyncPoint,
    SyncPolicy, Uncommitted, Wake,
};
use crate::net::timers::Timers;
use crate::net::{Ctx, LoopStats, ServerConfig, Shared};
use crate::protocol::{self, memcache, Parsed, Reply, ReplyStyle};
use crate::test_dir::TempDir;

struct NoWake;

impl Wake for NoWake {
    fn wake(&self) {}
}

/// A connection that is only its replies, with room for any of them (unless `room` says
/// otherwise).
#[derive(Default)]
struct Fake {
    state: State,
    out: Vec<u8>,
    reserved: usize,
    closed: bool,
    /// Room for replies, if limited: then a read that does not fit waits (`waits`).
    room: Option<usize>,
    waits: usize,
}

impl Fake {
    /// The replies so far, as text, forgotten once read.
    fn replies(&mut self) -> String {
        String::from_utf8(std::mem::take(&mut self.out)).unwrap()
    }
}

impl Client for Fake {
    fn id(&self) -> u64 {
        1
    }
    fn conn_ref(&self, ctx: &Ctx) -> ConnRef {
        ConnRef {
            mailbox: ctx.mailbox,
            conn: self.id(),
        }
    }
    fn state(&mut self) -> &mut State {
        &mut self.state
    }
    fn reply_after(&mut self, reply: &Reply, _: SyncPoint, style: &ReplyStyle) {
        protocol::encode(reply, style, &mut self.out);
    }
    fn reply_memory(&self) -> usize {
        self.out.len()
    }
    fn output_room(&self, _: usize, _: &Ctx) -> (usize, usize) {
        self.room.map_or((64 << 10, 1 << 20), |room| (room, 0))
    }
    fn charge_output(&mut self, _: usize, _: &Ctx) {}
    fn wait_for_output_room(&mut self, _: &Ctx) {
        assert!(self.room.is_some(), "a fake client has room unless limited");
        self.waits += 1;
    }
    fn leave_output_line(&self, _: &Ctx) {}
    fn reserve_output(&mut self, bytes: usize) {
        self.reserved = bytes;
    }
    fn close(&mut self) {
        self.closed = true;
    }
}

/// An engine on a temporary directory and what an event loop keeps for its commands.
struct Loop {
    shared: Shared,
    events: Receiver<Event>,
    stats: LoopStats,
    uncommitted: Uncommitted,
    timers: Timers,
    open_timers: Timers,
    next_wait_id: u64,
    /// Removed after the engine is shut down (`Drop` below runs before the fields drop).
    _dir: TempDir,
}

/// The one loop's index (its mailbox is the engine's only one).
const LOOP: u32 = 0;

impl Loop {
    fn new() -> Loop {
        let dir = TempDir::new("commands");
        let (sender, events) = crossbeam_channel::unbounded();
        let mailbox = Mailbox {
            sender,
            waker: Arc::new(NoWake),
        };
        let config = EngineConfig {
            data_dir: dir.path().to_path_buf(),
            sync: SyncPolicy::Never,
            memory: MemoryBudget {
                write_buffers: 8 << 20,
                block_cache: 8 << 20,
            },
            limits: QueueLimits {
                max_items: None,
                max_bytes: None,
                discard_old: false,
            },
            min_free_bytes: 0,
            max_fanout: 64,
            prime_wal: false,
            max_queues: None,
            queue_memory: 64 << 20,
            cluster: false,
        };
        let server = ServerConfig {
            max_open_reads: 2,
            open_timeout: Some(Duration::from_secs(60)),
            ..ServerConfig::default()
        };
        let shared = Shared::new(Engine::start(config, vec![mailbox]).unwrap(), &server, None);
        Loop {
            shared,
            events,
            stats: LoopStats::default(),
            uncommitted: Uncommitted::default(),
            timers: Timers::default(),
            open_timers: Timers::default(),
            next_wait_id: 0,
            _dir: dir,
        }
    }

    /// Runs `f` with the context a loop gives its commands.
    fn with_ctx<R>(&mut self, f: impl FnOnce(&mut Ctx) -> R) -> R {
        let mut spare_inputs = Vec::new();
        let mut ctx = Ctx {
            shared: &self.shared,
            stats: &self.stats,
            uncommitted: &mut self.uncommitted,
            timers: &mut self.timers,
            open_timers: &mut self.open_timers,
            mailbox: LOOP,
            synced: self.shared.engine.synced(),
            next_wait_id: &mut self.next_wait_id,
            spare_inputs: &mut spare_inputs,
        };
        f(&mut ctx)
    }

    /// Parses one memcache text request and runs it.
    fn run(&mut self, client: &mut Fake, request: &str) {
        let (command, style) = match memcache::parse(request.as_bytes(), &self.shared.limits) {
            Parsed::Command { command, style, .. } => (command, style),
            other => panic!("{request:?} does not parse: {other:?}"),
        };
        self.with_ctx(|ctx| super::execute(command, style, client, ctx));
    }

    /// Commits what the commands collected, as a loop's pass does, and hands the engine's
    /// events to `client`.
    fn commit(&mut self, client: &mut Fake) {
        let engine = self.shared.engine.clone();
        let mut pass = engine.pass(LOOP);
        let mut answers = Vec::new();
        pass.commit(&mut self.uncommitted, &mut answers);
        pass.submit(&mut self.uncommitted);
        drop(pass);
        answers.extend(self.events.try_iter());
        for event in answers {
            self.with_ctx(|ctx| match event {
                Event::Completed { outcome, .. } => super::write_answered(client, outcome, ctx),
                Event::Delivered { wait_id, taken, .. } => {
                    assert!(super::deliver(client, wait_id, taken, ctx).is_ok());
                }
            });
        }
    }

    /// Runs a request and commits it: the reply it has once the loop's pass is over.
    fn answer(&mut self, client: &mut Fake, request: &str) -> String {
        self.run(client, request);
        self.commit(client);
        client.replies()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.shared.engine.shutdown();
    }
}

#[test]
fn a_set_is_answered_once_committed_and_a_get_takes_it() {
    let mut lp = Loop::new();
    let mut c = Fake::default();
    lp.run(&mut c, "set q 5 0 3\r\nabc\r\n");
    assert!(c.state.writes_pending());
    assert_eq!(c.replies(), "", "answered before the commit");
    lp.commit(&mut c);
    assert!(!c.state.writes_pending());
    assert_eq!(c.replies(), "STORED\r\n");
    assert_eq!(
        lp.answer(&mut c, "get q\r\n"),
        "VALUE q 5 3\r\nabc\r\nEND\r\n"
    );
    assert_eq!(lp.answer(&mut c, "get q\r\n"), "END\r\n");
    let stats = &lp.stats;
    let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    assert_eq!(count(&stats.set_cmds), 1);
    assert_eq!(count(&stats.set_hits), 1);
    assert_eq!(count(&stats.get_cmds), 2);
    assert_eq!(count(&stats.get_hits), 1);
    assert_eq!(count(&stats.get_misses), 1);
}

#[test]
fn a_read_waiting_for_room_counts_once_however_often_it_is_retried() {
    let mut lp = Loop::new();
    let mut c = Fake::default();
    assert_eq!(
        lp.answer(
            &mut c,
            "set q 0 0 1000\r\n{}\r\n"
                .replace("{}", &"x".repeat(1000))
                .as_str()
        ),
        "STORED\r\n"
    );
    c.room = Some(100);
    lp.run(&mut c, "get q/peek\r\n");
    assert_eq!(
        (c.waits, c.replies().as_str()),
        (1, ""),
        "no room: it waits"
    );
    for _ in 0..5 {
        // The loop retries a parked connection every few milliseconds.
        lp.with_ctx(|ctx| super::get::resume(&mut c, ctx));
    }
    assert_eq!(c.waits, 6, "still no room");
    c.room = None;
    lp.with_ctx(|ctx| super::get::resume(&mut c, ctx));
    assert!(c.replies().starts_with("VALUE q/peek 0 1000\r\n"));
    let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    assert_eq!(
        count(&lp.stats.get_cmds),
        1,
        "one get, however often retried"
    );
    assert_eq!(count(&lp.stats.cmd_peek), 1);
    assert_eq!(count(&lp.stats.get_hits), 1);
}

#[test]
fn a_quiet_set_is_not_answered() {
    let mut lp = Loop::new();
    let mut c = Fake::default();
    assert_eq!(lp.answer(&mut c, "set q 0 0 1 noreply\r\na\r\n"), "");
    assert_eq!(
        lp.answer(&mut c, "get q/peek\r\n"),
        "VALUE q/peek 0 1\r\na\r\nEND\r\n"
    );
    assert_eq!(lp.stats.cmd_peek.load(Ordering::Relaxed), 1);
}

#[test]
fn a_multi_key_get_answers_every_key_in_order() {
    let mut lp = Loop::new();
    let mut c = Fake::default();
    lp.run(&mut c, "set a 0 0 1\r\n1\r\n");
    lp.run(&mut c, "set b 0 0 1\r\n2\r\n");
    lp.commit(&mut c);
    assert_eq!(c.replies(), "STORED\r\nSTORED\r\n");
    assert_eq!(
        lp.answer(&mut c, "get b none a\r\n"),
        "VALUE b 0 1\r\n2\r\nVALUE a 0 1\r\n1\r\nEND\r\n"
    );
}

#[test]
fn an_open_message_is_held_until_closed_or_aborted() {
    let mut lp = Loop::new();
    let mut c = Fake::default();
    lp.answer(&mut c, "set q 0 0 1\r\na\r\n");
    lp.answer(&mut c, "set q 0 0 1\r\nb\r\n");
    assert_eq!(
        lp.answer(&mut c, "get q/open\r\n"),
        "VALUE q/open 0 1\r\na\r\nEND\r\n"
    );
    // A plain read of a queue it holds a message of is refused; a peek is not.
    assert!(lp.answer(&mut c, "get q\r\n").contains("ERROR"));
    assert_eq!(
        lp.answer(&mut c, "get q/peek\r\n"),
        "VALUE q/peek 0 1\r\nb\r\nEND\r\n"
    );
    // Aborted, it is the head again; closed, it is gone.
    assert_eq!(lp.answer(&mut c, "get q/abort\r\n"), "END\r\n");
    assert_eq!(
        lp.answer(&mut c, "get q/close/open\r\n"),
        "VALUE q/close/open 0 1\r\na\r\nEND\r\n"
    );
    assert_eq!(lp.answer(&mut c, "get q/close\r\n"), "END\r\n");
    assert_eq!(
        lp.answer(&mut c, "get q\r\n"),
        "VALUE q 0 1\r\nb\r\nEND\r\n"
    );
}

#[test]
fn opening_more_than_allowed_is_refused() {
    let mut lp = Loop::new();
    let mut c = Fake::default();
    for queue in ["a", "b", "c"] {
        lp.answer(&mut c, &format!("set {queue} 0 0 1\r\nx\r\n"));
    }
    assert!(lp.answer(&mut c, "get a/open\r\n").starts_with("VALUE"));
    assert!(lp.answer(&mut c, "get b/open\r\n").starts_with("VALUE"));
    // `max_open_reads` is 2 here.
    assert!(lp.answer(&mut c, "get c/open\r\n").contains("ERROR"));
    assert_eq!(c.state.open_reads.len(), 2);
}

#[test]
fn an_open_message_goes_back_when_its_timeout_passes_or_its_connection_goes() {
    let mut lp = Loop::new();
    let mut c = Fake::default();
    lp.answer(&mut c, "set q 0 0 1\r\na\r\n");
    lp.answer(&mut c, "get q/open\r\n");
    let far = Instant::now() + Duration::from_secs(3600);
    let (conn, open_id) = lp.open_timers.pop_due(far).expect("an open timeout");
    assert_eq!(conn, c.id());
    lp.with_ctx(|ctx| super::open_expired(&mut c, open_id, ctx));
    let mut other = Fake::default();
    assert!(lp.answer(&mut other, "get q/open\r\n").starts_with("VALUE"));
    lp.with_ctx(|ctx| super::release_reads(&mut other, ctx));
    assert!(other.state.open_reads.is_empty());
    assert_eq!(
        lp.answer(&mut c, "get q\r\n"),
        "VALUE q 0 1\r\na\r\nEND\r\n"
    );
}

#[test]
fn a_blocked_read_is_handed_the_next_message() {
    let mut lp = Loop::new();
    let mut c = Fake::default();
    lp.run(&mut c, "get q/t=60000\r\n");
    assert!(c.state.reading(), "it waits");
    assert!(c.reserved > 0, "it holds room for its message");
    assert_eq!(c.replies(), "");
    let mut writer = Fake::default();
    lp.run(&mut writer, "set q 0 0 2\r\nhi\r\n");
    lp.commit(&mut c);
    assert!(!c.state.reading());
    assert_eq!(c.reserved, 0);
    assert_eq!(c.replies(), "VALUE q/t=60000 0 2\r\nhi\r\nEND\r\n");
}

#[test]
fn a_blocked_read_misses_when_its_deadline_passes() {
    let mut lp = Loop::new();
    let mut c = Fake::default();
    lp.run(&mut c, "get q/t=60000\r\n");
    let far = Instant::now() + Duration::from_secs(3600);
    let (_, wait_id) = lp.timers.pop_due(far).expect("a wait deadline");
    // Another id is not this read's.
    lp.with_ctx(|ctx| super::wait_expired(&mut c, wait_id + 1, ctx));
    assert!(c.state.reading());
    lp.with_ctx(|ctx| super::wait_expired(&mut c, wait_id, ctx));
    assert!(!c.state.reading());
    assert_eq!(c.replies(), "END\r\n");
    assert_eq!(lp.stats.get_misses.load(Ordering::Relaxed), 1);
}

#[test]
fn a_blocked_read_is_answered_when_the_server_stops() {
    let mut lp = Loop::new();
    let mut c = Fake::default();
    lp.run(&mut c, "get q/t=60000\r\n");
    lp.with_ctx(|ctx| super::end_wait(&mut c, ctx));
    assert_eq!(c.replies(), "END\r\n");
}

#[test]
fn delete_and_flush_answer_once_committed() {
    let mut lp = Loop::new();
    let mut c = Fake::default();
    lp.answer(&mut c, "set q 0 0 1\r\na\r\n");
    assert_eq!(lp.answer(&mut c, "delete q\r\n"), "DELETED\r\n");
    assert_eq!(lp.answer(&mut c, "delete q\r\n"), "NOT_FOUND\r\n");
    lp.answer(&mut c, "set q 0 0 1\r\na\r\n");
    assert_eq!(lp.answer(&mut c, "flush q\r\n"), "END\r\n");
    assert_eq!(lp.answer(&mut c, "get q\r\n"), "END\r\n");
    lp.answer(&mut c, "set q 0 0 1\r\na\r\n");
    assert_eq!(lp.answer(&mut c, "flush_all\r\n"), "OK\r\n");
    assert_eq!(lp.answer(&mut c, "get q\r\n"), "END\r\n");
}

#[test]
fn writes_are_told_apart_and_weighed() {
    let lp = Loop::new();
    let parse = |request: &str| match memcache::parse(request.as_bytes(), &lp.shared.limits) {
        Parsed::Command { command, .. } => command,
        other => panic!("{other:?}"),
    };
    let set = parse("set q 0 0 3\r\nabc\r\n");
    assert!(super::is_write(&set));
    assert!(super::is_write(&parse("delete q\r\n")));
    assert!(!super::is_write(&parse("get q\r\n")));
    let mut lp = lp;
    assert_eq!(lp.with_ctx(|ctx| super::write_weight(&set, ctx)), 3);
}

#[test]
fn the_reports_and_connection_commands_answer_at_once() {
    let mut lp = Loop::new();
    let mut c = Fake::default();
    lp.run(&mut c, "version\r\n");
    assert_eq!(
        c.replies(),
        format!("VERSION {}\r\n", env!("CARGO_PKG_VERSION"))
    );
    lp.run(&mut c, "stats\r\n");
    let stats = c.replies();
    assert!(
        stats.contains("STAT curr_items") || stats.contains("STAT pid"),
        "{stats}"
    );
    assert!(stats.ends_with("END\r\n"));
    lp.run(&mut c, "stats reset\r\n");
    assert_eq!(c.replies(), "RESET\r\n");
    assert!(!c.closed);
    lp.run(&mut c, "quit\r\n");
    assert!(c.closed);
    assert_eq!(c.replies(), "");
}

#[test]
fn the_commands_say_what_they_have_in_flight_for_a_step_down_to_close() {
    // `Connection::in_flight` closes a connection on a step-down for any of these.
    let mut lp = Loop::new();
    let mut c = Fake::default();
    let idle = |c: &Fake| !c.state.writes_pending() && !c.state.reading() && !c.state.holds_open();
    assert!(idle(&c));
    lp.run(&mut c, "set q 0 0 1\r\na\r\n");
    assert!(c.state.writes_pending(), "a write not answered yet");
    lp.commit(&mut c);
    assert!(idle(&c));
    assert_eq!(c.replies(), "STORED\r\n");
    assert!(lp.answer(&mut c, "get q/open\r\n").starts_with("VALUE"));
    assert!(c.state.holds_open(), "a message held open");
    assert_eq!(lp.answer(&mut c, "get q/close\r\n"), "END\r\n");
    assert!(idle(&c));
    lp.run(&mut c, "get q/t=60000\r\n");
    assert!(c.state.reading(), "a blocked read");
}
