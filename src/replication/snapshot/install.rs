//! Installing a received snapshot file on a follower: its raft state first, then its state
//! column families' contents replaced by the file's, beside the raft thread
//! (`super::super::installing`), in an order a crash at any point leaves recoverable:
//!
//! 1. the file is whole and fsynced under its final name (`receive`) before raft-rs sees it;
//! 2. one durable write (`RaftStorage::begin_install`): `S` = (index, term), the log emptied,
//!    the compaction point and commit index at the snapshot. From here the state column
//!    families are not a state of the log, and a start-up that finds `S` installs the file
//!    again before anything reads them (`RaftStorage::open`), keeping the log that followed;
//! 3. the state column families are emptied (range deletes) and the file's records written,
//!    in batches of at most `BATCH_BYTES` (bounded memory, whatever the file's size):
//!    `replace_state`, on a thread of its own;
//! 4. one durable write (`RaftStorage::finish_install`): the applied index and membership read
//!    back from the installed state and checked, `S` deleted;
//! 5. the file is removed once a later fsync is reported (or at the next start).

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use rocksdb::{WriteBatch, WriteOptions, DB};

use super::format::{Reader, STATE_FAMILIES};

/// Records written per RocksDB write while installing.
const BATCH_BYTES: usize = 4 << 20;

/// A write that is on disk when this returns (the WAL is flushed by hand: `manual_wal_flush`).
pub fn write_durably(db: &DB, batch: WriteBatch) -> Result<(), rocksdb::Error> {
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    db.write_opt(batch, &sync)?;
    db.flush_wal(true)
}

/// Tests make the installs into some databases (by path) this much slower, as a large state's is.
#[cfg(test)]
pub static SLOW_FOR_TESTS: std::sync::Mutex<Vec<(std::path::PathBuf, std::time::Duration)>> =
    std::sync::Mutex::new(Vec::new());

/// Step 3: replaces the state column families' contents by the records of the file at `path`;
/// returns how many it wrote.
pub fn replace_state(db: &DB, path: &Path) -> Result<u64, String> {
    #[cfg(test)]
    {
        let slow = SLOW_FOR_TESTS
            .lock()
            .unwrap()
            .iter()
            .find(|(p, _)| p == db.path())
            .map(|s| s.1);
        if let Some(delay) = slow {
            std::thread::sleep(delay);
        }
    }
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut reader = Reader::new(BufReader::with_capacity(1 << 20, file))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let families: Vec<Option<&rocksdb::ColumnFamily>> = STATE_FAMILIES
        .iter()
        .map(|name| db.cf_handle(name))
        .collect();
    let mut clear = WriteBatch::default();
    for cf in families.iter().flatten() {
        let last = db
            .iterator_cf(*cf, rocksdb::IteratorMode::End)
            .next()
            .transpose()
            .map_err(|e| e.to_string())?;
        if let Some((last, _)) = last {
            // Every key sorts before the last one with a zero byte appended.
            let mut end = last.to_vec();
            end.push(0);
            clear.delete_range_cf(*cf, &b""[..], &end[..]);
        }
    }
    db.write(clear).map_err(|e| e.to_string())?;
    let mut batch = WriteBatch::default();
    let mut records = 0;
    while let Some(record) = reader
        .next_record()
        .map_err(|e| format!("{}: {e}", path.display()))?
    {
        let Some(cf) = families[record.family] else {
            return Err(format!(
                "the snapshot holds {}, which this database has not",
                STATE_FAMILIES[record.family]
            ));
        };
        batch.put_cf(cf, &record.key, &record.value);
        records += 1;
        if batch.size_in_bytes() >= BATCH_BYTES {
            db.write(std::mem::take(&mut batch))
                .map_err(|e| e.to_string())?;
        }
    }
    db.write(batch).map_err(|e| e.to_string())?;
    Ok(records)
}
