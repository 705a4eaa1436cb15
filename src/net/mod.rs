//! The network side: listeners, event loops, connections and what each command does on them.
//! It owns connections and time; the engine owns the queues.
//!
//! Layers, each using only those below it: `server` starts the `event_loop`s; a loop drives
//! its `connection`s (bytes, buffers, budgets, timers); a connection hands each parsed request
//! to `commands` (what the request means, over the engine's API).
//!
//! Each event loop is a thread with its own mio `Poll`. Loop 0 accepts and deals connections out
//! round-robin, so both cores parse and answer; a connection stays on its loop for life. Writes
//! a loop collects in one iteration go to the engine's committer together.
//!
//! A connection whose first byte is an uppercase letter speaks HTTP instead: `monitoring`
//! answers it from a snapshot of the counters.
//!
//! Under `--cluster`, a member that does not serve pipes a connection to the leader at its
//! first queue command (`forward`); the leader's raft listener hands such connections to the
//! loops (`server`), which serve them as any other, flagged as forwarded.
//!
//! The server's settings are its own (`ServerConfig`); the command line (`crate::cli`) builds
//! them.

pub mod budget;
mod commands;
mod config;
mod connection;
mod event_loop;
mod fd_limit;
mod forward;
mod housekeeping;
mod identity;
pub mod monitoring;
mod output;
pub mod server;
mod stream;
pub mod systemd;
mod timers;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::engine::{Engine, SyncPoint, Uncommitted};
use crate::protocol::Limits;
pub use config::{default_listen, default_threads, ServerConfig, MAX_MESSAGE_SIZE_LIMIT};
use monitoring::connection_counts;
use timers::Timers;

/// One event loop's counters; only that loop writes them, `stats` sums them.
#[derive(Default)]
pub struct LoopStats {
    pub get_cmds: AtomicU64,
    pub get_hits: AtomicU64,
    pub get_misses: AtomicU64,
    pub cmd_peek: AtomicU64,
    pub set_cmds: AtomicU64,
    pub set_hits: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
}

/// A plain copy of the counters.
#[derive(Default, Debug, Clone, Copy)]
pub struct Totals {
    pub get_cmds: u64,
    pub get_hits: u64,
    pub get_misses: u64,
    pub cmd_peek: u64,
    pub set_cmds: u64,
    pub set_hits: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

impl LoopStats {
    fn counters(&self) -> [&AtomicU64; 8] {
        [
            &self.get_cmds,
            &self.get_hits,
            &self.get_misses,
            &self.cmd_peek,
            &self.set_cmds,
            &self.set_hits,
            &self.bytes_read,
            &self.bytes_written,
        ]
    }

    fn reset(&self) {
        for counter in self.counters() {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

/// What every loop shares.
pub struct Shared {
    pub engine: Arc<Engine>,
    pub limits: Limits,
    /// Most bytes buffered from one connection before it is processed.
    pub input_limit: usize,
    /// Input-buffer bytes all connections together may hold beyond their free allowance
    /// (`--input-budget`).
    pub input_budget: budget::InputBudget,
    /// Writes and body bytes in flight to the committer, across connections.
    pub writes: budget::WriteBudget,
    /// Reply bytes held beyond 64 KiB per connection, across connections (`--output-budget`).
    pub output: budget::OutputBudget,
    /// A connection whose request stays incomplete this long is closed (`--request-timeout`).
    pub request_timeout: Option<std::time::Duration>,
    /// A connection with no traffic this long is closed (`--idle-timeout`; off by default).
    pub idle_timeout: Option<std::time::Duration>,
    pub max_connections: u64,
    pub max_open_reads: usize,
    pub open_timeout: Option<std::time::Duration>,
    pub threads: usize,
    pub started: Instant,
    pub curr_connections: AtomicU64,
    pub total_connections: AtomicU64,
    pub loop_stats: OnceLock<Vec<Arc<LoopStats>>>,
    pub shutting_down: AtomicBool,
    pub connection_counts: Arc<connection_counts::ConnectionCounts>,
    /// This node's place in its replicated group, under `--cluster`.
    pub cluster: Option<Arc<crate::replication::status::Status>>,
    /// Under `--cluster`: where queue commands this node does not serve are forwarded.
    pub(crate) forwarding: Option<forward::Forwarding>,
}

impl Shared {
    /// What the loops of a server started with `config` share, over `engine`.
    fn new(
        engine: Arc<Engine>,
        config: &ServerConfig,
        cluster: Option<Arc<crate::replication::status::Status>>,
    ) -> Shared {
        let limits = Limits {
            max_message_size: config.max_message_size,
        };
        Shared {
            engine,
            limits,
            input_limit: crate::protocol::input_limit(&limits),
            input_budget: budget::InputBudget::new(config.input_budget),
            writes: budget::WriteBudget::new(budget::MAX_WRITES, budget::MAX_WRITE_BYTES),
            output: budget::OutputBudget::new(config.output_budget),
            request_timeout: config.request_timeout,
            idle_timeout: config.idle_timeout,
            max_connections: config.max_connections as u64,
            max_open_reads: config.max_open_reads,
            open_timeout: config.open_timeout,
            threads: config.threads,
            started: Instant::now(),
            curr_connections: AtomicU64::new(0),
            total_connections: AtomicU64::new(0),
            loop_stats: OnceLock::new(),
            shutting_down: AtomicBool::new(false),
            connection_counts: Arc::default(),
            forwarding: cluster
                .as_ref()
                .zip(config.cluster.as_ref())
                .map(|(status, c)| forward::Forwarding::new(status.clone(), &c.peers)),
            cluster,
        }
    }

    pub fn loop_totals(&self) -> Totals {
        let mut t = Totals::default();
        for s in self.loop_stats.get().into_iter().flatten() {
            let v: Vec<u64> = s
                .counters()
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect();
            t.get_cmds += v[0];
            t.get_hits += v[1];
            t.get_misses += v[2];
            t.cmd_peek += v[3];
            t.set_cmds += v[4];
            t.set_hits += v[5];
            t.bytes_read += v[6];
            t.bytes_written += v[7];
        }
        t
    }
}

/// What a connection needs from its loop while it runs a command.
pub struct Ctx<'a> {
    pub shared: &'a Shared,
    pub stats: &'a LoopStats,
    pub uncommitted: &'a mut Uncommitted,
    pub timers: &'a mut Timers,
    /// Deadlines of open messages (`--open-timeout`), keyed by open-read id.
    pub open_timers: &'a mut Timers,
    /// This loop's mailbox index, for `ConnRef`s.
    pub mailbox: u32,
    /// Every write up to this point is durable, as the loop read it for this call: replies
    /// held for it may go out. Fenced against a step-down (`event_loop::EventLoop::with_conn`,
    /// `release_held`), so connections never read the engine's point themselves.
    pub synced: SyncPoint,
    pub next_wait_id: &'a mut u64,
    /// Input buffers of connections that went idle, kept for the next connection that reads
    /// (see `connection::SPARE_INPUTS`).
    pub spare_inputs: &'a mut Vec<Vec<u8>>,
}
