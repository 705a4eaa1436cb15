//! `GET /stats.json`: the same [`Snapshot`] as `/metrics`, as one JSON object, with Kestrel's
//! and memcached's stat names where they have one (`items`, `total_items`, `expired_items`,
//! `age_msec`, `open_transactions`, `cmd_get`, ...). Queues are a list sorted by name, each
//! with its `name` (bytes that are not UTF-8 become U+FFFD, as in mqmq's `Info`).

use std::fmt::Write as _;

use super::snapshot::Snapshot;
use crate::engine::{HistogramSnapshot, QueueStats};
use crate::protocol::json;
use crate::replication::status::{MemberProgress, StatusView};

pub const CONTENT_TYPE: &str = "application/json";

/// Renders the whole snapshot.
#[cfg(test)]
pub fn render(s: &Snapshot) -> Vec<u8> {
    let mut out = Vec::new();
    render_more(s, &mut Cursor::default(), &mut out, usize::MAX);
    out
}

/// Where a rendering stopped: the server-wide fields, then each queue of the `queues` list,
/// then the end.
#[derive(Default)]
pub struct Cursor {
    head_done: bool,
    queue: usize,
}

/// Appends the body from `at` on until `out` holds `until` bytes or the body ends (true). A
/// body with many queues is rendered piece by piece as its client reads it.
pub fn render_more(s: &Snapshot, at: &mut Cursor, out: &mut Vec<u8>, until: usize) -> bool {
    if !at.head_done {
        out.extend_from_slice(&render_head(s));
        at.head_done = true;
    }
    while let Some(q) = s.queues.get(at.queue) {
        if out.len() >= until {
            return false;
        }
        if at.queue > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&render_queue(q));
        at.queue += 1;
    }
    out.extend_from_slice(b"]}\n");
    true
}

/// The object up to the opening of its last field, the `queues` list: `{...,"queues":[`.
fn render_head(s: &Snapshot) -> Vec<u8> {
    let mut o = Object::new();
    let t = &s.totals;
    o.number("time_msec", s.time_ms);
    o.number("uptime", s.uptime_secs);
    o.key("version");
    json::push_string(&mut o.out, env!("CARGO_PKG_VERSION").as_bytes());
    o.number("curr_connections", s.curr_connections);
    o.number("total_connections", s.total_connections);
    o.key("connections");
    let mut by_protocol = Object::new();
    for c in &s.connections {
        by_protocol.key(c.protocol);
        let mut counts = Object::new();
        counts.number("open", c.open);
        counts.number("opened", c.opened);
        by_protocol.raw(&counts.finish());
    }
    o.raw(&by_protocol.finish());
    for (name, value) in [
        ("cmd_get", t.get_cmds),
        ("cmd_set", t.set_cmds),
        ("cmd_peek", t.cmd_peek),
        ("get_hits", t.get_hits),
        ("get_misses", t.get_misses),
        ("bytes_read", t.bytes_read),
        ("bytes_written", t.bytes_written),
        ("curr_items", s.queues.iter().map(|q| q.items).sum()),
        ("total_items", s.queues.iter().map(|q| q.enqueued).sum()),
        ("bytes", s.queues.iter().map(|q| q.bytes).sum()),
        ("curr_queues", s.queues.len() as u64),
        ("commit_batches", s.engine.commit_batches),
        ("storage_errors", s.engine.storage_errors),
    ] {
        o.number(name, value);
    }
    o.key("commit_batch_size");
    o.raw(&histogram(&s.engine.batch_size));
    o.key("fsync_usec");
    o.raw(&histogram(&s.engine.sync_micros));
    o.key("disk");
    let mut disk = Object::new();
    disk.key("below_reserve");
    disk.out.extend_from_slice(if s.engine.below_reserve {
        b"true"
    } else {
        b"false"
    });
    disk.number("reserve_bytes", s.engine.reserve_bytes);
    if let Some(free) = s.engine.free_bytes {
        disk.number("free_bytes", free);
    }
    o.raw(&disk.finish());
    o.key("rocksdb_memory_bytes");
    let mut memory = Object::new();
    for (kind, bytes) in &s.engine.rocksdb_memory {
        memory.number(kind, *bytes);
    }
    o.raw(&memory.finish());
    o.key("message_memory_bytes");
    let mut memory = Object::new();
    for (kind, bytes) in &s.engine.message_memory {
        memory.number(kind, *bytes);
    }
    o.raw(&memory.finish());
    o.number("queues_loaded", s.engine.queues_loaded);
    o.key("client_memory_bytes");
    let mut budgets = Object::new();
    for &(name, used, limit) in &s.budgets {
        budgets.key(name);
        let mut budget = Object::new();
        budget.number("used", used);
        budget.number("limit", limit);
        budgets.raw(&budget.finish());
    }
    o.raw(&budgets.finish());
    if let Some((view, progress)) = &s.cluster {
        o.key("cluster");
        o.raw(&render_cluster(view, progress));
    }

    o.key("queues");
    o.out.push(b'[');
    o.out
}

/// Under `--cluster`: `{"node":1,"role":"leader","leader":1,"term":2,...,"members":[...]}`,
/// the members' progress only on the leader (an empty list elsewhere).
fn render_cluster(view: &StatusView, progress: &[MemberProgress]) -> Vec<u8> {
    let mut cluster = Object::new();
    cluster.number("node", view.node);
    cluster.key("role");
    json::push_string(&mut cluster.out, view.role.name().as_bytes());
    for (name, value) in [
        ("leader", view.leader),
        ("term", view.term),
        ("commit_index", view.commit),
        ("applied_index", view.applied),
        ("last_index", view.last_index),
        ("log_first_index", view.first_index),
        ("log_bytes", view.log_bytes),
        ("voters", view.voters),
        ("learners", view.learners),
    ] {
        cluster.number(name, value);
    }
    cluster.key("members");
    cluster.out.push(b'[');
    for (i, m) in progress.iter().enumerate() {
        if i > 0 {
            cluster.out.push(b',');
        }
        let mut member = Object::new();
        member.number("id", m.id);
        member.key("voter");
        member
            .out
            .extend_from_slice(if m.voter { b"true" } else { b"false" });
        member.number("matched_index", m.matched);
        member.number("lag", m.lag);
        cluster.raw(&member.finish());
    }
    cluster.out.push(b']');
    cluster.finish()
}

fn render_queue(q: &QueueStats) -> Vec<u8> {
    let mut queue = Object::new();
    queue.key("name");
    json::push_string(&mut queue.out, &q.name);
    for (name, value) in [
        ("items", q.items),
        ("bytes", q.bytes),
        ("total_items", q.enqueued),
        ("dequeued_items", q.removed),
        ("expired_items", q.expired),
        ("discarded", q.discarded),
        ("total_flushes", q.flushes),
        ("age_msec", q.age_ms),
        ("waiters", q.waiters),
        ("open_transactions", q.open),
    ] {
        queue.number(name, value);
    }
    queue.finish()
}

fn histogram(h: &HistogramSnapshot) -> Vec<u8> {
    let mut o = Object::new();
    o.number("count", h.count);
    o.number("sum", h.sum);
    o.key("buckets");
    let mut buckets = String::from("[");
    for (i, (bound, count)) in h.buckets.iter().enumerate() {
        let comma = if i > 0 { "," } else { "" };
        let _ = write!(buckets, "{comma}[{bound},{count}]");
    }
    buckets.push(']');
    o.raw(buckets.as_bytes());
    o.finish()
}

/// A JSON object being written: keys in the order given.
struct Object {
    out: Vec<u8>,
    fields: usize,
}

impl Object {
    fn new() -> Object {
        Object {
            out: vec![b'{'],
            fields: 0,
        }
    }

    fn key(&mut self, key: &str) {
        if self.fields > 0 {
            self.out.push(b',');
        }
        self.fields += 1;
        json::push_string(&mut self.out, key.as_bytes());
        self.out.push(b':');
    }

    fn number(&mut self, key: &str, value: u64) {
        self.key(key);
        self.out.extend_from_slice(value.to_string().as_bytes());
    }

    fn raw(&mut self, value: &[u8]) {
        self.out.extend_from_slice(value);
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.push(b'}');
        self.out
    }
}
