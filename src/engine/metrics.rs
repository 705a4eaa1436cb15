//! The engine's own numbers for monitoring: how many commits the committer wrote, how many
//! writes each carried and how long each fsync took (histograms), whether the free-space
//! reserve is refusing messages, how many reads, writes, flushes and compactions RocksDB failed
//! (a damaged table file shows here first), and the memory RocksDB and the in-memory messages hold. The
//! committer, the readers and the WAL syncer record; anyone may take a [`EngineSnapshot`].
//! Per-queue numbers are `Engine::stats`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::space;
use super::Engine;

/// Upper bounds of the batch-size buckets, in write requests per commit.
const BATCH_SIZE_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 8192];
/// Upper bounds of the fsync-latency buckets, in microseconds (100 µs to 2.5 s).
const SYNC_MICROS_BOUNDS: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000,
];

/// A histogram with fixed buckets, written by one thread, read by any.
pub(super) struct Histogram {
    bounds: &'static [u64],
    /// Observations per bucket (not cumulative); the last one is above every bound.
    counts: Vec<AtomicU64>,
    sum: AtomicU64,
}

/// A copy of a histogram: cumulative counts per upper bound, as Prometheus exposes them.
#[derive(Clone, Debug)]
pub struct HistogramSnapshot {
    /// `(upper bound, observations at or below it)`, in the histogram's unit.
    pub buckets: Vec<(u64, u64)>,
    pub count: u64,
    pub sum: u64,
}

impl Histogram {
    fn new(bounds: &'static [u64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    pub(super) fn observe(&self, value: u64) {
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            running += count.load(Ordering::Relaxed);
            buckets.push((*bound, running));
        }
        let count = running + self.counts[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            count,
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

/// What the committer and the WAL syncer record.
pub(super) struct EngineMetrics {
    /// Commits written to RocksDB.
    pub(super) batches: AtomicU64,
    /// Write requests (puts, deletes, flushes) answered per commit.
    pub(super) batch_size: Histogram,
    /// Duration of each synced write (WAL append and fsync) or WAL sync, in microseconds.
    pub(super) sync_micros: Histogram,
    /// The free-space reserve is refusing new messages.
    pub(super) below_reserve: AtomicBool,
    /// Reads and writes RocksDB failed (I/O errors, checksum mismatches).
    pub(super) storage_errors: AtomicU64,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        EngineMetrics {
            batches: AtomicU64::new(0),
            batch_size: Histogram::new(BATCH_SIZE_BOUNDS),
            sync_micros: Histogram::new(SYNC_MICROS_BOUNDS),
            below_reserve: AtomicBool::new(false),
            storage_errors: AtomicU64::new(0),
        }
    }
}

impl EngineMetrics {
    /// A group commit of `writers` write requests was written.
    pub(super) fn committed(&self, writers: u64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batch_size.observe(writers);
    }

    /// RocksDB failed a read or a write.
    pub(super) fn storage_error(&self) {
        self.storage_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn observe_sync(&self, took: Duration) {
        self.sync_micros
            .observe(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }
}

/// The engine's numbers at one moment.
#[derive(Clone, Debug)]
pub struct EngineSnapshot {
    pub commit_batches: u64,
    /// Write requests per commit.
    pub batch_size: HistogramSnapshot,
    /// Synced writes and WAL syncs, in microseconds.
    pub sync_micros: HistogramSnapshot,
    pub below_reserve: bool,
    /// Reads and writes RocksDB failed since the start (each answered with a storage error),
    /// plus its failed background flushes and compactions.
    pub storage_errors: u64,
    /// `--min-free-space`, in bytes (0: no reserve).
    pub reserve_bytes: u64,
    /// Free bytes on the data directory's file system, if the kernel said.
    pub free_bytes: Option<u64>,
    /// RocksDB's memory by kind (`memtables`, `block_cache`, `block_cache_pinned`,
    /// `table_readers`), in bytes.
    pub rocksdb_memory: Vec<(&'static str, u64)>,
    /// Memory the queues' in-memory messages hold by kind (`recent`: committed messages kept
    /// until read; `read_ahead`: messages read ahead from RocksDB), in bytes as budgeted.
    pub message_memory: [(&'static str, u64); 2],
    /// Queues whose state is loaded in memory now (the others wait on disk; see `registry`).
    pub queues_loaded: u64,
}

/// The engine's monitoring numbers now. Cheap: a few atomics, one statvfs and a few RocksDB
/// property reads.
pub(super) fn snapshot(engine: &Engine) -> EngineSnapshot {
    let m = &engine.metrics;
    EngineSnapshot {
        commit_batches: m.batches.load(Ordering::Relaxed),
        batch_size: m.batch_size.snapshot(),
        sync_micros: m.sync_micros.snapshot(),
        below_reserve: m.below_reserve.load(Ordering::Relaxed),
        storage_errors: storage_errors(engine),
        reserve_bytes: engine.config.min_free_bytes,
        free_bytes: space::free_bytes(&engine.config.data_dir),
        rocksdb_memory: rocksdb_memory(engine),
        message_memory: [
            ("recent", engine.caches.recent.used() as u64),
            ("read_ahead", engine.caches.ahead.used() as u64),
        ],
        queues_loaded: engine.registry.loaded_count() as u64,
    }
}

/// Reads and writes RocksDB failed, plus its own background errors: a flush or compaction that
/// failed (one reading a damaged block), after which RocksDB refuses every write.
pub(super) fn storage_errors(engine: &Engine) -> u64 {
    let background = engine
        .db
        .property_int_value("rocksdb.background-errors")
        .ok()
        .flatten()
        .unwrap_or(0);
    engine.metrics.storage_errors.load(Ordering::Relaxed) + background
}

fn rocksdb_memory(engine: &Engine) -> Vec<(&'static str, u64)> {
    let cfs = [engine.messages(), engine.meta()];
    let summed = |property: &str| -> u64 {
        cfs.iter()
            .filter_map(|cf| {
                engine
                    .db
                    .property_int_value_cf(*cf, property)
                    .ok()
                    .flatten()
            })
            .sum()
    };
    // The block cache is shared by both column families: read it once.
    let cache = |property: &str| -> u64 {
        engine
            .db
            .property_int_value_cf(engine.messages(), property)
            .ok()
            .flatten()
            .unwrap_or(0)
    };
    vec![
        ("memtables", summed("rocksdb.cur-size-all-mem-tables")),
        ("block_cache", cache("rocksdb.block-cache-usage")),
        (
            "block_cache_pinned",
            cache("rocksdb.block-cache-pinned-usage"),
        ),
        (
            "table_readers",
            summed("rocksdb.estimate-table-readers-mem"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_bounds_inclusive() {
        let h = Histogram::new(&[1, 10]);
        for value in [0, 1, 2, 10, 11, 500] {
            h.observe(value);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(1, 2), (10, 4)]);
        assert_eq!(s.count, 6);
        assert_eq!(s.sum, 524);
    }
}
