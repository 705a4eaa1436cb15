//! One client connection: its socket, input and output buffers, and the loop that reads requests,
//! runs them (see `commands`) and writes replies. Reads are edge-triggered: a readable event is
//! remembered until a read says WouldBlock or comes back short, so a connection paused by
//! back-pressure or by a pending write resumes reading where it stopped.
//!
//! Back-pressure is checked before every command, not every read: a connection runs no further
//! command while its unsent output is over a high-water mark or its writes in flight are at their
//! limit, and reads nothing more while its input is full; it resumes when the client reads its
//! replies or the committer answers. What one connection can hold is bounded that way, and what
//! all of them hold together by the server-wide budgets of `budget`: input beyond a small
//! buffer, writes in flight, and replies beyond a small allowance (`FREE_OUTPUT`). A connection
//! whose replies are past its allowance runs a command only while the output budget has room;
//! a read takes a message only if the connection's allowance or the budget has room for it.
//!
//! Under `--cluster`, a connection on a member that does not serve becomes a pipe to the leader
//! at its first queue command (`pipe`, `super::forward`).

mod pipe;

use std::collections::VecDeque;
use std::io::{ErrorKind as IoErrorKind, Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::budget::{
    FREE_INPUT, FREE_OUTPUT, MAX_WRITES_PER_CONNECTION, MAX_WRITE_BYTES_PER_CONNECTION,
};
use super::commands::{self, Client};
use super::forward::Upstream;
use super::monitoring::body_stream::{self, BodyStream};
use super::monitoring::http_service::{self, Answer};
use super::output::Output;
use super::stream::Stream;
use super::Ctx;
use crate::engine::{ConnRef, Outcome, SyncPoint};
use crate::protocol::{self, Command, Framer, Parsed, Protocol, Reply, ReplyStyle};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 << 10;
/// Idle connections' READ_CHUNK input buffers a loop keeps for reuse (at most 1 MiB): a client
/// that sends one request at a time empties its buffer after each, and allocating and zeroing a
/// fresh 16 KiB for the next one was half of a request's instructions.
const SPARE_INPUTS: usize = 64;
/// An empty input buffer larger than this is freed rather than kept.
const SHRINK_ABOVE: usize = 256 << 10;
/// Run no more commands while this much output waits for a slow reader (or for a sync).
const OUTPUT_HIGH_WATER: usize = 4 << 20;
/// While an HTTP body is streamed, its next piece is rendered only once the replies waiting
/// to be sent are below this: the text in memory stays a piece or two long.
const STREAM_HIGH_WATER: usize = body_stream::PIECE;
/// Queues a monitoring request may list without asking the output budget for room: more, and
/// its snapshot and body take real memory, so it waits for room like a large read.
const QUEUES_LISTED_FREELY: u64 = 1000;
/// A client with more than this written to its socket and not read yet is not keeping up: the
/// output budget gives it no room (it keeps its own allowance), so the budget goes to clients
/// that read.
const PEER_BACKLOG: usize = 256 << 10;
/// Replies are written to the socket once per loop pass (`EventLoop::flush_pending`), not after
/// every command or commit round: one `send` then carries a whole pipeline's replies. Output
/// beyond this is written at once, so buffers stay small.
const FLUSH_EARLY: usize = 64 << 10;
/// Reply bytes one connection may produce in one event-loop pass before the others (and new
/// connections) have their turn; it runs its next commands in the next pass. memcached bounds
/// a connection's turn the same way (`-R`, requests per event). Without it, 300 connections
/// pipelining peeks of a 1 MB message took the loop seconds per pass under load, and a new
/// client's `version` waited as long.
const DRIVE_SHARE: u64 = 256 << 10;

/// Most requests a connection runs per `drive` before the loop's other connections get their
/// turn (memcached's `reqs_per_event`): requests that cost no reply, no write and no output room
/// (a binary GETQ of an empty queue, a stream of misses) meet no other limit, and one client's
/// megabyte of them would hold the whole loop. It resumes in the loop's next pass.
const MAX_REQUESTS_PER_DRIVE: usize = 64;

/// Why `process` stopped running commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// Nothing complete to run (or the connection is closing, or a read is blocked).
    Input,
    /// Unsent output is over the high-water mark.
    Output,
    /// Something else must happen first: earlier writes answered, a global budget freed.
    Waiting,
    /// The connection had its share of this pass (`MAX_REQUESTS_PER_DRIVE` requests or
    /// `DRIVE_SHARE` bytes of replies): others go first.
    Yield,
}

pub struct Connection {
    pub stream: Stream,
    /// Slot and generation in the loop's connection table.
    pub id: u64,
    /// The protocol, the request at the front of the input, and bodies to discard.
    framer: Framer,
    /// Counts this connection under its protocol while it lives (`/metrics`).
    counted: Option<super::monitoring::connection_counts::Counted>,
    /// Input buffer; `input[input_start..input_end]` is received and not yet handled. Its length
    /// is its zeroed capacity, so reads need no fresh memset.
    input: Vec<u8>,
    input_start: usize,
    input_end: usize,
    output: Output,
    /// Replies from now on wait for this point: the latest write of this connection that was
    /// answered, so no reply tells a client more than its earlier writes being on disk.
    floor: SyncPoint,
    /// The socket may have more to read (edge seen, no WouldBlock or short read since).
    pub readable: bool,
    /// The peer's FIN was reported: read until EOF, not just until a short read.
    pub read_closed: bool,
    /// The peer closed its side.
    eof: bool,
    /// Close once the output is written.
    pub closing: bool,
    /// Its last `drive` stopped at its share of the pass (`Stop::Yield`) with requests left to
    /// run: the loop drives it again next pass (no socket event will say so).
    pub yielded: bool,
    /// `output.produced()` when the current `drive` began.
    turn_started: u64,
    /// Close now (I/O error, protocol violation).
    pub dead: bool,
    /// Body bytes of each write with the committer, oldest first, taken from the server's
    /// write budget.
    write_weights: VecDeque<usize>,
    /// Writes answered but maybe not on disk yet (the point they wait for, their body bytes):
    /// they keep their share of the write budget until synced, so that no client can write
    /// faster than the disk syncs.
    unsynced_writes: VecDeque<(SyncPoint, usize)>,
    /// Body bytes of `write_weights` and `unsynced_writes`.
    write_bytes: usize,
    /// Bytes of `input` counted against the server's input budget.
    input_charged: usize,
    /// The server's write budget refused this connection's next write.
    parked_on_writes: bool,
    /// The server's input budget refused to grow this connection's input buffer.
    parked_on_input: bool,
    /// The server's output budget has no room for this connection's next reply.
    parked_on_output: bool,
    /// Bytes of the output budget this connection holds: what its replies (unsent, and those
    /// of a get in progress) take beyond `FREE_OUTPUT`, and `wait_reserved`.
    output_charged: usize,
    /// Output budget bytes a blocked read reserved for the message it will be handed.
    wait_reserved: usize,
    /// The socket took less than it was offered (its client is not reading as fast as replies
    /// come): no room of the output budget goes to it until it takes everything again.
    send_blocked: bool,
    /// Waiting for its client to read what its socket holds before it asks the output budget
    /// for room (see `PEER_BACKLOG`): retried now and then, as no event will say so.
    parked_on_reader: bool,
    /// Since when the input has held an incomplete request (or a body being discarded).
    partial_since: Option<Instant>,
    /// Last time bytes moved in either direction.
    last_active: Instant,
    /// Requests run in the current `drive`.
    requests_this_drive: usize,
    /// What its commands have in flight: writes with the committer, a get being answered,
    /// messages held open.
    commands: commands::State,
    /// The rest of an HTTP body rendered as its client reads it: later requests wait for it.
    body_stream: Option<Box<BodyStream>>,
    /// Another member forwarded this connection here: it is never forwarded again.
    forwarded: bool,
    /// The leader this connection is a pipe to, once it is one (`pipe`).
    upstream: Option<Box<Upstream>>,
    /// The leader could not be reached: the next queue command is answered here.
    answer_locally: bool,
}

impl Connection {
    /// `forwarded`: another member forwarded it here (`super::forward`).
    pub fn new(stream: Stream, id: u64, forwarded: bool) -> Connection {
        Connection {
            stream,
            id,
            framer: Framer::new(),
            counted: None,
            input: Vec::new(),
            input_start: 0,
            input_end: 0,
            output: Output::default(),
            floor: SyncPoint::NONE,
            readable: true,
            read_closed: false,
            eof: false,
            closing: false,
            yielded: false,
            turn_started: 0,
            dead: false,
            write_weights: VecDeque::new(),
            unsynced_writes: VecDeque::new(),
            write_bytes: 0,
            input_charged: 0,
            parked_on_writes: false,
            parked_on_input: false,
            parked_on_output: false,
            output_charged: 0,
            body_stream: None,
            wait_reserved: 0,
            send_blocked: false,
            parked_on_reader: false,
            partial_since: None,
            last_active: Instant::now(),
            requests_this_drive: 0,
            commands: commands::State::default(),
            forwarded,
            upstream: None,
            answer_locally: false,
        }
    }

    /// The socket has room again: its client reads.
    pub fn writable(&mut self) {
        self.send_blocked = false;
    }

    /// A server-wide budget is exhausted for this connection: its loop retries it shortly (no
    /// event will come to wake it).
    pub fn parked(&self) -> bool {
        !self.dead
            && (self.parked_on_writes
                || self.parked_on_input
                || self.parked_on_output
                || self.parked_on_reader)
    }

    /// Parked only for room in the output budget: no use retrying while it has none.
    pub fn parked_on_output_only(&self) -> bool {
        self.parked_on_output && !self.parked_on_writes && !self.parked_on_input
    }

    /// Parked only until its client reads what its socket holds.
    pub fn parked_on_reader_only(&self) -> bool {
        self.parked_on_reader
            && !self.parked_on_output
            && !self.parked_on_writes
            && !self.parked_on_input
    }

    pub(super) fn unsent(&self) -> usize {
        self.output.unsent()
    }

    /// Reply bytes this connection holds: its output buffer, and the values of a get in
    /// progress.
    fn pending_output(&self) -> usize {
        self.reply_memory() + self.commands.reply_bytes()
    }

    /// Unsent replies past which no more are produced until the client reads some.
    fn output_high_water(&self) -> usize {
        if self.body_stream.is_some() {
            STREAM_HIGH_WATER
        } else {
            OUTPUT_HIGH_WATER
        }
    }

    /// The share of the output budget that `pending` bytes of replies take (plus what a blocked
    /// read reserved).
    fn output_share(&self, pending: usize) -> usize {
        let streaming = self.body_stream.as_ref().map_or(0, |b| b.memory());
        pending.saturating_sub(FREE_OUTPUT) + self.wait_reserved + streaming
    }

    /// Whether its client reads what it is sent: its socket took all it was offered, and holds
    /// little its client has not read.
    fn reader_keeps_up(&self) -> bool {
        !self.send_blocked
            && self
                .stream
                .unread_by_peer()
                .is_none_or(|unread| unread <= PEER_BACKLOG)
    }

    /// Whether a command may run now as far as replies go: this connection's own are within
    /// its allowance, or its client reads and the output budget has room for more.
    fn output_may_grow(&mut self, ctx: &Ctx) -> bool {
        if self.reply_memory() <= FREE_OUTPUT
            || (ctx.shared.output.has_room(self.conn_ref(ctx)) && self.reader_keeps_up())
        {
            return true;
        }
        self.wait_for_output_room(ctx);
        false
    }

    /// Whether some replies are not written to the socket yet (maybe held for a sync).
    pub fn unflushed(&self) -> bool {
        !self.output.is_empty()
    }

    /// How many of its answered writes wait for a sync.
    pub fn unsynced_writes(&self) -> usize {
        self.unsynced_writes.len()
    }

    /// Whether some of its replies or writes wait for a sync.
    pub fn held(&self) -> bool {
        self.output.held() || !self.unsynced_writes.is_empty()
    }

    /// Whether anything of this connection rests on the engine's state as it is now, for a
    /// step-down (`EventLoop::release_held`): a reply held for a write not known durable (or
    /// any reply not sent yet: a message taken), a write not answered or not known durable, a
    /// get in progress (maybe blocked), messages held open. `ctx.synced` is the last point
    /// known durable in the leadership that ended. An HTTP client's pages are not queue state.
    pub fn in_flight(&mut self, ctx: &Ctx) -> bool {
        if self.framer.protocol() == Some(Protocol::Http) {
            return false;
        }
        self.release_synced_writes(ctx);
        !self.output.is_empty()
            || !self.unsynced_writes.is_empty()
            || self.commands.writes_pending()
            || self.commands.reading()
            || self.commands.holds_open()
    }

    /// Reads, runs and answers as far as the socket and the connection's state allow.
    pub fn drive(&mut self, ctx: &mut Ctx) {
        self.turn_started = self.output.produced();
        self.requests_this_drive = 0;
        self.yielded = false;
        if self.upstream.is_some() && pipe::pump(self, ctx) {
            return;
        }
        loop {
            let stop = self.process(ctx);
            if self.upstream.is_some() {
                if pipe::pump(self, ctx) {
                    return;
                }
                // The leader was not reached: the command runs here after all, now.
                continue;
            }
            if stop == Stop::Yield {
                self.yielded = true;
                self.flush(ctx);
                break;
            }
            if self.dead || self.closing || self.unsent() >= FLUSH_EARLY {
                self.flush(ctx);
            }
            if self.dead || self.closing {
                break;
            }
            if stop == Stop::Output && self.unsent() < self.output_high_water() {
                // The client read enough: run the commands that were held back.
                continue;
            }
            if stop == Stop::Waiting {
                // The next request cannot run yet: reading ahead would only buffer more. The
                // socket stays readable, and is read once it can run.
                break;
            }
            if !self.accepting_input(ctx) || !self.readable {
                break;
            }
            if !self.fill(ctx) {
                break;
            }
        }
        // The peer sent all it will: close once its writes are answered. A read still waiting
        // is cancelled rather than answered: a client that went away while blocked must not
        // take a message with it (reading goes on while a read waits, so we notice).
        // Requests it has not had its turn for yet are run first.
        if self.eof
            && !self.commands.writes_pending()
            && !self.yielded
            && self.body_stream.is_none()
        {
            self.closing = true;
        }
    }

    /// True when the connection should be closed and forgotten now.
    pub fn finished(&self) -> bool {
        self.dead || (self.closing && self.output.is_empty() && !self.commands.writes_pending())
    }

    fn accepting_input(&self, ctx: &Ctx) -> bool {
        self.unsent() < OUTPUT_HIGH_WATER
            && self.input_end - self.input_start < ctx.shared.input_limit
    }

    /// Parses and runs every complete request that may run now.
    fn process(&mut self, ctx: &mut Ctx) -> Stop {
        let stop = self.run_commands(ctx);
        if self.input_start == self.input_end {
            self.input_start = 0;
            self.input_end = 0;
            self.partial_since = None;
            if !self.readable || self.input.len() > SHRINK_ABOVE {
                // Nothing more to read now: an idle client holds no buffer (and a large message
                // that passed through leaves none behind).
                self.set_input_len(0, ctx);
            }
        }
        stop
    }

    fn run_commands(&mut self, ctx: &mut Ctx) -> Stop {
        self.parked_on_writes = false;
        self.parked_on_output = false;
        self.parked_on_reader = false;
        self.release_synced_writes(ctx);
        if commands::waits_for_room(self) {
            // A read waits for room for its message: try it again.
            commands::resume_get(self, ctx);
        }
        while !self.commands.reading() && !self.closing && !self.dead {
            self.input_start += self.framer.discard(self.input_end - self.input_start);
            if self.framer.skipping() {
                self.partial_since.get_or_insert_with(Instant::now);
                return Stop::Input;
            }
            if self.unsent() >= self.output_high_water() {
                return Stop::Output;
            }
            if self.output.produced() - self.turn_started >= DRIVE_SHARE {
                return Stop::Yield;
            }
            if !self.output_may_grow(ctx) {
                return Stop::Waiting;
            }
            if self.write_weights.len() + self.unsynced_writes.len() >= MAX_WRITES_PER_CONNECTION
                || self.write_bytes >= MAX_WRITE_BYTES_PER_CONNECTION
            {
                // Whatever comes next waits: a write for room, a read for these to finish.
                return Stop::Waiting;
            }
            if let Some(stream) = &mut self.body_stream {
                if stream.next(self.output.append_after(SyncPoint::NONE)) {
                    self.closing |= stream.closes();
                    self.body_stream = None;
                }
                self.charge_output(self.reply_memory(), ctx);
                continue;
            }
            let buf = &self.input[self.input_start..self.input_end];
            if buf.is_empty() {
                break;
            }
            if self.requests_this_drive >= MAX_REQUESTS_PER_DRIVE {
                // Its turn is over: the rest waits for the loop's next pass.
                return Stop::Yield;
            }
            let protocol = self.framer.sniff(buf);
            if let (None, Ok(Some(protocol))) = (&self.counted, protocol) {
                self.counted = Some(ctx.shared.connection_counts.count(protocol));
            }
            if protocol == Ok(Some(Protocol::Http)) {
                // A page listing every queue waits for room like a large read when there are
                // many queues.
                let listing_allowed = ctx.shared.engine.queue_count() <= QUEUES_LISTED_FREELY
                    || ctx.shared.output.has_room(self.conn_ref(ctx));
                let output = self.output.append_after(SyncPoint::NONE);
                match http_service::serve(buf, ctx.shared, output, listing_allowed) {
                    Answer::Served(served) => {
                        // Served: if it waited in line for room, it leaves the line.
                        self.leave_output_line(ctx);
                        self.partial_since = None;
                        self.input_start += served.consumed;
                        self.closing |= served.close;
                        self.body_stream = served.stream;
                        self.charge_output(self.reply_memory(), ctx);
                        continue;
                    }
                    Answer::WaitForRoom => {
                        self.wait_for_output_room(ctx);
                        return Stop::Waiting;
                    }
                    Answer::Incomplete => {
                        self.partial_since.get_or_insert_with(Instant::now);
                        return Stop::Input;
                    }
                }
            }
            let parsed = match self.framer.parse(buf, &ctx.shared.limits) {
                Ok(parsed) => parsed,
                Err(first) => {
                    log::info!(
                        "closing connection whose first byte is 0x{first:02x}: neither protocol"
                    );
                    self.dead = true;
                    return Stop::Input;
                }
            };
            // A reply may not overtake the replies to writes still being committed, and a
            // read must see this connection's earlier writes: only writes may pipeline.
            let must_wait = self.commands.writes_pending()
                && !matches!(&parsed, Parsed::Command { command, .. } if commands::is_write(command));
            if must_wait {
                return Stop::Waiting;
            }
            self.framer.used(&parsed);
            match parsed {
                Parsed::NeedMore => {
                    self.partial_since.get_or_insert_with(Instant::now);
                    return Stop::Input;
                }
                Parsed::Command {
                    consumed,
                    command,
                    style,
                } => {
                    if let Some(route) = pipe::forward_to(self, &command, ctx) {
                        self.partial_since = None;
                        if self.commands.writes_pending() {
                            // Its earlier writes are answered here first.
                            return Stop::Waiting;
                        }
                        pipe::start(self, route, ctx);
                        return Stop::Input;
                    }
                    if commands::is_write(&command) && !self.admit_write(&command, ctx) {
                        self.parked_on_writes = true;
                        return Stop::Waiting;
                    }
                    self.partial_since = None;
                    self.input_start += consumed;
                    self.requests_this_drive += 1;
                    commands::execute(command, style, self, ctx);
                    self.charge_output(self.pending_output(), ctx);
                }
                Parsed::Invalid {
                    consumed,
                    reply,
                    close,
                    style,
                    ..
                } => {
                    // Any body to discard is the framer's now (`used`).
                    self.partial_since = None;
                    self.input_start += consumed;
                    self.requests_this_drive += 1;
                    self.reply(&reply, &style);
                    self.closing |= close;
                }
            }
        }
        Stop::Input
    }

    /// Takes a write's share of the server's write budget; false if it is exhausted. A put
    /// weighs its body once per queue it is written to: its fan-out copies are written too.
    fn admit_write(&mut self, command: &Command, ctx: &Ctx) -> bool {
        let bytes = commands::write_weight(command, ctx);
        if !ctx.shared.writes.try_admit(self.conn_ref(ctx), bytes) {
            return false;
        }
        self.write_weights.push_back(bytes);
        self.write_bytes += bytes;
        true
    }

    /// The committer answered this connection's oldest write; its reply, and every reply after
    /// it, waits for `durable_at`.
    pub fn write_answered(&mut self, outcome: Outcome, durable_at: SyncPoint, ctx: &mut Ctx) {
        if let Some(bytes) = self.write_weights.pop_front() {
            self.unsynced_writes.push_back((durable_at, bytes));
            self.release_synced_writes(ctx);
        }
        self.floor = self.floor.max(durable_at);
        commands::write_answered(self, outcome, ctx);
    }

    /// The connection is being closed: gives back its input budget and open messages, and
    /// returns the weights of its writes still with the committer (their budget is released
    /// when the committer answers them).
    pub fn discard(&mut self, ctx: &mut Ctx) -> VecDeque<usize> {
        self.set_input_len(0, ctx);
        commands::release_reads(self, ctx);
        ctx.shared.output.leave(self.conn_ref(ctx));
        ctx.shared.writes.leave(self.conn_ref(ctx));
        ctx.shared.input_budget.leave(self.conn_ref(ctx));
        ctx.shared.output.bytes.give(self.output_charged);
        self.output_charged = 0;
        for (_, bytes) in self.unsynced_writes.drain(..) {
            ctx.shared.writes.release(bytes);
        }
        self.write_bytes = 0;
        std::mem::take(&mut self.write_weights)
    }

    /// Gives back the write budget of the answered writes that are on disk now.
    fn release_synced_writes(&mut self, ctx: &Ctx) {
        let synced = ctx.synced;
        while let Some(&(point, bytes)) = self.unsynced_writes.front() {
            if point > synced {
                break;
            }
            self.unsynced_writes.pop_front();
            self.write_bytes -= bytes;
            ctx.shared.writes.release(bytes);
        }
    }

    /// Why this connection should be closed now, if it should: a request left incomplete
    /// longer than `--request-timeout`, or no traffic for `--idle-timeout` while not waiting on
    /// the server.
    pub fn overdue(&self, now: Instant, ctx: &Ctx) -> Option<&'static str> {
        if self.upstream.is_some() {
            // A pipe to the leader: the leader applies the timeouts to what it is sent.
            return None;
        }
        let older = |since: Instant, limit: Option<Duration>| {
            limit.is_some_and(|limit| now.saturating_duration_since(since) > limit)
        };
        if let Some(since) = self.partial_since {
            if older(since, ctx.shared.request_timeout) {
                return Some("request incomplete past --request-timeout");
            }
        }
        // Replies not written yet (they go out at the end of the pass, or wait for a sync or
        // for the client to read) make it busy too, as memcached's idle timeout skips
        // connections in the middle of writing.
        let busy =
            self.commands.reading() || self.commands.writes_pending() || !self.output.is_empty();
        if !busy && older(self.last_active, ctx.shared.idle_timeout) {
            return Some("idle past --idle-timeout");
        }
        None
    }

    /// Resizes the input buffer to `len` initialised bytes, charging or refunding the input
    /// budget for what is above the free allowance. False (and nothing changed) if the budget
    /// refuses. An emptied buffer of READ_CHUNK bytes goes to the loop's spares, and an empty
    /// buffer growing to READ_CHUNK takes one from there (its old bytes are never read).
    fn set_input_len(&mut self, len: usize, ctx: &mut Ctx) -> bool {
        let charge = len.saturating_sub(FREE_INPUT);
        let budget = &ctx.shared.input_budget;
        if charge > self.input_charged {
            if !budget.try_take(self.conn_ref(ctx), charge - self.input_charged) {
                return false;
            }
        } else {
            budget.give(self.input_charged - charge);
        }
        self.input_charged = charge;
        if len == 0 {
            let input = std::mem::take(&mut self.input);
            if input.len() == READ_CHUNK && ctx.spare_inputs.len() < SPARE_INPUTS {
                ctx.spare_inputs.push(input);
            }
        } else if self.input.is_empty() && len == READ_CHUNK {
            self.input = ctx
                .spare_inputs
                .pop()
                .unwrap_or_else(|| vec![0; READ_CHUNK]);
        } else {
            self.input.resize(len, 0);
        }
        true
    }

    /// Reads until the socket has no more or the input limit is reached. True if anything came.
    fn fill(&mut self, ctx: &mut Ctx) -> bool {
        if self.input_start > 0 {
            self.input.copy_within(self.input_start..self.input_end, 0);
            self.input_end -= self.input_start;
            self.input_start = 0;
        }
        let mut progressed = false;
        self.parked_on_input = false;
        while self.input_end < ctx.shared.input_limit {
            if self.input.len() - self.input_end < READ_CHUNK / 2 {
                let mut grown = (self.input.len() * 2).max(self.input_end + READ_CHUNK);
                if let Some(len) = self.framer.request_len(&self.input[..self.input_end]) {
                    // Room for the whole request at once (with a read's worth of what follows
                    // it): the input budget is never spent on parts of requests.
                    grown = grown.max(len + READ_CHUNK / 2);
                }
                let grown = grown.min(ctx.shared.input_limit + READ_CHUNK);
                if !self.set_input_len(grown, ctx) && self.input.len() == self.input_end {
                    // The server's input budget is spent: wait, unread, until some comes back.
                    self.parked_on_input = true;
                    break;
                }
            }
            let room = self.input.len() - self.input_end;
            let result = self.stream.read(&mut self.input[self.input_end..]);
            match result {
                Ok(0) => {
                    self.eof = true;
                    self.readable = false;
                    break;
                }
                Ok(n) => {
                    ctx.stats.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
                    self.input_end += n;
                    self.last_active = Instant::now();
                    progressed = true;
                    if n < room && !self.read_closed {
                        // A short read emptied the socket: data arriving later raises a new
                        // edge (epoll signals every arrival), so the read that would only say
                        // WouldBlock is skipped, as memcached does. One syscall per request.
                        self.readable = false;
                        break;
                    }
                }
                Err(e) if e.kind() == IoErrorKind::WouldBlock => {
                    self.readable = false;
                    break;
                }
                Err(e) if e.kind() == IoErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("read failed: {e}");
                    self.dead = true;
                    break;
                }
            }
        }
        progressed
    }

    /// Writes as much output as the socket takes and the syncer allows.
    pub fn flush(&mut self, ctx: &mut Ctx) {
        let synced = ctx.synced;
        while !self.dead {
            let sendable = self.output.sendable(synced);
            if sendable.is_empty() {
                self.send_blocked = false;
                break;
            }
            match self.stream.write(sendable) {
                Ok(0) => self.dead = true,
                Ok(n) => {
                    self.output.sent(n);
                    self.last_active = Instant::now();
                    ctx.stats
                        .bytes_written
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == IoErrorKind::WouldBlock => {
                    if !self.send_blocked {
                        // Its place in line for room goes to clients that read.
                        self.send_blocked = true;
                        ctx.shared.output.leave(self.conn_ref(ctx));
                    }
                    break;
                }
                Err(e) if e.kind() == IoErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("write failed: {e}");
                    self.dead = true;
                }
            }
        }
        if self.output_charged > 0 {
            self.charge_output(self.pending_output(), ctx);
        }
    }

    /// Whether its pipe's upstream socket waits to be registered with the loop's poll.
    pub fn upstream_unregistered(&self) -> bool {
        self.upstream.as_ref().is_some_and(|u| !u.registered)
    }

    /// Its pipe's upstream socket, to register or deregister.
    pub fn upstream(&mut self) -> Option<&mut Upstream> {
        self.upstream.as_deref_mut()
    }

    /// The connection closes: its pipe (if any) is no longer counted.
    pub fn end_forwarding(&mut self, ctx: &Ctx) -> Option<Box<Upstream>> {
        let upstream = self.upstream.take()?;
        if let (Some(f), false) = (&ctx.shared.forwarding, upstream.admin) {
            f.current.fetch_sub(1, Ordering::Relaxed);
        }
        Some(upstream)
    }

    /// The leader its pipe goes to, if it is one (`forward`; a pipe to this member's admin
    /// side is none).
    pub fn forwarded_to(&self) -> Option<SocketAddr> {
        self.upstream.as_ref().filter(|u| !u.admin).map(|u| u.to)
    }

    /// The leader's socket may have more to read.
    pub fn upstream_readable(&mut self) {
        if let Some(upstream) = &mut self.upstream {
            upstream.readable = true;
        }
    }
}

/// What its commands see of a connection (see `commands::Client`).
impl Client for Connection {
    fn id(&self) -> u64 {
        self.id
    }

    /// How the engine and the budgets name this connection.
    fn conn_ref(&self, ctx: &Ctx) -> ConnRef {
        ConnRef {
            mailbox: ctx.mailbox,
            conn: self.id,
        }
    }

    /// Appends a reply that also waits for `point` (it shows a message maybe not on disk yet).
    fn reply_after(&mut self, reply: &Reply, point: SyncPoint, style: &ReplyStyle) {
        let output = self.output.append_after(point.max(self.floor));
        protocol::encode(reply, style, output);
    }

    /// Bytes of memory the replies not sent yet hold.
    fn reply_memory(&self) -> usize {
        self.output.memory()
    }

    /// Room for more reply bytes, given `pending` bytes of replies: what is left of this
    /// connection's allowance, and the room the output budget would give it. A connection whose
    /// client does not take what it has is given no room from the budget: the budget goes to
    /// clients that read.
    fn output_room(&self, pending: usize, ctx: &Ctx) -> (usize, usize) {
        let own = FREE_OUTPUT.saturating_sub(pending);
        if !self.reader_keeps_up() {
            return (own, 0);
        }
        (own, ctx.shared.output.room_for(self.conn_ref(ctx)))
    }

    /// Brings the output budget's charge in line with `pending` bytes of replies (the output
    /// buffer, and a get's values not yet appended). They are held already, so the charge is
    /// taken even past the budget: the checks before each command and each read keep that rare.
    fn charge_output(&mut self, pending: usize, ctx: &Ctx) {
        let wanted = self.output_share(pending);
        let budget = &ctx.shared.output.bytes;
        if wanted > self.output_charged {
            budget.force_take(wanted - self.output_charged);
        } else if wanted < self.output_charged {
            budget.give(self.output_charged - wanted);
        }
        self.output_charged = wanted;
    }

    /// Waits in line for room in the output budget; or, if its client is not reading, for its
    /// client first (a full socket says when with an event; otherwise it is retried).
    fn wait_for_output_room(&mut self, ctx: &Ctx) {
        if self.reader_keeps_up() {
            ctx.shared.output.join(self.conn_ref(ctx));
            self.parked_on_output = true;
            return;
        }
        // Its place in line, if it had one, goes to clients that read.
        ctx.shared.output.leave(self.conn_ref(ctx));
        if !self.send_blocked {
            self.parked_on_reader = true;
        }
    }

    fn state(&mut self) -> &mut commands::State {
        &mut self.commands
    }

    fn leave_output_line(&self, ctx: &Ctx) {
        ctx.shared.output.leave(self.conn_ref(ctx));
    }

    fn reserve_output(&mut self, bytes: usize) {
        self.wait_reserved = bytes;
    }

    fn close(&mut self) {
        self.closing = true;
    }
}
