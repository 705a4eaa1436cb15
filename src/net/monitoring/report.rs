//! The numbers `stats`, `stats queue` and mqmq's `Info` report, gathered from every event loop's
//! counters and the engine's queues. The codecs decide how they are spelled.

use std::sync::atomic::Ordering;

use crate::net::Shared;
use crate::protocol::{memcache, Info};
use crate::replication::status::StatusView;

/// Most queues `stats` prints Kestrel's per-queue lines for. Past it (a server with many queues,
/// most of them idle), only queues holding messages (or with readers waiting or messages open)
/// get them, the first `MOST_QUEUES_IN_STATS` by name; the totals count every queue.
const MOST_QUEUES_IN_STATS: usize = 1000;

/// `stats`: MemcacheQ's keys, memcached's and Kestrel's totals, then Kestrel's per-queue lines.
pub fn general(shared: &Shared) -> Vec<(String, String)> {
    let totals = shared.loop_totals();
    // Ages only for the queues listed below: reading every queue's head message made `stats`
    // take seconds with a few hundred thousand queues, holding its event loop.
    let queues = shared.engine.stats(false);
    let (user, system) = rusage();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let curr_connections = shared.curr_connections.load(Ordering::Relaxed);
    let mut stats: Vec<(String, String)> = vec![
        ("pid".into(), std::process::id().to_string()),
        (
            "uptime".into(),
            shared.started.elapsed().as_secs().to_string(),
        ),
        ("time".into(), now.to_string()),
        ("version".into(), env!("CARGO_PKG_VERSION").into()),
        ("pointer_size".into(), (usize::BITS).to_string()),
        ("rusage_user".into(), user),
        ("rusage_system".into(), system),
        ("curr_connections".into(), curr_connections.to_string()),
        (
            "total_connections".into(),
            shared.total_connections.load(Ordering::Relaxed).to_string(),
        ),
        ("connection_structures".into(), curr_connections.to_string()),
        ("get_cmds".into(), totals.get_cmds.to_string()),
        ("get_hits".into(), totals.get_hits.to_string()),
        ("set_cmds".into(), totals.set_cmds.to_string()),
        ("set_hits".into(), totals.set_hits.to_string()),
        ("bytes_read".into(), totals.bytes_read.to_string()),
        ("bytes_written".into(), totals.bytes_written.to_string()),
        ("threads".into(), shared.threads.to_string()),
        ("cmd_get".into(), totals.get_cmds.to_string()),
        ("cmd_set".into(), totals.set_cmds.to_string()),
        ("cmd_peek".into(), totals.cmd_peek.to_string()),
        ("get_misses".into(), totals.get_misses.to_string()),
        (
            "curr_items".into(),
            queues.iter().map(|q| q.items).sum::<u64>().to_string(),
        ),
        (
            "total_items".into(),
            queues.iter().map(|q| q.enqueued).sum::<u64>().to_string(),
        ),
        (
            "bytes".into(),
            queues.iter().map(|q| q.bytes).sum::<u64>().to_string(),
        ),
        ("curr_queues".into(), queues.len().to_string()),
        (
            "storage_errors".into(),
            shared.engine.storage_errors().to_string(),
        ),
    ];
    if let Some(cluster) = &shared.cluster {
        stats.extend(cluster_stats(&cluster.view()));
    }
    if let Some(forwarding) = &shared.forwarding {
        let count = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed).to_string();
        stats.extend([
            (
                "cluster_forwarded_connections".into(),
                count(&forwarding.current),
            ),
            (
                "cluster_total_forwarded_connections".into(),
                count(&forwarding.total),
            ),
            (
                "cluster_received_forwarded_connections".into(),
                count(&forwarding.received),
            ),
        ]);
    }
    let many = queues.len() > MOST_QUEUES_IN_STATS;
    let listed = queues
        .iter()
        .filter(|q| !many || q.items + q.waiters + q.open > 0)
        .take(MOST_QUEUES_IN_STATS);
    for q in listed {
        let name = memcache::printable_name(&q.name);
        for (field, value) in [
            ("items", q.items),
            ("bytes", q.bytes),
            ("total_items", q.enqueued),
            ("expired_items", q.expired),
            ("age", shared.engine.head_age(&q.name)),
            ("discarded", q.discarded),
            ("waiters", q.waiters),
            ("open_transactions", q.open),
            ("total_flushes", q.flushes),
        ] {
            stats.push((format!("queue_{name}_{field}"), value.to_string()));
        }
    }
    stats
}

/// Under `--cluster`: this node's id and role, the leader it knows (0: none), the term, the
/// commit index, what its raft log holds (compaction bounds it), and its membership.
fn cluster_stats(view: &StatusView) -> [(String, String); 12] {
    let entries = (view.last_index + 1).saturating_sub(view.first_index);
    [
        ("cluster_node".into(), view.node.to_string()),
        ("cluster_role".into(), view.role.name().into()),
        ("cluster_leader".into(), view.leader.to_string()),
        ("cluster_term".into(), view.term.to_string()),
        ("cluster_commit_index".into(), view.commit.to_string()),
        (
            "cluster_log_first_index".into(),
            view.first_index.to_string(),
        ),
        ("cluster_log_entries".into(), entries.to_string()),
        ("cluster_log_bytes".into(), view.log_bytes.to_string()),
        (
            "cluster_snapshots_made".into(),
            view.snapshots_made.to_string(),
        ),
        (
            "cluster_snapshots_installed".into(),
            view.snapshots_installed.to_string(),
        ),
        ("cluster_voters".into(), view.voters.to_string()),
        ("cluster_learners".into(), view.learners.to_string()),
    ]
}

/// `stats queue`: `<queue> <enqueued>/<dequeued>` per queue, as MemcacheQ prints it.
pub fn queues(shared: &Shared) -> Vec<(String, String)> {
    shared
        .engine
        .stats(false)
        .into_iter()
        .map(|q| {
            let name = memcache::printable_name(&q.name);
            (name, format!("{}/{}", q.enqueued, q.removed))
        })
        .collect()
}

/// `stats reset`: zero the command and traffic counters (queue totals are history, kept).
pub fn reset(shared: &Shared) {
    for stats in shared.loop_stats.get().into_iter().flatten() {
        stats.reset();
    }
}

/// mqmq `Info`.
pub fn info(shared: &Shared) -> Info {
    Info {
        connections: shared.curr_connections.load(Ordering::Relaxed),
        queues: shared
            .engine
            .stats(false)
            .into_iter()
            .map(|q| (q.name.to_vec(), q.items))
            .collect(),
    }
}

/// CPU time used, user and system, as memcached prints it (`seconds.microseconds`).
fn rusage() -> (String, String) {
    // SAFETY: getrusage fills the struct we pass and reads nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let format = |t: libc::timeval| format!("{}.{:06}", t.tv_sec, t.tv_usec);
    (format(usage.ru_utime), format(usage.ru_stime))
}
