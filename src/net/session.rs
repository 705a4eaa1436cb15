//! What each command does on a connection: the protocol-independent meaning of set, get (with
//! blocking, open, close, abort and peek), delete, flush and the reports. Writes are handed to the
//! engine and answered when committed; reads are answered at once, or when a message arrives or
//! the wait times out.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::connection::Connection;
use super::monitoring::report;
use super::requests::{GetInProgress, OpenRead, PendingWrite};
use super::Ctx;
use crate::engine;
use crate::engine::{Error, Outcome, SyncPoint, TakeMode, Taken};
use crate::protocol::{
    Command, ErrorKind, Read, Reads, Reply, ReplyStyle, StatsKind, Value, Values,
};

/// Body bytes after which a multi-key get takes no more messages (at least one message of
/// `--max-message-size` always fits).
const GET_REPLY_BUDGET: usize = 8 << 20;

fn error_kind(error: Error) -> ErrorKind {
    match error {
        Error::Storage => ErrorKind::Storage,
        Error::QueueFull => ErrorKind::QueueFull,
        Error::ShuttingDown => ErrorKind::ShuttingDown,
        Error::NoLeader => ErrorKind::NoLeader,
        Error::DiskFull => ErrorKind::DiskFull,
        Error::FanoutLimit => ErrorKind::FanoutLimit,
        Error::TooManyQueues => ErrorKind::TooManyQueues,
        // A read that has no room waits for it (`continue_get`): never answered with this.
        Error::NoRoom(_) => ErrorKind::Storage,
    }
}

impl Connection {
    /// Reply bytes this connection holds: its output buffer, and the values of a get in
    /// progress.
    pub(super) fn pending_output(&self) -> usize {
        self.reply_memory() + self.get.as_ref().map_or(0, |get| get.bytes)
    }

    /// Runs one request; its reply, now or when its write is committed or its read answered,
    /// is spelled as `style` says.
    pub(super) fn execute(&mut self, command: Command, style: ReplyStyle, ctx: &mut Ctx) {
        let engine = &ctx.shared.engine;
        match command {
            Command::Set(set) => {
                ctx.stats.set_cmds.fetch_add(1, Ordering::Relaxed);
                let expires_at = set.expires_at(engine::now_ms);
                let me = self.conn_ref(ctx);
                let noreply = set.noreply;
                engine.put(
                    &set.queue,
                    set.flags,
                    expires_at,
                    set.body,
                    me,
                    ctx.uncommitted,
                );
                self.pending_writes
                    .push_back((PendingWrite::Put { noreply }, style));
            }
            Command::Get(reads) => self.start_get(reads, style, ctx),
            Command::Delete { queue, noreply } => {
                engine.delete_queue(&queue, self.conn_ref(ctx), ctx.uncommitted);
                self.pending_writes
                    .push_back((PendingWrite::Delete { noreply }, style));
            }
            Command::Flush { queue, noreply } => {
                engine.flush(Some(&queue), self.conn_ref(ctx), ctx.uncommitted);
                self.pending_writes
                    .push_back((PendingWrite::Flush { noreply }, style));
            }
            Command::FlushAll { noreply } => {
                engine.flush(None, self.conn_ref(ctx), ctx.uncommitted);
                self.pending_writes
                    .push_back((PendingWrite::FlushAll { noreply }, style));
            }
            Command::Stats(StatsKind::General) => {
                self.reply(&Reply::Stats(report::general(ctx.shared)), &style)
            }
            Command::Stats(StatsKind::Queue) => {
                self.reply(&Reply::Stats(report::queues(ctx.shared)), &style)
            }
            Command::Stats(StatsKind::Reset) => {
                report::reset(ctx.shared);
                self.reply(&Reply::Reset, &style);
            }
            Command::Info => self.reply(&Reply::Info(report::info(ctx.shared)), &style),
            Command::Version => self.reply(&Reply::Version(env!("CARGO_PKG_VERSION")), &style),
            Command::Verbosity { level, noreply } => {
                log::set_max_level(match level {
                    0 => log::LevelFilter::Warn,
                    1 => log::LevelFilter::Info,
                    2 => log::LevelFilter::Debug,
                    _ => log::LevelFilter::Trace,
                });
                if !noreply {
                    self.reply(&Reply::Ok, &style);
                }
            }
            Command::Quit => {
                // Nothing in text and mqmq; a binary QUIT's success response.
                self.reply(&Reply::Closing, &style);
                self.closing = true;
            }
            // Not a write: it runs once every earlier write is answered, so its reply follows
            // theirs (and waits for them to be on disk).
            Command::Noop => self.reply(&Reply::Noop, &style),
        }
    }

    /// The committer finished this connection's oldest outstanding write.
    pub(super) fn complete_write(&mut self, outcome: Outcome, ctx: &mut Ctx) {
        let Some((pending, style)) = self.pending_writes.pop_front() else {
            log::error!("write outcome for a connection with no write outstanding");
            return;
        };
        let (reply, noreply) = match (pending, outcome) {
            (_, Outcome::Failed(error)) => (Reply::Error(error_kind(error)), false),
            (PendingWrite::Put { noreply }, _) => {
                ctx.stats.set_hits.fetch_add(1, Ordering::Relaxed);
                (Reply::Stored, noreply)
            }
            (PendingWrite::Delete { noreply }, Outcome::Deleted) => (Reply::Deleted, noreply),
            (PendingWrite::Delete { noreply }, _) => (Reply::NotFound, noreply),
            (PendingWrite::Flush { noreply }, _) => (Reply::End, noreply),
            (PendingWrite::FlushAll { noreply }, _) => (Reply::Ok, noreply),
        };
        if !noreply {
            self.reply(&reply, &style);
        }
    }

    fn start_get(&mut self, reads: Reads, style: ReplyStyle, ctx: &mut Ctx) {
        // Messages of a queue deleted since they were opened are gone; stop counting them.
        self.open_reads
            .retain(|open| !open.taken.queue.is_deleted());
        if let Err(kind) = self.check_reads(&reads, ctx.shared.max_open_reads) {
            self.reply(&Reply::Error(kind), &style);
            return;
        }
        self.get = Some(GetInProgress {
            reads,
            next: 0,
            values: Values::new(),
            bytes: 0,
            waiting: None,
            durable_at: SyncPoint::NONE,
            room_needed: None,
            style,
        });
        self.continue_get(ctx);
    }

    /// Refuses, before anything is taken, a get that Kestrel would refuse: a plain read of a
    /// queue this connection holds an open message of, or more open messages than allowed.
    fn check_reads(&self, reads: &[Read], max_open: usize) -> Result<(), ErrorKind> {
        // The common case needs no bookkeeping: nothing held and nothing to open, nothing to
        // refuse.
        if self.open_reads.is_empty() && !reads.iter().any(|read| read.open) {
            return Ok(());
        }
        let mut held: HashMap<&[u8], usize> = HashMap::new();
        for open in &self.open_reads {
            *held.entry(&open.queue).or_default() += 1;
        }
        let mut total = self.open_reads.len();
        for read in reads {
            let on_queue = held.entry(read.queue()).or_default();
            if read.abort || read.close {
                total -= *on_queue;
                *on_queue = 0;
            }
            if read.abort || (read.close && !read.open) {
                continue;
            }
            if read.open {
                if total >= max_open {
                    return Err(ErrorKind::TooManyOpenReads);
                }
                *on_queue += 1;
                total += 1;
            } else if !read.peek && *on_queue > 0 {
                return Err(ErrorKind::OpenReadPending);
            }
        }
        Ok(())
    }

    /// Runs the get's remaining keys until one has to wait (for a message, or for room for
    /// one) or all are done.
    pub(super) fn continue_get(&mut self, ctx: &mut Ctx) {
        let Some(mut get) = self.get.take() else {
            return;
        };
        let room_needed = get.room_needed.take();
        // One get line can name thousands of keys: stop taking messages once the reply is big
        // enough, and leave the remaining keys' messages in their queues.
        let budget = GET_REPLY_BUDGET.max(ctx.shared.limits.max_message_size);
        while let Some(read) = get.reads.get(get.next) {
            if get.bytes >= budget {
                break;
            }
            if read.abort || read.close {
                self.settle_open(read.queue(), read.close, ctx);
                if !read.open {
                    get.next += 1;
                    continue;
                }
            }
            let mode = match (read.open, read.peek) {
                (true, _) => TakeMode::Open,
                (_, true) => TakeMode::Peek,
                _ => TakeMode::Remove,
            };
            ctx.stats.get_cmds.fetch_add(1, Ordering::Relaxed);
            if read.peek {
                ctx.stats.cmd_peek.fetch_add(1, Ordering::Relaxed);
            }
            let wait = match read.wait_ms {
                Some(ms) if ms > 0 => {
                    *ctx.next_wait_id += 1;
                    Some((self.conn_ref(ctx), *ctx.next_wait_id, ms))
                }
                _ => None,
            };
            let registration = wait.map(|(me, id, _)| (me, id));
            let pending = self.reply_memory() + get.bytes;
            let (own, shared) = self.output_room(pending, ctx);
            // A read that would block reserves room for the message it will be handed: at most
            // the largest message, and only what the budget has, so that blocked readers
            // together cannot be handed more than the budget.
            let reserve = match wait {
                Some(_) => shared.min(ctx.shared.limits.max_message_size),
                None => shared,
            };
            let room = own.saturating_add(reserve);
            if room_needed.is_some_and(|needed| room < needed) {
                // Still no room for the message it found: no use reading it again.
                self.wait_for_output_room(ctx);
                get.room_needed = room_needed;
                self.get = Some(get);
                return;
            }
            let taken =
                ctx.shared
                    .engine
                    .take(read.queue(), mode, registration, room, ctx.uncommitted);
            match taken {
                Ok(Some(taken)) => {
                    ctx.shared.output.leave(self.conn_ref(ctx));
                    self.accept(&mut get, taken, ctx);
                    self.charge_output(self.reply_memory() + get.bytes, ctx);
                }
                Ok(None) => match wait {
                    Some((_, id, ms)) => {
                        get.waiting = Some(id);
                        let deadline = Instant::now() + Duration::from_millis(ms);
                        ctx.timers.add(deadline, self.id, id);
                        self.wait_reserved = reserve;
                        self.charge_output(pending, ctx);
                        self.get = Some(get);
                        return;
                    }
                    None => {
                        ctx.shared.output.leave(self.conn_ref(ctx));
                        ctx.stats.get_misses.fetch_add(1, Ordering::Relaxed);
                        get.next += 1;
                    }
                },
                Err(Error::NoRoom(needed)) if get.values.is_empty() => {
                    // Wait, first in line or behind those who asked before, for room (or for
                    // its client to read what it has); the message stays in its queue.
                    self.wait_for_output_room(ctx);
                    get.room_needed = Some(needed);
                    self.get = Some(get);
                    return;
                }
                Err(Error::NoRoom(_)) => break,
                Err(error) => {
                    // Answer with what was taken so far, so nothing taken is lost.
                    if get.values.is_empty() {
                        self.reply(&Reply::Error(error_kind(error)), &get.style);
                        return;
                    }
                    break;
                }
            }
        }
        self.reply_after(&Reply::Values(get.values), get.durable_at, &get.style);
        self.charge_output(self.reply_memory(), ctx);
    }

    /// Records a message taken for the get's current read and moves on to the next key.
    fn accept(&mut self, get: &mut GetInProgress, mut taken: Taken, ctx: &mut Ctx) {
        ctx.stats.get_hits.fetch_add(1, Ordering::Relaxed);
        // The body moves into the reply; an open read keeps only the queue and sequence number.
        let body = std::mem::take(&mut taken.body);
        get.bytes += body.len();
        get.durable_at = get.durable_at.max(taken.durable_at);
        let read = &mut get.reads[get.next];
        // Before the key (which holds the queue's name) moves into the reply.
        let open_on = read.open.then(|| read.queue().to_vec());
        get.values.push(Value {
            // This read is done: its key moves into the reply too.
            key: std::mem::take(&mut read.key),
            flags: taken.flags,
            body,
            cas: read.cas.then_some(taken.seq),
        });
        if let Some(queue) = open_on {
            *ctx.next_wait_id += 1;
            let id = *ctx.next_wait_id;
            if let Some(timeout) = ctx.shared.open_timeout {
                ctx.open_timers.add(Instant::now() + timeout, self.id, id);
            }
            self.open_reads.push(OpenRead { id, queue, taken });
        }
        get.next += 1;
    }

    /// Confirms (`close`) or gives back (`abort`) this connection's open messages on `queue`.
    fn settle_open(&mut self, queue: &[u8], confirm: bool, ctx: &mut Ctx) {
        let (settled, kept): (Vec<OpenRead>, Vec<OpenRead>) = std::mem::take(&mut self.open_reads)
            .into_iter()
            .partition(|open| open.queue == queue);
        self.open_reads = kept;
        for open in settled {
            let engine = &ctx.shared.engine;
            if confirm {
                engine.confirm(&open.taken.queue, &[open.taken.seq], ctx.uncommitted);
            } else {
                engine.give_back(&open.taken.queue, &[open.taken.seq], ctx.uncommitted);
            }
        }
    }

    /// A message arrived for a blocked read. Hands it back if this connection was not waiting
    /// for it (the caller gives it back to the queue).
    pub(super) fn deliver(
        &mut self,
        wait_id: u64,
        taken: Taken,
        ctx: &mut Ctx,
    ) -> Result<(), Taken> {
        let Some(mut get) = self.get.take() else {
            return Err(taken);
        };
        if get.waiting != Some(wait_id) {
            self.get = Some(get);
            return Err(taken);
        }
        get.waiting = None;
        // The message it was handed is charged as a reply from now on.
        self.wait_reserved = 0;
        // The engine hands a waiting read its message open (a peek only sees it): a plain read
        // confirms it.
        if taken.open && !get.reads[get.next].open {
            let engine = &ctx.shared.engine;
            engine.confirm(&taken.queue, &[taken.seq], ctx.uncommitted);
        }
        self.accept(&mut get, taken, ctx);
        self.get = Some(get);
        self.continue_get(ctx);
        Ok(())
    }

    /// An open message was not confirmed in time: it goes back to its queue.
    pub(super) fn open_expired(&mut self, open_id: u64, ctx: &mut Ctx) {
        if let Some(at) = self.open_reads.iter().position(|o| o.id == open_id) {
            let open = self.open_reads.swap_remove(at);
            ctx.shared
                .engine
                .give_back(&open.taken.queue, &[open.taken.seq], ctx.uncommitted);
        }
    }

    /// A blocked read's deadline passed.
    pub(super) fn wait_expired(&mut self, wait_id: u64, ctx: &mut Ctx) {
        let me = self.conn_ref(ctx);
        let Some(get) = self.get.as_mut() else { return };
        if get.waiting != Some(wait_id) {
            return;
        }
        let queue = get.reads[get.next].queue();
        if ctx.shared.engine.cancel_wait(queue, me, wait_id) {
            ctx.stats.get_misses.fetch_add(1, Ordering::Relaxed);
            get.waiting = None;
            get.next += 1;
            self.wait_reserved = 0;
            self.continue_get(ctx);
        }
        // Otherwise a message is already on its way to us: `deliver` will finish the read.
    }

    /// Ends a blocked read now (the server is stopping), answering what was found so far.
    pub(super) fn end_wait(&mut self, ctx: &mut Ctx) {
        if let Some(wait_id) = self.get.as_ref().and_then(|g| g.waiting) {
            self.wait_expired(wait_id, ctx);
        }
    }

    /// The connection is going away: stop waiting and give every open message back at once.
    pub(super) fn release(&mut self, ctx: &mut Ctx) {
        let me = self.conn_ref(ctx);
        self.wait_reserved = 0;
        if let Some(get) = self.get.take() {
            if let Some(wait_id) = get.waiting {
                let queue = get.reads[get.next].queue();
                ctx.shared.engine.cancel_wait(queue, me, wait_id);
            }
        }
        for open in std::mem::take(&mut self.open_reads) {
            ctx.shared
                .engine
                .give_back(&open.taken.queue, &[open.taken.seq], ctx.uncommitted);
        }
    }
}
