//! What a data directory still holds: every queue's record, and for each queue which of its
//! messages (those a read could still be handed: open or given back, then from the head to the
//! tail) RocksDB can read with their checksums verified, and which it cannot.
//!
//! Messages are read one point lookup each, not by a scan: a scan stops at the first damaged
//! block, while a lookup of a key past it reads that key's block only, so every intact message
//! behind the damage is found. A lookup that fails with anything but `Corruption` (an I/O
//! error) is not damage the repair may drop: the survey stops with an error instead.

use rocksdb::{ErrorKind, IteratorMode};

use super::super::message;
use super::super::store::{self, Db, QueueMeta, MESSAGES_CF, META_CF};

/// What is handed each intact message read (its key and stored value), to copy it.
pub type Keep<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), String> + 'a;

/// One queue's record and what its messages look like.
pub struct Queue {
    pub name: Vec<u8>,
    /// Sequence numbers of the messages that cannot be read, ascending.
    pub lost: Vec<u64>,
    /// Messages read intact.
    pub intact: u64,
    /// Their body bytes (what the queue's record counts).
    pub intact_bytes: u64,
    /// The table files the failed reads named, in the order met.
    pub damaged_files: Vec<String>,
}

/// Every queue's name and record, in name order. An unreadable `meta` column family, or a
/// record this version cannot decode, is not something the repair can fix (it would not know
/// which messages are live).
pub fn records(db: &Db) -> Result<Vec<(Vec<u8>, QueueMeta)>, String> {
    let meta = db.cf_handle(META_CF).expect("meta is always opened");
    let mut out = Vec::new();
    for item in db.prefix_iterator_cf(meta, store::meta_key(b"")) {
        let (key, value) = item.map_err(|e| {
            format!("cannot read the queue records: {e}; mqd repair only drops damaged messages")
        })?;
        let Some(name) = key.strip_prefix(&store::meta_key(b"")[..]) else {
            break;
        };
        // The server skips such a record (`store::scan`), but it may be a newer version's: its
        // messages must not be left out of a copy.
        let record = QueueMeta::decode(&value).ok_or_else(|| {
            format!(
                "the record of queue {:?} is not one this mqd reads (written by a newer \
                 version?); nothing was changed",
                String::from_utf8_lossy(name)
            )
        })?;
        out.push((name.to_vec(), record));
    }
    Ok(out)
}

/// Reads every message of queue `name` a read could be handed, handing each intact one
/// (key, stored value) to `keep`.
pub fn queue(
    db: &Db,
    name: &[u8],
    record: &QueueMeta,
    keep: &mut Keep<'_>,
) -> Result<Queue, String> {
    let messages = db
        .cf_handle(MESSAGES_CF)
        .expect("messages is always opened");
    let mut queue = Queue {
        name: name.to_vec(),
        lost: Vec::new(),
        intact: 0,
        intact_bytes: 0,
        damaged_files: Vec::new(),
    };
    let live = record
        .pending
        .iter()
        .copied()
        .chain(record.next_unclaimed..record.tail);
    for seq in live {
        let key = store::message_key(record.id, seq);
        match db.get_pinned_cf(messages, key) {
            Ok(Some(value)) => {
                queue.intact += 1;
                if let Some((_, body)) = message::decode(&value) {
                    queue.intact_bytes += body.len() as u64;
                }
                keep(&key, &value)?;
            }
            // Gone (taken just before a crash): the server skips it too.
            Ok(None) => {}
            Err(e) if e.kind() == ErrorKind::Corruption => {
                queue.lost.push(seq);
                if let Some(file) = damaged_file(&e) {
                    if !queue.damaged_files.contains(&file) {
                        queue.damaged_files.push(file);
                    }
                }
            }
            Err(e) => {
                return Err(format!(
                    "cannot read message {seq} of queue {:?}: {e}; that is not damage mqd \
                     repair drops",
                    String::from_utf8_lossy(name)
                ))
            }
        }
    }
    queue.lost.sort_unstable();
    Ok(queue)
}

/// Whether every block of `cf` reads back with its checksum, found by a scan of all of it:
/// damage outside the queues' messages (in consumed messages not yet compacted away) loses
/// nothing, but the next compaction reading it would fail and stop the server's writes.
pub fn readable(db: &Db, cf: &str) -> Result<bool, String> {
    let handle = db
        .cf_handle(cf)
        .expect("the column families are always opened");
    for item in db.iterator_cf(handle, IteratorMode::Start) {
        match item {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Corruption => return Ok(false),
            Err(e) => return Err(format!("cannot read {cf}: {e}")),
        }
    }
    Ok(true)
}

/// The table file a corruption error names (RocksDB's text says `in <path>.sst offset ...`).
fn damaged_file(error: &rocksdb::Error) -> Option<String> {
    let text = error.to_string();
    let path = text
        .split_whitespace()
        .find(|word| word.ends_with(".sst"))?;
    Some(path.rsplit('/').next().unwrap_or(path).to_string())
}
