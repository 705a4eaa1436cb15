//! Writes a new data directory holding everything the damaged one still holds intact, then puts
//! it in the damaged one's place, keeping the damaged one beside it.
//!
//! Why a new directory rather than mending the old one in place: RocksDB offers no way to take
//! one damaged table file out of its file set without reading it. `DeleteFilesInRange` skips
//! level 0 (where a clean stop flushes a queue's messages), `DeleteFile` no longer exists, and a
//! compaction reads every block of its inputs, so it fails on the damaged one and stops the
//! database's writes. Writing the intact data anew needs room for one copy of the live
//! messages (consumed ones are not copied) and leaves no damaged block anywhere.
//!
//! The new directory is made beside the old one (`<dir>.repairing`, so on the same file
//! system), with the same column families in the same order (`store::open`, so their ids, which
//! a replicated log relies on, are unchanged), owner and mode. Then two renames: `<dir>` to
//! `<dir>.damaged-<unix time>`, `<dir>.repairing` to `<dir>`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rocksdb::{IteratorMode, WriteBatch, WriteOptions};

use super::super::store::{self, Db, MemoryBudget, StoreOptions, MESSAGES_CF, META_CF};
use super::survey;

/// Bytes of stored values per write while copying.
const BATCH_BYTES: usize = 4 << 20;

/// A new store being filled; nothing in it is synced until `finish`.
pub struct Copy {
    db: Option<std::sync::Arc<Db>>,
    path: PathBuf,
    batch: WriteBatch,
}

impl Copy {
    /// Creates the new store beside `dir` (an unfinished one left there by an interrupted repair
    /// is removed first).
    pub fn create(dir: &Path) -> Result<Copy, String> {
        let path = sibling(dir, "repairing");
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
        }
        let mut options = StoreOptions::new(MemoryBudget::default());
        // Writes without a WAL (see `write`) are refused while WAL files are recycled.
        options.db.set_recycle_log_file_num(0);
        let recovered = store::open(&path, &options)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(Copy {
            db: Some(recovered.db),
            path,
            batch: WriteBatch::default(),
        })
    }

    /// Adds one key of column family `cf`.
    pub fn put(&mut self, cf: &str, key: &[u8], value: &[u8]) -> Result<(), String> {
        let db = self.db.as_ref().expect("open until finished");
        self.batch
            .put_cf(db.cf_handle(cf).expect("opened"), key, value);
        if self.batch.size_in_bytes() >= BATCH_BYTES {
            self.write()?;
        }
        Ok(())
    }

    fn write(&mut self) -> Result<(), String> {
        let db = self.db.as_ref().expect("open until finished");
        // No WAL: `finish` flushes the memtables to table files, which RocksDB syncs.
        let mut options = WriteOptions::default();
        options.disable_wal(true);
        db.write_opt(std::mem::take(&mut self.batch), &options)
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))
    }

    /// Copies every key of `meta` from `old`, with `records` (name, record) in place of those
    /// queues' records.
    pub fn meta(
        &mut self,
        old: &Db,
        records: &[(Vec<u8>, store::QueueMeta)],
    ) -> Result<(), String> {
        let meta = old.cf_handle(META_CF).expect("meta is always opened");
        for item in old.iterator_cf(meta, IteratorMode::Start) {
            let (key, value) = item.map_err(|e| format!("cannot read the queue records: {e}"))?;
            let replaced = records
                .iter()
                .find(|(name, _)| store::meta_key(name)[..] == key[..]);
            match replaced {
                Some((_, record)) => self.put(META_CF, &key, &record.encode())?,
                None => self.put(META_CF, &key, &value)?,
            }
        }
        Ok(())
    }

    /// Writes what is left, flushes it all to table files, closes the store and puts it in
    /// `dir`'s place. Returns where the damaged directory was moved.
    pub fn finish(mut self, dir: &Path) -> Result<PathBuf, String> {
        self.write()?;
        let db = self.db.take().expect("open until finished");
        store::flush_memtables(&db).map_err(|e| format!("cannot flush the new store: {e}"))?;
        drop(db);
        same_owner_and_mode(dir, &self.path)?;
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let kept = sibling(dir, &format!("damaged-{secs}"));
        std::fs::rename(dir, &kept).map_err(|e| {
            format!(
                "cannot move {} aside: {e}; the repaired store is in {}",
                dir.display(),
                self.path.display()
            )
        })?;
        if let Err(e) = std::fs::rename(&self.path, dir) {
            let _ = std::fs::rename(&kept, dir);
            return Err(format!(
                "cannot move {} to {}: {e}",
                self.path.display(),
                dir.display()
            ));
        }
        if let Some(parent) = dir.parent() {
            let _ = std::fs::File::open(parent).and_then(|d| d.sync_all());
        }
        Ok(kept)
    }
}

impl Drop for Copy {
    /// An unfinished copy is removed.
    fn drop(&mut self) {
        if let Some(db) = self.db.take() {
            drop(db);
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Copies the intact messages of every queue into `copy`, and the records (those of queues
/// that lost messages with their byte count corrected). The queues as surveyed while copying.
pub fn copy_all(
    old: &Db,
    records: &[(Vec<u8>, store::QueueMeta)],
    copy: &mut Copy,
) -> Result<Vec<survey::Queue>, String> {
    let mut queues = Vec::with_capacity(records.len());
    let mut corrected = Vec::new();
    for (name, record) in records {
        let mut keep = |key: &[u8], value: &[u8]| copy.put(MESSAGES_CF, key, value);
        let queue = survey::queue(old, name, record, &mut keep)?;
        if !queue.lost.is_empty() {
            corrected.push((name.clone(), without_lost(record, &queue)));
        }
        queues.push(queue);
    }
    copy.meta(old, &corrected)?;
    Ok(queues)
}

/// `record` once `queue.lost` are dropped: its bytes those kept; the lost messages that were
/// open or given back no longer pending, and those at its head (where its readers stopped)
/// behind it. Lost messages further on stay counted until a read passes them, as messages
/// swept by expiry are after a restart: a record has no place for gaps.
fn without_lost(record: &store::QueueMeta, queue: &survey::Queue) -> store::QueueMeta {
    let lost = |seq: &u64| queue.lost.binary_search(seq).is_ok();
    let mut record = record.clone();
    record.counters.bytes = queue.intact_bytes;
    record.pending.retain(|seq| !lost(seq));
    while lost(&record.next_unclaimed) {
        record.next_unclaimed += 1;
    }
    record
}

/// `<dir>.<suffix>`, beside `dir`.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}

/// Gives `new` and its files `dir`'s owner (when run as root for a server running as another
/// user) and `new` itself `dir`'s mode.
fn same_owner_and_mode(dir: &Path, new: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let fail = |path: &Path, e: std::io::Error| format!("{}: {e}", path.display());
    std::fs::set_permissions(new, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(|e| fail(new, e))?;
    // SAFETY: getuid has no failure mode and reads nothing of ours.
    if meta.uid() == unsafe { libc::getuid() } {
        return Ok(());
    }
    let (uid, gid) = (Some(meta.uid()), Some(meta.gid()));
    std::os::unix::fs::chown(new, uid, gid).map_err(|e| fail(new, e))?;
    for entry in std::fs::read_dir(new).map_err(|e| fail(new, e))? {
        let path = entry.map_err(|e| fail(new, e))?.path();
        std::os::unix::fs::chown(&path, uid, gid).map_err(|e| fail(&path, e))?;
    }
    Ok(())
}
