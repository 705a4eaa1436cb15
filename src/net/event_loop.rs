//! One event-loop thread: readiness from mio, connections in a slab, deadlines of blocked reads,
//! and the engine's events (committed writes, delivered messages) from this loop's mailbox.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Interest, Poll, Token, Waker};

use super::commands;
use super::connection::Connection;
use super::housekeeping::{Chores, Orphans};
use super::stream::{Listener, Stream};
use super::timers::Timers;
use super::{Ctx, LoopStats, Shared};
use crate::engine::{Event, Pass, SyncPoint, Uncommitted, Wake};
use crate::id_hash::IdSet;

const WAKER: Token = Token(0);
const FIRST_LISTENER: usize = 1;
const FIRST_CONNECTION: usize = 1024;
/// Tokens of the leader's sockets of forwarded connections (`forward`): this plus the slot.
const FIRST_UPSTREAM: usize = 1 << (usize::BITS - 2);
/// How long a stopping server waits for connections to finish their writes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Most commits one loop pass makes before it polls again: each commit answers writes, which
/// lets reads pipelined behind them run and maybe write more.
const MAX_COMMITS_PER_PASS: usize = 64;
/// Removals of consumed messages (which no one waits for) that the engine kept for the next
/// commit are written by the loop at the latest this long after (see `Engine::submit`).
const DEFERRED_REMOVALS_FOR: Duration = Duration::from_millis(20);
/// Most connections a loop looks over to decide to sync on its own thread
/// (`EventLoop::sync_if_all_wait`).
const MOST_INLINE_SYNC_CONNECTIONS: usize = 256;
/// Replies ready this long are written before the loop's next commit rather than at the end of
/// the pass (`EventLoop::flush_if_overdue`).
const FLUSH_OVERDUE: Duration = Duration::from_millis(1);

/// Wakes a loop from other threads, but only when it is asleep in `poll`: a busy loop looks at
/// its mailbox before it sleeps anyway, and an eventfd write per event would cost a syscall and
/// a context switch each.
pub struct LoopWaker {
    waker: Waker,
    asleep: AtomicBool,
}

impl LoopWaker {
    pub fn new(waker: Waker) -> LoopWaker {
        LoopWaker {
            waker,
            asleep: AtomicBool::new(false),
        }
    }

    /// Wakes the loop even if it is busy (shutdown).
    pub fn force(&self) {
        if let Err(e) = self.waker.wake() {
            log::error!("cannot wake event loop: {e}");
        }
    }
}

impl Wake for LoopWaker {
    fn wake(&self) {
        if self.asleep.swap(false, Ordering::SeqCst) {
            self.force();
        }
    }
}

/// Where loop 0 sends a connection it accepted for another loop (and the server one that
/// another member forwarded to this one).
pub struct Peer {
    pub handoff: Sender<Arrival>,
    pub waker: Arc<LoopWaker>,
}

/// A connection handed to a loop.
pub struct Arrival {
    pub stream: Stream,
    /// Another member forwarded it (`forward`): it is never forwarded again.
    pub forwarded: bool,
}

pub struct EventLoop {
    pub index: u32,
    pub poll: Poll,
    pub waker: Arc<LoopWaker>,
    pub listeners: Vec<Listener>,
    /// Every loop (this one included), for dealing out accepted connections.
    pub peers: Vec<Peer>,
    pub handoffs: Receiver<Arrival>,
    pub mailbox: Receiver<Event>,
    pub shared: Arc<Shared>,
    pub stats: Arc<LoopStats>,
    pub(super) conns: Vec<Option<Connection>>,
    generations: Vec<u32>,
    free: Vec<usize>,
    timers: Timers,
    open_timers: Timers,
    uncommitted: Uncommitted,
    next_wait_id: u64,
    next_peer: usize,
    drain_deadline: Option<Instant>,
    /// Connections waiting for a server-wide budget, retried every few milliseconds.
    parked: IdSet,
    /// Connections that stopped at their share of a pass (`Connection::yielded`): driven again
    /// next pass, which comes at once.
    yielded: IdSet,
    /// Connections with replies waiting for a sync, and the sync point last seen (what its
    /// connections trust as durable: `Ctx::synced`).
    held: IdSet,
    seen_synced: SyncPoint,
    /// The engine's step-down count last seen (`release_held`).
    seen_step_downs: u64,
    /// Under `--cluster`, the leader this node knew when the loop last looked
    /// (`drop_stale_pipes`).
    seen_leader: u64,
    /// The point its connections are told is durable (`Ctx::synced`): the engine's, read at
    /// each `with_conn`, fenced against a step-down.
    synced_now: SyncPoint,
    /// Connections with replies to write at the end of this pass (`flush_pending`), and since
    /// when the first of them waits.
    unflushed: Vec<u64>,
    unflushed_since: Instant,
    /// Since when removals this loop submitted may wait in the engine for the next commit.
    deferred_since: Option<Instant>,
    /// Write weights of closed connections whose writes the committer has not answered yet.
    orphans: Orphans,
    /// When the periodic chores (`retry_parked`, `sweep`) are due.
    chores: Chores,
    spare_inputs: Vec<Vec<u8>>,
    /// What the pass's commits answered for this loop (`Pass::commit`), kept for its capacity.
    answers: Vec<Event>,
}

impl EventLoop {
    pub fn new(
        index: u32,
        poll: Poll,
        waker: Arc<LoopWaker>,
        handoffs: Receiver<Arrival>,
        mailbox: Receiver<Event>,
        shared: Arc<Shared>,
        stats: Arc<LoopStats>,
    ) -> EventLoop {
        EventLoop {
            index,
            poll,
            waker,
            listeners: Vec::new(),
            peers: Vec::new(),
            handoffs,
            mailbox,
            shared,
            stats,
            conns: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            timers: Timers::default(),
            open_timers: Timers::default(),
            uncommitted: Uncommitted::default(),
            next_wait_id: 0,
            next_peer: 0,
            drain_deadline: None,
            parked: IdSet::default(),
            yielded: IdSet::default(),
            held: IdSet::default(),
            seen_synced: SyncPoint::NONE,
            seen_step_downs: 0,
            seen_leader: 0,
            synced_now: SyncPoint::NONE,
            unflushed: Vec::new(),
            unflushed_since: Instant::now(),
            deferred_since: None,
            orphans: Orphans::default(),
            chores: Chores::new(),
            spare_inputs: Vec::new(),
            answers: Vec::new(),
        }
    }

    /// Registers the listeners this loop accepts on.
    pub fn listen(&mut self, listeners: Vec<Listener>) -> std::io::Result<()> {
        for (i, mut listener) in listeners.into_iter().enumerate() {
            let token = Token(FIRST_LISTENER + i);
            self.poll
                .registry()
                .register(&mut listener, token, Interest::READABLE)?;
            self.listeners.push(listener);
        }
        Ok(())
    }

    /// Runs until the server stops and every connection is closed.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            let mut timeout = match (self.timers.timeout(now), self.open_timers.timeout(now)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(wait) = self.chores_timeout(now) {
                timeout = Some(timeout.map_or(wait, |t| t.min(wait)));
            }
            if let Some(since) = self.deferred_since {
                let wait = (since + DEFERRED_REMOVALS_FOR).saturating_duration_since(now);
                timeout = Some(timeout.map_or(wait, |t| t.min(wait)));
            }
            if self.drain_deadline.is_some() {
                timeout = Some(timeout.map_or(Duration::from_millis(50), |t| {
                    t.min(Duration::from_millis(50))
                }));
            }
            // Say we are going to sleep, then look once more: an event sent before the flag was
            // set is seen here, one sent after it wakes the poll.
            self.waker.asleep.store(true, Ordering::SeqCst);
            if !self.mailbox.is_empty()
                || !self.handoffs.is_empty()
                || !self.yielded.is_empty()
                || self.sync_advanced()
                || self.shared.engine.step_downs() != self.seen_step_downs
            {
                timeout = Some(Duration::ZERO);
            }
            let polled = self.poll.poll(&mut events, timeout);
            self.waker.asleep.store(false, Ordering::SeqCst);
            if let Err(e) = polled {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log::error!("poll failed: {e}");
                    return;
                }
            }
            let engine = self.shared.engine.clone();
            let mut pass = engine.pass(self.index);
            // Those that yielded last pass; those that yield in this one wait for the next.
            let yielded = std::mem::take(&mut self.yielded);
            // Replies the last sync released go out first, before this pass's new work.
            self.release_held();
            self.drop_stale_pipes();
            self.flush_pending();
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    Token(t) if t < FIRST_CONNECTION => self.accept(t - FIRST_LISTENER),
                    Token(t) if t >= FIRST_UPSTREAM => {
                        let slot = t - FIRST_UPSTREAM;
                        if let Some(Some(conn)) = self.conns.get_mut(slot) {
                            if event.is_readable() || event.is_read_closed() {
                                conn.upstream_readable();
                            }
                            self.drive(slot);
                        }
                    }
                    Token(t) => {
                        let slot = t - FIRST_CONNECTION;
                        if let Some(Some(conn)) = self.conns.get_mut(slot) {
                            if event.is_readable() || event.is_read_closed() {
                                conn.readable = true;
                                conn.read_closed |= event.is_read_closed();
                            }
                            if event.is_writable() {
                                conn.writable();
                            }
                            self.drive(slot);
                        }
                    }
                }
            }
            // After this pass's events: a connection that yielded goes behind those that just
            // became readable.
            for id in yielded {
                if let Some(slot) = self.slot_of(id) {
                    self.drive(slot);
                }
            }
            while let Ok(arrival) = self.handoffs.try_recv() {
                self.adopt(arrival.stream, arrival.forwarded);
            }
            while let Ok(event) = self.mailbox.try_recv() {
                self.dispatch(event);
            }
            let now = Instant::now();
            while let Some((conn, wait_id)) = self.timers.pop_due(now) {
                if let Some(slot) = self.slot_of(conn) {
                    self.with_conn(slot, |c, ctx| commands::wait_expired(c, wait_id, ctx));
                    self.drive(slot);
                }
            }
            while let Some((conn, open_id)) = self.open_timers.pop_due(now) {
                if let Some(slot) = self.slot_of(conn) {
                    self.with_conn(slot, |c, ctx| commands::open_expired(c, open_id, ctx));
                }
            }
            self.retry_parked();
            self.sweep(now);
            self.commit(&mut pass);
            self.sync_if_all_wait(&mut pass);
            drop(pass);
            self.release_held();
            self.flush_pending();
            if self.shared.shutting_down.load(Ordering::Acquire) && self.drain() {
                let mut pass = engine.pass(self.index);
                pass.submit(&mut self.uncommitted);
                pass.write_deferred();
                return;
            }
        }
    }

    /// Accepts every pending connection on a listener and deals them out to the loops.
    fn accept(&mut self, listener: usize) {
        loop {
            let Some(l) = self.listeners.get(listener) else {
                return;
            };
            match l.accept() {
                Ok((stream, peer)) => {
                    let shared = &self.shared;
                    if shared.curr_connections.load(Ordering::Relaxed) >= shared.max_connections {
                        log::warn!("refusing {peer}: --max-connections reached");
                        continue;
                    }
                    shared.curr_connections.fetch_add(1, Ordering::Relaxed);
                    shared.total_connections.fetch_add(1, Ordering::Relaxed);
                    let target = self.next_peer % self.peers.len().max(1);
                    self.next_peer += 1;
                    if target == self.index as usize || self.peers.is_empty() {
                        self.adopt(stream, false);
                    } else {
                        let peer = &self.peers[target];
                        let arrival = Arrival {
                            stream,
                            forwarded: false,
                        };
                        if peer.handoff.send(arrival).is_ok() {
                            peer.waker.wake();
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors, say: try again on the next readiness event.
                    log::error!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Takes a connection into this loop.
    fn adopt(&mut self, mut stream: Stream, forwarded: bool) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.generations.push(0);
            self.conns.len() - 1
        });
        let token = Token(FIRST_CONNECTION + slot);
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::error!("cannot register connection: {e}");
            self.free.push(slot);
            self.shared.curr_connections.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let id = (u64::from(self.generations[slot]) << 32) | slot as u64;
        self.conns[slot] = Some(Connection::new(stream, id, forwarded));
        self.drive(slot);
    }

    pub(super) fn slot_of(&self, conn: u64) -> Option<usize> {
        let slot = (conn & 0xffff_ffff) as usize;
        let generation = (conn >> 32) as u32;
        match self.conns.get(slot) {
            Some(Some(_)) if self.generations[slot] == generation => Some(slot),
            _ => None,
        }
    }

    /// Runs `f` on a connection with the loop's context.
    pub(super) fn with_conn<R>(
        &mut self,
        slot: usize,
        f: impl FnOnce(&mut Connection, &mut Ctx) -> R,
    ) -> Option<R> {
        let conn = self.conns.get_mut(slot)?.as_mut()?;
        // The engine's point as it is now, unless this node stepped down since the loop last
        // looked: then the point from before stands until `release_held` has closed what the
        // step-down voids (read in the order `release_held` explains).
        let engine = &self.shared.engine;
        let synced = engine.synced();
        if engine.step_downs() == self.seen_step_downs {
            self.synced_now = synced;
        }
        let mut ctx = Ctx {
            shared: &self.shared,
            stats: &self.stats,
            uncommitted: &mut self.uncommitted,
            timers: &mut self.timers,
            open_timers: &mut self.open_timers,
            mailbox: self.index,
            synced: self.synced_now,
            next_wait_id: &mut self.next_wait_id,
            spare_inputs: &mut self.spare_inputs,
        };
        Some(f(conn, &mut ctx))
    }

    /// Lets a connection make progress, and closes it if it is done.
    pub(super) fn drive(&mut self, slot: usize) {
        let state = self.with_conn(slot, |c, ctx| {
            c.drive(ctx);
            (
                c.finished(),
                c.parked(),
                c.held(),
                c.unflushed(),
                c.yielded,
                c.id,
                c.upstream_unregistered(),
            )
        });
        let Some((finished, parked, held, unflushed, yielded, id, to_register)) = state else {
            return;
        };
        if finished || (to_register && !self.register_upstream(slot)) {
            self.close(slot);
            return;
        }
        if yielded {
            self.yielded.insert(id);
        }
        if parked {
            self.parked.insert(id);
        }
        if held {
            self.held.insert(id);
        }
        if unflushed && self.unflushed.last() != Some(&id) {
            if self.unflushed.is_empty() {
                self.unflushed_since = Instant::now();
            }
            self.unflushed.push(id);
        }
    }

    /// Writes the replies waiting for the end of the pass now if they have waited long: a commit
    /// may block on RocksDB for a while (a write stall), and replies ready before it should not.
    fn flush_if_overdue(&mut self) {
        if !self.unflushed.is_empty() && self.unflushed_since.elapsed() >= FLUSH_OVERDUE {
            self.flush_pending();
        }
    }

    /// Writes the replies this pass produced, one `send` per connection (see
    /// `connection::FLUSH_EARLY`), and closes those that are done.
    fn flush_pending(&mut self) {
        let mut ids = std::mem::take(&mut self.unflushed);
        for id in ids.drain(..) {
            let Some(slot) = self.slot_of(id) else {
                continue;
            };
            let finished = self.with_conn(slot, |c, ctx| {
                c.flush(ctx);
                c.finished()
            });
            if finished == Some(true) {
                self.close(slot);
            }
        }
        self.unflushed = ids;
    }

    /// Commits what this pass's commands wrote, and runs what the answers let run (a read
    /// pipelined behind a write runs once the write is committed, not once it is synced), a
    /// bounded number of times, as the pass's commit rounds.
    fn commit(&mut self, pass: &mut Pass) {
        if self.uncommitted.awaited() {
            // The commit writes any deferred removals too.
            self.deferred_since = None;
            for _ in 0..MAX_COMMITS_PER_PASS {
                if self.uncommitted.is_empty() {
                    break;
                }
                self.flush_if_overdue();
                let mut answers = std::mem::take(&mut self.answers);
                pass.commit(&mut self.uncommitted, &mut answers);
                // What the mailbox holds was sent before this commit's answers.
                while let Ok(event) = self.mailbox.try_recv() {
                    self.dispatch(event);
                }
                for event in answers.drain(..) {
                    self.dispatch(event);
                }
                self.answers = answers;
            }
        }
        if !self.uncommitted.is_empty() {
            // Removals alone are deferred; writes past the last round are answered next pass.
            if !self.uncommitted.awaited() {
                self.deferred_since.get_or_insert_with(Instant::now);
            }
            pass.submit(&mut self.uncommitted);
        }
        if self
            .deferred_since
            .is_some_and(|since| since.elapsed() >= DEFERRED_REMOVALS_FOR)
        {
            pass.write_deferred();
            self.deferred_since = None;
        }
    }

    /// Syncs on this thread when every connection of the loop waits for replies held for a
    /// sync, and none for more than one write: clients that do not pipeline, which can send
    /// nothing more before the fsync. There is then nothing for the syncer's fsync to overlap
    /// with, and the replies go out without two thread hand-offs (see
    /// `Pass::all_clients_wait`). A client with several writes in flight may send more while
    /// the syncer's fsync runs: the loop goes on reading instead.
    fn sync_if_all_wait(&mut self, pass: &mut Pass) {
        let open = self.conns.len() - self.free.len();
        if self.held.is_empty()
            || self.held.len() < open
            || open > MOST_INLINE_SYNC_CONNECTIONS
            || self.sync_advanced()
        {
            return;
        }
        let unpipelined = self.held.iter().all(|&id| {
            self.slot_of(id)
                .and_then(|slot| self.conns[slot].as_ref())
                .is_some_and(|c| c.unsynced_writes() <= 1)
        });
        if unpipelined {
            pass.all_clients_wait();
        }
    }

    /// Whether the syncer got further since the held replies were last looked at.
    fn sync_advanced(&self) -> bool {
        !self.held.is_empty() && self.shared.engine.synced() != self.seen_synced
    }

    /// Sends the replies that the last sync released, after the fence against a step-down
    /// (see `crate::engine`'s `cluster`): the synced point is read first, the step-down count
    /// second. Unchanged count: the point covers only writes of the leadership this loop's held
    /// replies come from, and releases them. Changed: every connection with anything in flight
    /// is closed first, judged by the point seen before (a reply held past it may be for a
    /// write the next leader drops, however far later commits move the point); those left
    /// hold nothing, and whatever they run now is refused until this node leads again.
    fn release_held(&mut self) {
        let engine = &self.shared.engine;
        let synced = engine.synced();
        let step_downs = engine.step_downs();
        if step_downs != self.seen_step_downs {
            // Closed with the point from before the step-down (`with_conn` keeps it until the
            // count is taken in).
            self.close_in_flight();
            self.seen_step_downs = step_downs;
        }
        if synced == self.seen_synced {
            return;
        }
        self.seen_synced = synced;
        for id in std::mem::take(&mut self.held) {
            if let Some(slot) = self.slot_of(id) {
                self.drive(slot);
            }
        }
    }

    /// Closes the connections piped to a member that no longer leads, once this node knows
    /// the next leader (or leads itself): a leader cut off from the others cannot tell the
    /// members that forwarded to it, and their clients would wait on it until the kernel gave
    /// up. As when a leader fails (protocol-spec/cluster.md 4), what such a client sent and
    /// was not answered may or may not have been committed; it reconnects and is forwarded to
    /// the new leader. Looked at only when the leader changes.
    fn drop_stale_pipes(&mut self) {
        let Some(forwarding) = self.shared.forwarding.as_ref() else {
            return;
        };
        let leader = forwarding.leader();
        if leader == self.seen_leader {
            return;
        }
        self.seen_leader = leader;
        if leader == 0 || forwarding.current.load(Ordering::Relaxed) == 0 {
            return;
        }
        let target = forwarding.route(false);
        let stale: Vec<usize> = (0..self.conns.len())
            .filter(|&slot| {
                let to = self.conns[slot].as_ref().and_then(Connection::forwarded_to);
                to.is_some() && to != target
            })
            .collect();
        for slot in stale.iter().copied() {
            self.close(slot);
        }
        log::info!(
            "node {leader} leads now: closed {} connections forwarded to the leader before",
            stale.len()
        );
    }

    /// This node stepped down: closes the connections whose state rests on the engine's state
    /// before (`Connection::in_flight`), as a crash would (their writes' outcome is unknown,
    /// their open messages go back when the next leader loads their queue).
    fn close_in_flight(&mut self) {
        let mut closed = 0;
        for slot in 0..self.conns.len() {
            if self.with_conn(slot, |c, ctx| c.in_flight(ctx)) == Some(true) {
                self.close(slot);
                closed += 1;
            }
        }
        self.held.clear();
        log::info!("this node stepped down: closed {closed} connections with requests in flight");
    }

    /// Registers the leader's socket of a connection that just became a pipe to it
    /// (`forward`); false if it cannot be.
    fn register_upstream(&mut self, slot: usize) -> bool {
        let Some(Some(conn)) = self.conns.get_mut(slot) else {
            return true;
        };
        let Some(upstream) = conn.upstream() else {
            return true;
        };
        let token = Token(FIRST_UPSTREAM + slot);
        let interest = Interest::READABLE | Interest::WRITABLE;
        match self
            .poll
            .registry()
            .register(&mut upstream.stream, token, interest)
        {
            Ok(()) => {
                upstream.registered = true;
                true
            }
            Err(e) => {
                log::error!("cannot register a forwarded connection's upstream: {e}");
                false
            }
        }
    }

    pub(super) fn close(&mut self, slot: usize) {
        let in_flight =
            self.with_conn(slot, |c, ctx| (c.id, c.discard(ctx), c.end_forwarding(ctx)));
        if let Some((id, weights, upstream)) = in_flight {
            self.orphans.insert(id, weights);
            self.held.remove(&id);
            if let Some(mut upstream) = upstream.filter(|u| u.registered) {
                let _ = self.poll.registry().deregister(&mut upstream.stream);
            }
        }
        if let Some(mut conn) = self.conns[slot].take() {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            self.generations[slot] = self.generations[slot].wrapping_add(1);
            self.free.push(slot);
            self.shared.curr_connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::Completed {
                conn,
                outcome,
                durable_at,
            } => match self.slot_of(conn) {
                Some(slot) => {
                    self.with_conn(slot, |c, ctx| c.write_answered(outcome, durable_at, ctx));
                    self.drive(slot);
                }
                None => self.orphans.answered(conn, &self.shared.writes),
            },
            Event::Delivered {
                conn,
                wait_id,
                taken,
            } => {
                let refused = match self.slot_of(conn) {
                    Some(slot) => {
                        let result = self
                            .with_conn(slot, |c, ctx| commands::deliver(c, wait_id, taken, ctx));
                        self.drive(slot);
                        result.and_then(Result::err)
                    }
                    None => Some(taken),
                };
                if let Some(taken) = refused.filter(|taken| taken.open) {
                    // Its reader is gone: the message goes back to the head of its queue.
                    let engine = self.shared.engine.clone();
                    engine.give_back(&taken.queue, &[taken.seq], &mut self.uncommitted);
                }
            }
        }
    }

    /// Stops accepting, answers blocked reads, lets pending writes finish, then closes
    /// everything. True once no connection is left.
    fn drain(&mut self) -> bool {
        let deadline = *self
            .drain_deadline
            .get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
        for mut listener in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let overdue = Instant::now() >= deadline;
        for slot in 0..self.conns.len() {
            let finished = self.with_conn(slot, |c, ctx| {
                commands::end_wait(c, ctx);
                c.closing = true;
                c.flush(ctx);
                overdue || c.finished()
            });
            if finished == Some(true) {
                self.close(slot);
            }
        }
        self.conns.iter().all(Option::is_none)
    }

    /// The longest the loop may sleep before its next chore.
    fn chores_timeout(&self, now: Instant) -> Option<Duration> {
        let timed = self.shared.request_timeout.is_some() || self.shared.idle_timeout.is_some();
        self.chores.timeout(!self.parked.is_empty(), timed, now)
    }

    /// Drives every parked connection once; those still refused park again. Those waiting
    /// only for output room wait, undriven, while the output budget has none.
    fn retry_parked(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let output_full = self.shared.output.bytes.remaining() == 0;
        let readers_due = self.chores.retry_round();
        for id in std::mem::take(&mut self.parked) {
            let Some(slot) = self.slot_of(id) else {
                continue;
            };
            let Some(conn) = self.conns[slot].as_ref() else {
                continue;
            };
            let not_yet = (output_full && conn.parked_on_output_only())
                || (!readers_due && conn.parked_on_reader_only());
            if not_yet {
                self.parked.insert(id);
            } else {
                self.drive(slot);
            }
        }
    }

    /// Closes connections past their request or idle timeout.
    fn sweep(&mut self, now: Instant) {
        if !self.chores.sweep_due(now) {
            return;
        }
        for slot in 0..self.conns.len() {
            let overdue = self.with_conn(slot, |c, ctx| c.overdue(now, ctx)).flatten();
            if let Some(reason) = overdue {
                log::info!("closing a connection: {reason}");
                self.close(slot);
            }
        }
    }
}
