//! `GET /metrics`: a [`Snapshot`] in the Prometheus text exposition format 0.0.4. Every family
//! has HELP and TYPE lines and its samples together; names follow Prometheus conventions
//! (`mqd_` prefix, base units, `_total` on counters). Queue names become the `queue` label,
//! escaped as the format requires (`\\`, `\"`, `\n`); bytes that are not UTF-8 become U+FFFD.

use std::fmt::Write as _;

use super::snapshot::Snapshot;
use crate::engine::{HistogramSnapshot, QueueStats};
use crate::replication::status::{MemberProgress, Role, StatusView};

/// The Content-Type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders the whole snapshot.
#[cfg(test)]
pub fn render(s: &Snapshot) -> String {
    let mut text = String::new();
    render_more(s, &mut Cursor::default(), &mut text, usize::MAX);
    text
}

/// Where a rendering stopped. The per-queue families come first, each with every queue's
/// sample (the format wants a family's samples together), then the server-wide ones.
#[derive(Default)]
pub struct Cursor {
    family: usize,
    queue: usize,
}

/// Appends the body from `at` on until `text` holds `until` bytes or the body ends (true).
/// A body with many queues is rendered piece by piece as its client reads it.
pub fn render_more(s: &Snapshot, at: &mut Cursor, text: &mut String, until: usize) -> bool {
    let mut out = Exposition { text };
    while at.family < QUEUE_FAMILIES.len() {
        if out.text.len() >= until {
            return false;
        }
        let (name, kind, help, field) = QUEUE_FAMILIES[at.family];
        if at.queue == 0 {
            out.family(name, kind, help);
        }
        while let Some(q) = s.queues.get(at.queue) {
            if out.text.len() >= until {
                return false;
            }
            let queue = String::from_utf8_lossy(&q.name);
            match field {
                Field::Count(count) => out.sample(name, &[("queue", &queue)], count(q)),
                Field::Seconds(seconds) => out.sample(name, &[("queue", &queue)], seconds(q)),
            }
            at.queue += 1;
        }
        at.family += 1;
        at.queue = 0;
    }
    render_server(s, &mut out);
    true
}

/// The server-wide families: a few kilobytes whatever the number of queues.
fn render_server(s: &Snapshot, out: &mut Exposition) {
    out.family("mqd_queues", "gauge", "Queues that exist.");
    out.sample("mqd_queues", &[], s.queues.len());
    out.family(
        "mqd_queues_loaded",
        "gauge",
        "Queues whose state is in memory now; the others wait on disk until used (--queue-memory).",
    );
    out.sample("mqd_queues_loaded", &[], s.engine.queues_loaded);
    out.family(
        "mqd_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
    );
    out.sample("mqd_uptime_seconds", &[], s.uptime_secs);

    out.family(
        "mqd_connections",
        "gauge",
        "Open client connections, by the protocol their first byte chose.",
    );
    for c in &s.connections {
        out.sample("mqd_connections", &[("protocol", c.protocol)], c.open);
    }
    out.family(
        "mqd_connections_opened_total",
        "counter",
        "Client connections that chose each protocol, since the server started.",
    );
    for c in &s.connections {
        out.sample(
            "mqd_connections_opened_total",
            &[("protocol", c.protocol)],
            c.opened,
        );
    }
    out.family(
        "mqd_connections_accepted_total",
        "counter",
        "Connections accepted, whatever they sent.",
    );
    out.sample("mqd_connections_accepted_total", &[], s.total_connections);
    if let Some([current, total, received]) = s.forwarded {
        for (name, kind, help, value) in [
            (
                "mqd_cluster_forwarded_connections",
                "gauge",
                "Client connections this member forwards to the leader now.",
                current,
            ),
            (
                "mqd_cluster_forwarded_connections_total",
                "counter",
                "Client connections this member forwarded to a leader.",
                total,
            ),
            (
                "mqd_cluster_received_forwarded_connections_total",
                "counter",
                "Client connections other members forwarded to this one.",
                received,
            ),
        ] {
            out.family(name, kind, help);
            out.sample(name, &[], value);
        }
    }

    if let Some((view, progress)) = &s.cluster {
        render_cluster(out, view, progress);
    }

    out.family(
        "mqd_commands_total",
        "counter",
        "Queue commands by kind: get (memcache get, mqmq Get), peek (get with /peek), set (memcache set, mqmq Put). Zeroed by `stats reset`.",
    );
    for (kind, count) in s.commands() {
        out.sample("mqd_commands_total", &[("kind", kind)], count);
    }
    let t = &s.totals;
    for (name, help, value) in [
        (
            "mqd_get_hits_total",
            "Reads that returned a message.",
            t.get_hits,
        ),
        (
            "mqd_get_misses_total",
            "Reads that found no message.",
            t.get_misses,
        ),
        (
            "mqd_received_bytes_total",
            "Bytes read from clients.",
            t.bytes_read,
        ),
        (
            "mqd_sent_bytes_total",
            "Bytes written to clients.",
            t.bytes_written,
        ),
        (
            "mqd_commit_batches_total",
            "Group commits written to RocksDB.",
            s.engine.commit_batches,
        ),
        (
            "mqd_storage_errors_total",
            "Reads, writes, flushes and compactions RocksDB failed (I/O errors; checksum mismatches of a damaged table file, which `mqd repair` fixes).",
            s.engine.storage_errors,
        ),
    ] {
        out.family(name, "counter", help);
        out.sample(name, &[], value);
    }

    out.histogram(
        "mqd_commit_batch_size",
        "Write requests (puts, deletes, flushes) answered by one group commit.",
        &s.engine.batch_size,
        1.0,
    );
    out.histogram(
        "mqd_fsync_duration_seconds",
        "Duration of each WAL fsync that writes wait for (--sync always: each covering every write before it, by the syncer, an event loop or a cluster follower's raft thread; --sync interval: each periodic sync).",
        &s.engine.sync_micros,
        1e6,
    );

    out.family(
        "mqd_disk_below_reserve",
        "gauge",
        "1 while free disk space is under --min-free-space and new messages are refused.",
    );
    out.sample(
        "mqd_disk_below_reserve",
        &[],
        u8::from(s.engine.below_reserve),
    );
    out.family(
        "mqd_disk_reserve_bytes",
        "gauge",
        "The free-space reserve, --min-free-space (0: none).",
    );
    out.sample("mqd_disk_reserve_bytes", &[], s.engine.reserve_bytes);
    if let Some(free) = s.engine.free_bytes {
        out.family(
            "mqd_disk_free_bytes",
            "gauge",
            "Free bytes on the data directory's file system.",
        );
        out.sample("mqd_disk_free_bytes", &[], free);
    }
    out.gauge_by_kind(
        "mqd_rocksdb_memory_bytes",
        "Memory RocksDB holds, by kind (memtables, block_cache, block_cache_pinned, table_readers).",
        &s.engine.rocksdb_memory,
    );
    out.gauge_by_kind(
        "mqd_message_memory_bytes",
        "Memory the queues' in-memory messages hold, by kind (recent, read_ahead).",
        &s.engine.message_memory,
    );
    for (name, help, pick) in [
        (
            "mqd_client_memory_bytes",
            "Memory held for clients beyond each connection's allowance, by budget (input: partial requests; output: replies not sent; write: message bodies not yet synced).",
            (|&(_, used, _)| used) as fn(&(&str, u64, u64)) -> u64,
        ),
        (
            "mqd_client_memory_limit_bytes",
            "The limit of each client memory budget (--input-budget, --output-budget; write: 64 MiB).",
            |&(_, _, limit)| limit,
        ),
    ] {
        out.family(name, "gauge", help);
        for budget in &s.budgets {
            out.sample(name, &[("budget", budget.0)], pick(budget));
        }
    }
}

/// How a per-queue family reads its value.
#[derive(Clone, Copy)]
enum Field {
    Count(fn(&QueueStats) -> u64),
    Seconds(fn(&QueueStats) -> f64),
}

/// The per-queue families: (name, type, help, value).
#[rustfmt::skip]
const QUEUE_FAMILIES: [(&str, &str, &str, Field); 10] = [
    ("mqd_queue_items", "gauge", "Messages waiting to be read (open ones not counted).", Field::Count(|q| q.items)),
    ("mqd_queue_bytes", "gauge", "Body bytes the queue holds, open messages included.", Field::Count(|q| q.bytes)),
    ("mqd_queue_open_reads", "gauge", "Messages handed out by /open and not yet closed or aborted.", Field::Count(|q| q.open)),
    ("mqd_queue_waiters", "gauge", "Readers blocked waiting for a message.", Field::Count(|q| q.waiters)),
    ("mqd_queue_enqueued_total", "counter", "Messages ever committed to the queue.", Field::Count(|q| q.enqueued)),
    ("mqd_queue_dequeued_total", "counter", "Messages that left the queue for good: read (and closed), expired, discarded or flushed.", Field::Count(|q| q.removed)),
    ("mqd_queue_expired_total", "counter", "Messages dropped unread because they expired.", Field::Count(|q| q.expired)),
    ("mqd_queue_discarded_total", "counter", "Messages dropped to make room (--discard-old-when-full).", Field::Count(|q| q.discarded)),
    ("mqd_queue_flushes_total", "counter", "Times the queue was flushed.", Field::Count(|q| q.flushes)),
    ("mqd_queue_oldest_age_seconds", "gauge", "Seconds the oldest waiting message has waited (0 when the queue is empty).", Field::Seconds(|q| q.age_ms as f64 / 1000.0)),
];

/// Under `--cluster`: this node's role (one sample per role, 1 for the one it has), its id,
/// the leader it knows, the term, its log positions and membership, and on the leader each
/// member's matched index and lag.
fn render_cluster(out: &mut Exposition, view: &StatusView, progress: &[MemberProgress]) {
    out.family(
        "mqd_cluster_role",
        "gauge",
        "1 for this node's role in its replicated group, 0 for the others.",
    );
    for role in Role::ALL {
        let value = u8::from(role == view.role);
        out.sample("mqd_cluster_role", &[("role", role.name())], value);
    }
    for (name, help, value) in [
        (
            "mqd_cluster_node",
            "This node's id in the group.",
            view.node,
        ),
        (
            "mqd_cluster_leader",
            "The id of the leader this node knows, 0 if none.",
            view.leader,
        ),
        (
            "mqd_cluster_term",
            "The raft term this node is in.",
            view.term,
        ),
        (
            "mqd_cluster_commit_index",
            "The last raft log index this node knows committed (fsynced on a majority).",
            view.commit,
        ),
        (
            "mqd_cluster_applied_index",
            "The last raft log index applied to this node's queues.",
            view.applied,
        ),
        (
            "mqd_cluster_last_index",
            "The last index in this node's raft log.",
            view.last_index,
        ),
        (
            "mqd_cluster_voters",
            "Voting members in the membership this node applied last.",
            view.voters,
        ),
        (
            "mqd_cluster_learners",
            "Learners (members catching up before they vote) in that membership.",
            view.learners,
        ),
    ] {
        out.family(name, "gauge", help);
        out.sample(name, &[], value);
    }
    if progress.is_empty() {
        return;
    }
    for (name, help, value) in [
        (
            "mqd_cluster_member_matched_index",
            "On the leader: the last index of each member's log known to match the leader's.",
            (|m: &MemberProgress| m.matched) as fn(&MemberProgress) -> u64,
        ),
        (
            "mqd_cluster_member_lag_entries",
            "On the leader: entries each member's log is behind the leader's last one.",
            |m: &MemberProgress| m.lag,
        ),
    ] {
        out.family(name, "gauge", help);
        for m in progress {
            let id = m.id.to_string();
            let kind = if m.voter { "voter" } else { "learner" };
            out.sample(name, &[("member", &id), ("kind", kind)], value(m));
        }
    }
}

struct Exposition<'a> {
    text: &'a mut String,
}

impl Exposition<'_> {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// A gauge family with one sample per `kind` label.
    fn gauge_by_kind(&mut self, name: &str, help: &str, values: &[(&str, u64)]) {
        self.family(name, "gauge", help);
        for (kind, value) in values {
            self.sample(name, &[("kind", kind)], value);
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(label);
                self.text.push_str("=\"");
                push_label_value(self.text, value);
                self.text.push('"');
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A histogram whose observations are `per_unit` to one of the exposed unit (1e6 for
    /// microseconds exposed as seconds). Dividing keeps bounds such as 0.0001 exact in text.
    fn histogram(&mut self, name: &str, help: &str, h: &HistogramSnapshot, per_unit: f64) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for &(bound, count) in &h.buckets {
            let le = (bound as f64 / per_unit).to_string();
            self.sample(&bucket, &[("le", &le)], count);
        }
        self.sample(&bucket, &[("le", "+Inf")], h.count);
        self.sample(&format!("{name}_sum"), &[], h.sum as f64 / per_unit);
        self.sample(&format!("{name}_count"), &[], h.count);
    }
}

fn push_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut text = String::new();
        let mut out = Exposition { text: &mut text };
        out.sample("m", &[("queue", "a\\b\"c\nd")], 1);
        assert_eq!(text, "m{queue=\"a\\\\b\\\"c\\nd\"} 1\n");
    }

    #[test]
    fn histograms_are_cumulative_with_inf() {
        let mut text = String::new();
        let mut out = Exposition { text: &mut text };
        let h = HistogramSnapshot {
            buckets: vec![(100, 1), (1000, 3)],
            count: 4,
            sum: 5000,
        };
        out.histogram("d_seconds", "x", &h, 1e6);
        assert_eq!(
            text,
            "# HELP d_seconds x\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{le=\"0.0001\"} 1\nd_seconds_bucket{le=\"0.001\"} 3\n\
             d_seconds_bucket{le=\"+Inf\"} 4\nd_seconds_sum 0.005\nd_seconds_count 4\n"
        );
    }
}
