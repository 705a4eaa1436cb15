//! One client connection: its socket, input and output buffers, and the loop that reads requests,
//! runs them (see `session`) and writes replies. Reads are edge-triggered: a readable event is
//! remembered until a read says WouldBlock, so a connection paused by back-pressure or by a
//! pending write resumes reading where it stopped.

use std::collections::VecDeque;
use std::io::{ErrorKind as IoErrorKind, Read as _, Write as _};
use std::sync::atomic::Ordering;

use super::session::{GetInProgress, OpenRead, PendingWrite};
use super::stream::Stream;
use super::Ctx;
use crate::protocol::{self, memcache, mqmq, Parsed, Protocol, Reply};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 << 10;
/// An empty input buffer larger than this is freed rather than kept.
const SHRINK_ABOVE: usize = 256 << 10;
/// Stop taking requests while this much output waits for a slow reader.
const OUTPUT_HIGH_WATER: usize = 4 << 20;

pub struct Connection {
    pub stream: Stream,
    /// Slot and generation in the loop's connection table.
    pub id: u64,
    pub protocol: Option<Protocol>,
    /// Counts this connection under its protocol while it lives (`/metrics`).
    _counted: Option<super::connection_counts::Counted>,
    /// Input buffer; `input[input_start..input_end]` is received and not yet handled. Its length
    /// is its zeroed capacity, so reads need no fresh memset.
    input: Vec<u8>,
    input_start: usize,
    input_end: usize,
    output: Vec<u8>,
    output_start: usize,
    /// Bytes of a refused request still to discard as they arrive.
    skip: usize,
    /// The socket may have more to read (edge seen, no WouldBlock since).
    pub readable: bool,
    /// The peer closed its side.
    eof: bool,
    /// Close once the output is written.
    pub closing: bool,
    /// Close now (I/O error, protocol violation).
    pub dead: bool,
    pub(super) pending_writes: VecDeque<PendingWrite>,
    pub(super) get: Option<GetInProgress>,
    pub(super) open_reads: Vec<OpenRead>,
}

impl Connection {
    pub fn new(stream: Stream, id: u64) -> Connection {
        Connection {
            stream,
            id,
            protocol: None,
            _counted: None,
            input: Vec::new(),
            input_start: 0,
            input_end: 0,
            output: Vec::new(),
            output_start: 0,
            skip: 0,
            readable: true,
            eof: false,
            closing: false,
            dead: false,
            pending_writes: VecDeque::new(),
            get: None,
            open_reads: Vec::new(),
        }
    }

    /// Reads, runs and answers as far as the socket and the connection's state allow.
    pub fn drive(&mut self, ctx: &mut Ctx) {
        loop {
            self.process(ctx);
            self.flush(ctx);
            if self.dead || self.closing || !self.accepting_input(ctx) || !self.readable {
                break;
            }
            if !self.fill(ctx) {
                break;
            }
        }
        // The peer sent all it will: close once its writes are answered. A read still waiting
        // is cancelled rather than answered: a client that went away while blocked must not
        // take a message with it (reading goes on while a read waits, so we notice).
        if self.eof && self.pending_writes.is_empty() {
            self.closing = true;
        }
    }

    /// True when the connection should be closed and forgotten now.
    pub fn finished(&self) -> bool {
        self.dead
            || (self.closing
                && self.output_start == self.output.len()
                && self.pending_writes.is_empty())
    }

    fn accepting_input(&self, ctx: &Ctx) -> bool {
        self.output.len() - self.output_start < OUTPUT_HIGH_WATER
            && self.input_end - self.input_start < ctx.shared.input_limit
    }

    /// Parses and runs every complete request that may run now.
    fn process(&mut self, ctx: &mut Ctx) {
        while self.get.is_none() && !self.closing && !self.dead {
            if self.skip > 0 {
                let n = self.skip.min(self.input_end - self.input_start);
                self.input_start += n;
                self.skip -= n;
                if self.skip > 0 {
                    break;
                }
            }
            let buf = &self.input[self.input_start..self.input_end];
            let Some(&first) = buf.first() else { break };
            let protocol = match self.protocol {
                Some(protocol) => protocol,
                None => match protocol::sniff(first) {
                    Some(protocol) => {
                        self._counted = Some(ctx.shared.connection_counts.count(protocol));
                        *self.protocol.insert(protocol)
                    }
                    None => {
                        log::info!("closing connection whose first byte is 0x{first:02x}: neither protocol");
                        self.dead = true;
                        break;
                    }
                },
            };
            let parsed = match protocol {
                Protocol::Memcache => memcache::parse(buf, &ctx.shared.limits),
                Protocol::Mqmq => mqmq::parse(buf, &ctx.shared.limits),
                Protocol::Http => {
                    // Pipelined requests wait while earlier responses are unread.
                    if self.output.len() - self.output_start >= OUTPUT_HIGH_WATER {
                        break;
                    }
                    match super::http_service::serve(buf, ctx.shared, &mut self.output) {
                        Some((consumed, close)) => {
                            self.input_start += consumed;
                            self.closing |= close;
                            continue;
                        }
                        None => break,
                    }
                }
            };
            // A reply may not overtake the replies to writes still being committed, and a
            // read must see this connection's earlier writes: only writes may pipeline.
            let must_wait = !self.pending_writes.is_empty()
                && !matches!(&parsed, Parsed::Command { command, .. } if super::session::is_write(command));
            if must_wait {
                break;
            }
            match parsed {
                Parsed::NeedMore => break,
                Parsed::Command { consumed, command } => {
                    self.input_start += consumed;
                    self.execute(command, ctx);
                }
                Parsed::Invalid {
                    consumed,
                    skip,
                    reply,
                    close,
                } => {
                    self.input_start += consumed;
                    self.skip = skip;
                    self.reply(&reply);
                    self.closing |= close;
                }
            }
        }
        if self.input_start == self.input_end {
            self.input_start = 0;
            self.input_end = 0;
            if self.input.len() > SHRINK_ABOVE {
                // A large message passed through: do not keep its buffer for an idle client.
                self.input = Vec::new();
            }
        }
    }

    /// Appends a reply in this connection's protocol.
    pub(super) fn reply(&mut self, reply: &Reply) {
        match self.protocol {
            Some(Protocol::Mqmq) => mqmq::encode(reply, &mut self.output),
            _ => memcache::encode(reply, &mut self.output),
        }
    }

    /// Reads until the socket has no more or the input limit is reached. True if anything came.
    fn fill(&mut self, ctx: &mut Ctx) -> bool {
        if self.input_start > 0 {
            self.input.copy_within(self.input_start..self.input_end, 0);
            self.input_end -= self.input_start;
            self.input_start = 0;
        }
        let mut progressed = false;
        while self.input_end < ctx.shared.input_limit {
            if self.input.len() - self.input_end < READ_CHUNK / 2 {
                let grown = (self.input.len() * 2).max(self.input_end + READ_CHUNK);
                self.input
                    .resize(grown.min(ctx.shared.input_limit + READ_CHUNK), 0);
            }
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
                    progressed = true;
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

    /// Writes as much output as the socket takes.
    pub fn flush(&mut self, ctx: &mut Ctx) {
        while self.output_start < self.output.len() && !self.dead {
            match self.stream.write(&self.output[self.output_start..]) {
                Ok(0) => self.dead = true,
                Ok(n) => {
                    self.output_start += n;
                    ctx.stats
                        .bytes_written
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == IoErrorKind::WouldBlock => break,
                Err(e) if e.kind() == IoErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("write failed: {e}");
                    self.dead = true;
                }
            }
        }
        if self.output_start == self.output.len() {
            self.output.clear();
            self.output_start = 0;
        }
    }
}
