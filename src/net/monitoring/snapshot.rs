//! Everything the monitoring endpoints report, gathered at one moment into plain values:
//! server counters from the event loops, connections by protocol, every queue's `QueueStats`
//! and the engine's commit, disk and RocksDB numbers. `/metrics` and `/stats.json` render the
//! same snapshot, so they always agree.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use super::connection_counts::{label, PROTOCOLS};
use crate::engine::{EngineSnapshot, QueueStats};
use crate::net::{Shared, Totals};
use crate::replication::status::{MemberProgress, StatusView};

/// Connections of one protocol.
#[derive(Clone, Debug)]
pub struct ProtocolConnections {
    pub protocol: &'static str,
    /// Open now.
    pub open: u64,
    /// Ever opened.
    pub opened: u64,
}

#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Wall-clock time of the snapshot, milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub uptime_secs: u64,
    pub curr_connections: u64,
    pub total_connections: u64,
    pub connections: Vec<ProtocolConnections>,
    pub totals: Totals,
    pub queues: Vec<QueueStats>,
    pub engine: EngineSnapshot,
    /// The server-wide budgets of clients' memory (`budget`): (name, bytes used, limit).
    pub budgets: [(&'static str, u64, u64); 3],
    /// Under `--cluster`: connections forwarded to the leader now, since start, and received
    /// forwarded since start (`net::forward`).
    pub forwarded: Option<[u64; 3]>,
    /// Under `--cluster`: this node's place in the group, and (on the leader) each member's
    /// progress.
    pub cluster: Option<(StatusView, Vec<MemberProgress>)>,
}

impl Snapshot {
    pub fn take(shared: &Shared) -> Snapshot {
        let counts = &shared.connection_counts;
        Snapshot {
            time_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            uptime_secs: shared.started.elapsed().as_secs(),
            curr_connections: shared.curr_connections.load(Ordering::Relaxed),
            total_connections: shared.total_connections.load(Ordering::Relaxed),
            connections: PROTOCOLS
                .iter()
                .map(|&p| ProtocolConnections {
                    protocol: label(p),
                    open: counts.open(p),
                    opened: counts.opened(p),
                })
                .collect(),
            totals: shared.loop_totals(),
            queues: shared.engine.stats(true),
            engine: shared.engine.metrics(),
            budgets: [
                ("input", &shared.input_budget.bytes),
                ("output", &shared.output.bytes),
                ("write", &shared.writes.bytes),
            ]
            .map(|(name, b)| (name, b.used() as u64, b.limit() as u64)),
            forwarded: shared
                .forwarding
                .as_ref()
                .map(|f| [&f.current, &f.total, &f.received].map(|n| n.load(Ordering::Relaxed))),
            cluster: shared
                .cluster
                .as_ref()
                .map(|status| (status.view(), status.progress())),
        }
    }

    /// Bytes of memory it holds: its queue list, most of it with many queues.
    pub fn memory(&self) -> usize {
        let names: usize = self.queues.iter().map(|q| q.name.len() + 16).sum();
        self.queues.capacity() * std::mem::size_of::<QueueStats>() + names
    }

    /// Commands counted by kind, each command in one kind (`cmd_get` counts peeks too; here
    /// `get` does not): `(kind, count)`.
    pub fn commands(&self) -> [(&'static str, u64); 3] {
        [
            (
                "get",
                self.totals.get_cmds.saturating_sub(self.totals.cmd_peek),
            ),
            ("set", self.totals.set_cmds),
            ("peek", self.totals.cmd_peek),
        ]
    }
}
