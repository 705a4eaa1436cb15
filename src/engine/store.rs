//! The RocksDB layout: a `messages` column family whose keys are the queue's id then the message's
//! sequence number, both big-endian u64, so RocksDB's order is FIFO order within each queue and a
//! read is one point lookup; and a `meta` column family with one record per queue holding what
//! must survive a restart (name, head, tail, counters, the messages that were open or given
//! back, when its next message may expire), plus an index of those expiry times, so that the
//! sweep reads only the queues with something due (`expiry_key`). Start-up reads only the
//! records, and keeps none of them: a queue is loaded when used (`super::registry`).
//!
//! Why not a column family per queue: RocksDB rewrites its whole OPTIONS file (about 5.7 KB per
//! column family) and syncs it on every column family created or dropped, so creating the Nth
//! queue costs O(N) and 10,000 queues would write hundreds of GB; measured here, 585 queues took
//! 55 s to create. Each column family also flushes on its own, into tiny SST files. A key prefix
//! costs nothing per queue, and a queue is deleted with one range tombstone.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType,
    Options, WriteBatch, WriteBufferManager,
};

use super::queue::{Counters, QueueState};

pub type Db = rocksdb::DB;

pub const MESSAGES_CF: &str = "messages";
pub const META_CF: &str = "meta";
/// The replicated log's column family (`crate::replication`'s; empty without `--cluster`).
/// Opened third, after `messages` and `meta`, on every node: a replicated entry is a RocksDB
/// write batch, whose records name column families by id, so the ids must agree everywhere.
pub const RAFT_LOG_CF: &str = "raft_log";
/// Prefix of a queue record's key in `meta`; the queue name follows.
const QUEUE_PREFIX: u8 = b'Q';
/// Key in `meta` of the next unused queue id.
pub const NEXT_ID_KEY: &[u8] = b"N";
/// Prefix of an expiry index key in `meta`: the time a queue's next message may expire, then
/// the queue's id, both big-endian u64 (so the keys sort by time); the value is its name.
const EXPIRY_PREFIX: u8 = b'E';
/// Key in `meta` that priming the WAL writes so that a flush has something to flush
/// (`wal_prime`); its value is empty and nothing reads it.
pub const WAL_PRIMED_KEY: &[u8] = b"W";
/// Memtable size of `messages`: a WAL file holds about this much when a flush retires it.
pub const MESSAGES_WRITE_BUFFER: usize = 64 << 20;

/// Memory RocksDB may use, shared by every column family so that many queues stay cheap.
#[derive(Clone, Copy, Debug)]
pub struct MemoryBudget {
    /// All memtables together.
    pub write_buffers: usize,
    /// The shared block cache.
    pub block_cache: usize,
}

impl Default for MemoryBudget {
    fn default() -> Self {
        MemoryBudget {
            write_buffers: 128 << 20,
            block_cache: 64 << 20,
        }
    }
}

/// Options shared by the database and every column family.
pub struct StoreOptions {
    pub db: Options,
    pub messages_cf: Options,
    pub meta_cf: Options,
    pub raft_log_cf: Options,
}

impl StoreOptions {
    pub fn new(budget: MemoryBudget) -> StoreOptions {
        let cache = Cache::new_lru_cache(budget.block_cache);
        // Writers stall while the memtables hold more than their budget, waiting for a flush:
        // without that, three 64 MB memtables of `messages` plus `meta`'s could all be full at
        // once during a long fill, well past the budget.
        let write_buffers =
            WriteBufferManager::new_write_buffer_manager(budget.write_buffers, true);

        let mut db = Options::default();
        db.create_if_missing(true);
        db.create_missing_column_families(true);
        db.set_write_buffer_manager(&write_buffers);
        db.set_db_write_buffer_size(budget.write_buffers);
        // With many column families, a rarely written one would pin old WAL files forever;
        // this bound makes RocksDB flush it instead.
        db.set_max_total_wal_size(256 << 20);
        // Every flush flushes `meta` with `messages`: `meta` is written by every commit but fills
        // its memtable slowly, so flushed alone it kept every WAL file since its last flush
        // alive, up to the bound above, and a restart replayed them all (570 ms of a 790 ms
        // restart after a 2-million-message drain).
        db.set_atomic_flush(true);
        db.set_max_background_jobs(2);
        // Reusing WAL files means an fdatasync need not also journal a grown file size (see
        // `wal_prime`).
        db.set_recycle_log_file_num(4);
        db.set_max_open_files(512);
        db.set_keep_log_file_num(4);
        db.set_avoid_unnecessary_blocking_io(true);

        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        // Index and filter blocks live in the block cache, so their memory is bounded by it
        // instead of growing with the backlog (10 million 1 KB messages have 50 MB of them). And
        // they are partitioned: a get loads only the few-KB partitions covering its key (a drain
        // reads near the queue's head, so those stay cached), never a whole table's index or
        // filter, which a cache too small to hold every table's would reload on every get. Each
        // table's top level is pinned (a few KB), and so are L0 tables' blocks: every get checks
        // each L0 table, and there are few.
        table.set_cache_index_and_filter_blocks(true);
        table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_pin_top_level_index_and_filter(true);

        let mut messages_cf = Options::default();
        messages_cf.set_block_based_table_factory(&table);
        // Flushes write L0 uncompressed: messages are often consumed before their file leaves
        // L0, and LZ4 over bodies that do not compress was 9% of the server's instructions
        // on a busy queue with a backlog. Compaction output, where a long backlog lives, is
        // compressed.
        messages_cf.set_compression_per_level(&[DBCompressionType::None, DBCompressionType::Lz4]);
        messages_cf.set_write_buffer_size(MESSAGES_WRITE_BUFFER);
        messages_cf.set_max_write_buffer_number(3);

        let mut meta_cf = messages_cf.clone();
        meta_cf.set_write_buffer_size(16 << 20);
        // A read asks for a message that exists (the queue's head), so a filter only ever says
        // "maybe": the last level, which holds most messages, is built without one.
        messages_cf.set_optimize_filters_for_hits(true);
        // The raft log (cluster mode only) carries every write a second time. Its memtable is as
        // large as `messages`' because flushes are atomic: a 16 MB one filled four times as fast
        // and flushed `messages` with it each time, four times the flushes and L0 files of one
        // node. And it is never compressed: its entries live seconds (log compaction removes
        // them), and LZ4 over message bodies on their way to deletion was the largest part of a
        // member's compaction work. (Measured, issue 22, 20 s of pipelined replicated sets:
        // +6-10% sets/s, CPU per set -6-7% on every member; docs/replication.md.)
        let mut raft_log_cf = meta_cf.clone();
        raft_log_cf.set_write_buffer_size(MESSAGES_WRITE_BUFFER);
        raft_log_cf.set_compression_type(DBCompressionType::None);
        raft_log_cf.set_compression_per_level(&[DBCompressionType::None]);

        StoreOptions {
            db,
            messages_cf,
            meta_cf,
            raft_log_cf,
        }
    }
}

/// Writes every memtable to a table file, as a clean shutdown's last step, so that the next
/// start-up has no WAL to replay (up to the write-buffer budget, 128 MB: about half a second).
pub fn flush_memtables(db: &Db) -> Result<(), rocksdb::Error> {
    let cfs = [MESSAGES_CF, META_CF, RAFT_LOG_CF].map(|name| {
        db.cf_handle(name)
            .expect("the column families are always opened")
    });
    db.flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())
}

/// The ids RocksDB gave `messages`, `meta` and `raft_log` in this database. A replicated entry
/// is a write batch naming column families by id, so every node must have the same ones
/// (`EXPECTED_CF_IDS`: the default family is 0, the others follow in their fixed order). Read
/// off a write batch's representation, whose records of another family than the default start
/// with a type byte then the family's id (a varint32).
pub fn column_family_ids(db: &Db) -> Vec<Option<u32>> {
    [MESSAGES_CF, META_CF, RAFT_LOG_CF]
        .iter()
        .map(|name| {
            let cf = db.cf_handle(name)?;
            let mut batch = WriteBatch::default();
            batch.put_cf(cf, b"", b"");
            decode_varint32(batch.data().get(13..)?)
        })
        .collect()
}

/// The column family ids every node's database must have (see `column_family_ids`).
pub const EXPECTED_CF_IDS: [u32; 3] = [1, 2, 3];

fn decode_varint32(bytes: &[u8]) -> Option<u32> {
    let mut value = 0u32;
    for (i, byte) in bytes.iter().take(5).enumerate() {
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Where message `seq` of queue `id` is stored.
pub fn message_key(id: u64, seq: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&id.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The sequence number of a message key (`message_key`).
pub fn message_seq(key: &[u8]) -> u64 {
    let mut seq = [0; 8];
    seq.copy_from_slice(&key[8..16]);
    u64::from_be_bytes(seq)
}

pub fn meta_key(name: &[u8]) -> Vec<u8> {
    let mut key = Vec::new();
    meta_key_into(&mut key, name);
    key
}

/// `meta_key` into a reused buffer (replacing what it held).
pub fn meta_key_into(key: &mut Vec<u8>, name: &[u8]) {
    key.clear();
    key.reserve(1 + name.len());
    key.push(QUEUE_PREFIX);
    key.extend_from_slice(name);
}

/// A queue's durable record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueMeta {
    pub id: u64,
    /// `QueueState::next_unclaimed` (stored second, where older versions called it head).
    pub next_unclaimed: u64,
    pub tail: u64,
    pub counters: Counters,
    /// Sequence numbers below `next_unclaimed` still in the queue (open or given back), ascending.
    pub pending: Vec<u64>,
    /// Every consumed message below this has had its key deleted (`QueueState::deleted_below`).
    pub deleted_below: u64,
    /// When the queue's next message may expire (unix ms, 0: none), as its expiry index key
    /// says (`QueueState::next_expiry`).
    pub next_expiry: u64,
}

/// Version 1 records (mqd before queues were unloaded) end after the pending messages; version
/// 2 adds `deleted_below` and `next_expiry`.
const META_VERSION_1: u8 = 1;
const META_VERSION: u8 = 2;

impl QueueMeta {
    /// What the committer writes for `queue`, given the tail its batch commits.
    pub fn of(queue: &QueueState, tail: u64) -> QueueMeta {
        QueueMeta {
            id: queue.id(),
            next_unclaimed: queue.next_unclaimed(),
            tail,
            counters: queue.counters(),
            pending: queue.pending(),
            deleted_below: queue.deleted_below(),
            next_expiry: queue.next_expiry(),
        }
    }

    /// Messages a read could be handed (open ones aside).
    pub fn items(&self) -> u64 {
        self.tail.saturating_sub(self.next_unclaimed) + self.pending.len() as u64
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// `encode` into a reused buffer (replacing what it held).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        out.reserve(1 + 10 * 8 + 8 * self.pending.len());
        out.push(META_VERSION);
        for n in [
            self.id,
            self.next_unclaimed,
            self.tail,
            self.counters.expired,
            self.counters.discarded,
            self.counters.flushes,
            self.counters.bytes,
            self.pending.len() as u64,
        ] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        for seq in &self.pending {
            out.extend_from_slice(&seq.to_be_bytes());
        }
        out.extend_from_slice(&self.deleted_below.to_be_bytes());
        out.extend_from_slice(&self.next_expiry.to_be_bytes());
    }

    /// A record of either version. A version 1 record does not say when its messages expire:
    /// one holding messages is due for a sweep at once (`next_expiry` 1), which finds out.
    pub fn decode(bytes: &[u8]) -> Option<QueueMeta> {
        let (&version, rest) = bytes.split_first()?;
        if !(version == META_VERSION || version == META_VERSION_1) || rest.len() % 8 != 0 {
            return None;
        }
        let numbers: Vec<u64> = rest
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect();
        let (fixed, rest) = numbers.split_at_checked(8)?;
        let (pending, extra) = rest.split_at_checked(fixed[7] as usize)?;
        let mut record = QueueMeta {
            id: fixed[0],
            next_unclaimed: fixed[1],
            tail: fixed[2],
            counters: Counters {
                expired: fixed[3],
                discarded: fixed[4],
                flushes: fixed[5],
                bytes: fixed[6],
            },
            pending: pending.to_vec(),
            deleted_below: 0,
            next_expiry: 0,
        };
        match (version, extra) {
            (META_VERSION_1, []) => {
                record.next_expiry = u64::from(record.items() > 0);
            }
            (META_VERSION, &[deleted_below, next_expiry]) => {
                record.deleted_below = deleted_below;
                record.next_expiry = next_expiry;
            }
            _ => return None,
        }
        Some(record)
    }

    /// Whether this record was written by a version before 2 (start-up upgrades it).
    fn is_version_1(bytes: &[u8]) -> bool {
        bytes.first() == Some(&META_VERSION_1)
    }
}

/// The expiry index key saying that queue `id` has a message that may expire at `at`.
pub fn expiry_key(at: u64, id: u64) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = EXPIRY_PREFIX;
    key[1..9].copy_from_slice(&at.to_be_bytes());
    key[9..].copy_from_slice(&id.to_be_bytes());
    key
}

/// The time and queue id of an expiry index key.
pub fn parse_expiry_key(key: &[u8]) -> Option<(u64, u64)> {
    if key.len() != 17 || key[0] != EXPIRY_PREFIX {
        return None;
    }
    let at = u64::from_be_bytes(key[1..9].try_into().ok()?);
    let id = u64::from_be_bytes(key[9..].try_into().ok()?);
    Some((at, id))
}

/// Queue `name`'s record, if it has one.
pub fn read_record(db: &Db, name: &[u8]) -> Result<Option<QueueMeta>, rocksdb::Error> {
    let meta = db.cf_handle(META_CF).expect("meta is always opened");
    let Some(bytes) = db.get_pinned_cf(meta, meta_key(name))? else {
        return Ok(None);
    };
    match QueueMeta::decode(&bytes) {
        Some(record) => Ok(Some(record)),
        None => {
            log::error!(
                "unreadable record of queue {:?}: ignored",
                String::from_utf8_lossy(name)
            );
            Ok(None)
        }
    }
}

/// Every queue's name and record, in name order.
pub fn records(db: &Db) -> impl Iterator<Item = (Vec<u8>, QueueMeta)> + '_ {
    let meta = db.cf_handle(META_CF).expect("meta is always opened");
    db.prefix_iterator_cf(meta, [QUEUE_PREFIX])
        .map_while(Result::ok)
        .take_while(|(key, _)| key.first() == Some(&QUEUE_PREFIX))
        .filter_map(|(key, value)| Some((key[1..].to_vec(), QueueMeta::decode(&value)?)))
}

/// The expiry index entries due at or before `now`, oldest first: (time, queue id, name).
pub fn due_expiries(db: &Db, now: u64, most: usize) -> Vec<(u64, u64, Vec<u8>)> {
    let meta = db.cf_handle(META_CF).expect("meta is always opened");
    let mut options = rocksdb::ReadOptions::default();
    options.set_iterate_upper_bound(expiry_key(now.saturating_add(1), 0).to_vec());
    let first = [EXPIRY_PREFIX];
    let mode = rocksdb::IteratorMode::From(&first, rocksdb::Direction::Forward);
    db.iterator_cf_opt(meta, options, mode)
        .map_while(Result::ok)
        .filter_map(|(key, name)| {
            let (at, id) = parse_expiry_key(&key)?;
            Some((at, id, name.to_vec()))
        })
        .take(most)
        .collect()
}

/// What recovery found on disk.
pub struct Recovered {
    /// Shared with the raft thread under `--cluster` (its log is in `RAFT_LOG_CF`).
    pub db: Arc<Db>,
    /// How many queues have a record.
    pub queues: u64,
    /// Names of the queues with a `+` in their name (fan-out queues).
    pub fanout: Vec<Vec<u8>>,
    /// Larger than every queue id ever used in this directory.
    pub next_queue_id: u64,
}

/// Records rewritten at start-up per write (orphans removed, version 1 upgraded).
const RECOVERY_BATCH: usize = 4096;

/// Opens (or creates) the store at `path` and reads every queue's record once: it counts them,
/// deletes messages consumed before a crash but never deleted (`remove_orphans`), and gives
/// version 1 records their expiry index entry. No queue is kept in memory.
pub fn open(path: &Path, options: &StoreOptions) -> Result<Recovered, rocksdb::Error> {
    let descriptors = [
        ColumnFamilyDescriptor::new(MESSAGES_CF, options.messages_cf.clone()),
        ColumnFamilyDescriptor::new(META_CF, options.meta_cf.clone()),
        // Last: a directory made before it existed gets it with the next id, as a new one does.
        ColumnFamilyDescriptor::new(RAFT_LOG_CF, options.raft_log_cf.clone()),
    ];
    let db = Arc::new(Db::open_cf_descriptors(&options.db, path, descriptors)?);
    let found = scan(&db)?;
    Ok(Recovered {
        db,
        queues: found.queues,
        fanout: found.fanout,
        next_queue_id: found.next_queue_id,
    })
}

/// What `scan` counted.
pub struct Found {
    pub queues: u64,
    pub fanout: Vec<Vec<u8>>,
    pub next_queue_id: u64,
}

/// Reads every queue's record once (see `open`), rewriting those that need it.
pub fn scan(db: &Db) -> Result<Found, rocksdb::Error> {
    let meta = db
        .cf_handle(META_CF)
        .expect("meta column family is always opened");
    let messages = db
        .cf_handle(MESSAGES_CF)
        .expect("messages column family is always opened");
    let mut next_queue_id = match db.get_cf(meta, NEXT_ID_KEY)? {
        Some(bytes) if bytes.len() == 8 => u64::from_be_bytes(bytes[..].try_into().unwrap()),
        _ => 1,
    };
    let mut queues = 0;
    let mut fanout = Vec::new();
    let mut batch = WriteBatch::default();
    let mut rewritten = 0;
    let mut encoded = Vec::new();
    for item in db.prefix_iterator_cf(meta, [QUEUE_PREFIX]) {
        let (key, value) = item?;
        if key.first() != Some(&QUEUE_PREFIX) {
            break;
        }
        let name = &key[1..];
        let Some(mut record) = QueueMeta::decode(&value) else {
            log::error!(
                "unreadable record of queue {:?}: skipped",
                String::from_utf8_lossy(name)
            );
            continue;
        };
        queues += 1;
        next_queue_id = next_queue_id.max(record.id + 1);
        if name.contains(&b'+') {
            fanout.push(name.to_vec());
        }
        let orphans = record.deleted_below < record.next_unclaimed;
        let upgrade = QueueMeta::is_version_1(&value);
        if !orphans && !upgrade {
            continue;
        }
        if orphans {
            record.deleted_below =
                remove_orphans(&mut batch, &messages, &record, record.deleted_below);
        }
        if upgrade && record.next_expiry != 0 {
            batch.put_cf(meta, expiry_key(record.next_expiry, record.id), name);
        }
        record.encode_into(&mut encoded);
        batch.put_cf(meta, &key, &encoded);
        rewritten += 1;
        if rewritten % RECOVERY_BATCH == 0 {
            db.write(std::mem::take(&mut batch))?;
        }
    }
    if !batch.is_empty() {
        db.write(batch)?;
    }
    Ok(Found {
        queues,
        fanout,
        next_queue_id,
    })
}

/// Deletes the keys of a queue's messages from `from` up to its head that are not pending:
/// messages consumed since the reclaimer last had them deleted, and those taken just before a
/// crash whose record (head past them) reached the disk. With range tombstones over the gaps
/// between pending messages rather than a scan: below the head may lie millions of consumed
/// messages or their tombstones (a scan took 920 ms of a 1.26 s restart after a long drain), and
/// a start-up must cost per queue, not per message. Returns where the deletes end.
fn remove_orphans(
    batch: &mut WriteBatch,
    messages: &impl rocksdb::AsColumnFamilyRef,
    record: &QueueMeta,
    from: u64,
) -> u64 {
    delete_consumed(batch, messages, record, from, usize::MAX)
}

/// Runs of consumed messages up to this long are deleted key by key, not with a range tombstone:
/// every read of the memtable checks its range tombstones, and a client draining a million
/// one-message queues left a million of them there (the drain slowed as they piled up).
const POINT_DELETES_UP_TO: u64 = 16;

/// Adds to `batch` range tombstones (point deletes for short runs) over the keys of `record`'s queue from `from` up to its
/// `next_unclaimed` that are not pending (open or given back): messages consumed from the head,
/// which no read looks at again (reads start at `next_unclaimed`, and look up pending messages
/// by key). At most `most_ranges` ranges: a queue with many pending messages scattered through
/// the range stops at one of them. Returns where it stopped: every key below it that was not
/// pending is covered.
pub fn delete_consumed(
    batch: &mut WriteBatch,
    messages: &impl rocksdb::AsColumnFamilyRef,
    record: &QueueMeta,
    from: u64,
    most_ranges: usize,
) -> u64 {
    let mut ranges = consumed_ranges(record, from);
    for _ in 0..most_ranges {
        let Some((start, end)) = ranges.next() else {
            return record.next_unclaimed.max(from);
        };
        if end - start <= POINT_DELETES_UP_TO {
            for seq in start..end {
                batch.delete_cf(messages, message_key(record.id, seq));
            }
        } else {
            batch.delete_range_cf(
                messages,
                message_key(record.id, start),
                message_key(record.id, end),
            );
        }
    }
    match ranges.next() {
        Some((start, _)) => start,
        None => record.next_unclaimed.max(from),
    }
}

/// The runs of consumed sequence numbers of `record`'s queue from `from` up to its
/// `next_unclaimed`, as `[start, end)`: the gaps between its pending messages.
pub fn consumed_ranges(record: &QueueMeta, from: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
    let mut from = from;
    record
        .pending
        .iter()
        .chain([&record.next_unclaimed])
        .filter_map(move |&seq| {
            let range = (seq > from).then_some((from, seq));
            from = from.max(seq.saturating_add(1));
            range
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumed_ranges_are_the_gaps_between_pending_messages() {
        let record = QueueMeta {
            id: 1,
            next_unclaimed: 10,
            tail: 12,
            counters: Counters::default(),
            pending: vec![3, 4, 8],
            deleted_below: 0,
            next_expiry: 0,
        };
        let ranges = |from| consumed_ranges(&record, from).collect::<Vec<_>>();
        assert_eq!(ranges(0), [(0, 3), (5, 8), (9, 10)]);
        assert_eq!(ranges(4), [(5, 8), (9, 10)]);
        assert_eq!(ranges(9), [(9, 10)]);
        assert_eq!(ranges(10), []);
    }

    #[test]
    fn meta_round_trips() {
        let meta = QueueMeta {
            id: 3,
            next_unclaimed: 10,
            tail: 20,
            counters: Counters {
                expired: 1,
                discarded: 2,
                flushes: 3,
                bytes: 4,
            },
            pending: vec![7, 9],
            deleted_below: 5,
            next_expiry: 1_700_000_000_000,
        };
        assert_eq!(QueueMeta::decode(&meta.encode()), Some(meta));
        assert_eq!(QueueMeta::decode(b"\x01short"), None);
    }

    #[test]
    fn a_version_1_record_holding_messages_is_due_for_a_sweep() {
        let mut v1 = vec![1u8];
        for n in [3u64, 10, 20, 1, 2, 3, 4, 1, 7] {
            v1.extend_from_slice(&n.to_be_bytes());
        }
        let record = QueueMeta::decode(&v1).unwrap();
        assert_eq!((record.next_unclaimed, record.tail), (10, 20));
        assert_eq!(record.pending, [7]);
        assert_eq!((record.deleted_below, record.next_expiry), (0, 1));
        assert!(QueueMeta::is_version_1(&v1));
        v1.extend_from_slice(&[0; 8]);
        assert_eq!(QueueMeta::decode(&v1), None, "trailing bytes");
    }

    #[test]
    fn expiry_keys_sort_by_time_then_queue() {
        let mut keys = vec![expiry_key(5, 1), expiry_key(3, 9), expiry_key(5, 0)];
        keys.sort();
        assert_eq!(keys, [expiry_key(3, 9), expiry_key(5, 0), expiry_key(5, 1)]);
        assert_eq!(parse_expiry_key(&expiry_key(3, 9)), Some((3, 9)));
        assert_eq!(parse_expiry_key(b"Qname"), None);
    }

    #[test]
    fn message_keys_sort_by_queue_then_sequence() {
        let mut keys = vec![
            message_key(2, 0),
            message_key(1, 256),
            message_key(1, 1),
            message_key(1, u64::MAX),
        ];
        keys.sort();
        assert_eq!(
            keys,
            vec![
                message_key(1, 1),
                message_key(1, 256),
                message_key(1, u64::MAX),
                message_key(2, 0)
            ]
        );
    }
}
