//! `mqd repair`: with the server stopped, drops exactly the messages RocksDB can no longer read
//! (a table file's block failing its checksum: a flipped bit, a bad sector) and names each, so
//! that the queues holding them go on. The counterpart of `redis-check-aof --fix` and
//! PostgreSQL's `zero_damaged_pages`, as an explicit, offline step: the server itself never
//! drops or serves a damaged message (a read of one fails with a storage error every time,
//! counted in `storage_errors`).
//!
//! The damaged directory is opened read-only and surveyed (`survey`): every queue's messages,
//! one point lookup each, so every intact message behind a damaged block is found. A dry run
//! stops there and reports. A repair writes a new directory holding every intact message and
//! every record, and puts it in the damaged one's place, keeping the damaged one beside it
//! (`rebuild`, which says why RocksDB's own file deletion cannot do it in place). A directory
//! with nothing damaged is left as it is.
//!
//! Not repaired, with an error and nothing changed: damage in the queue records (`meta`), I/O
//! errors other than checksum mismatches, a directory a server has open (`lock`), and a cluster
//! member's directory (its raft log: a member must not drop what its peers hold; start it on an
//! empty directory instead).

pub mod lock;
mod rebuild;
mod survey;

use std::path::{Path, PathBuf};

use super::store::{self, MemoryBudget, StoreOptions, MESSAGES_CF, RAFT_LOG_CF};

/// What was found, and done.
pub struct Report {
    /// Queues surveyed.
    pub queues: u64,
    /// Messages of those queues read intact.
    pub intact: u64,
    /// Per queue that has any, the messages that cannot be read: (name, sequence numbers).
    pub lost: Vec<(Vec<u8>, Vec<u64>)>,
    /// Table files the failed reads named (`000123.sst`).
    pub damaged_files: Vec<String>,
    /// Damage found outside the queues' messages (in consumed messages not yet compacted away):
    /// nothing is lost, but a compaction would trip over it.
    pub damage_elsewhere: bool,
    pub outcome: Outcome,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing damaged: nothing changed.
    Clean,
    /// A dry run found damage: nothing changed.
    WouldRepair,
    /// The directory was rewritten; the damaged one was moved here.
    Repaired { damaged_kept_in: PathBuf },
}

impl Report {
    pub fn lost_count(&self) -> u64 {
        self.lost.iter().map(|(_, seqs)| seqs.len() as u64).sum()
    }
}

/// Surveys the data directory `dir` (the server stopped) and, unless `dry_run`, repairs it.
pub fn run(dir: &Path, dry_run: bool) -> Result<Report, String> {
    let dir = data_dir(dir)?;
    let _lock = lock::hold(&dir)?;
    let options = StoreOptions::new(MemoryBudget::default());
    let descriptors = [
        (MESSAGES_CF, &options.messages_cf),
        (store::META_CF, &options.meta_cf),
        (RAFT_LOG_CF, &options.raft_log_cf),
    ]
    .map(|(name, cf)| rocksdb::ColumnFamilyDescriptor::new(name, cf.clone()));
    let old = store::Db::open_cf_descriptors_read_only(&options.db, &dir, descriptors, false)
        .map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
    refuse_cluster_member(&old, &dir)?;
    let records = survey::records(&old)?;

    let mut queues = Vec::with_capacity(records.len());
    for (name, record) in &records {
        queues.push(survey::queue(&old, name, record, &mut |_, _| Ok(()))?);
    }
    // A scan of all messages stops at the first damaged block, wherever it is: it can tell
    // damage outside the queues' messages only where they have none.
    let lost_any = queues.iter().any(|q| !q.lost.is_empty());
    let damage_elsewhere = !lost_any && !survey::readable(&old, MESSAGES_CF)?;
    let mut report = summarize(&queues, damage_elsewhere);
    if report.lost.is_empty() && !damage_elsewhere {
        return Ok(report);
    }
    if dry_run {
        report.outcome = Outcome::WouldRepair;
        return Ok(report);
    }
    let mut copy = rebuild::Copy::create(&dir)?;
    let copied = rebuild::copy_all(&old, &records, &mut copy)?;
    drop(old);
    let again = summarize_lost(&copied);
    if again != report.lost {
        // Reads that worked a moment ago now fail, or the other way round: not a steady
        // damaged block. Nothing is replaced.
        return Err(
            "the damage changed while it was copied around (failing disk?): nothing \
                    was changed; copy the directory elsewhere and repair the copy"
                .into(),
        );
    }
    let kept = copy.finish(&dir)?;
    report.outcome = Outcome::Repaired {
        damaged_kept_in: kept,
    };
    Ok(report)
}

/// `dir` as a real path (a symlink followed, so the renames act on the directory itself), if it
/// is an mqd data directory.
fn data_dir(dir: &Path) -> Result<PathBuf, String> {
    let real = std::fs::canonicalize(dir);
    match real {
        Ok(real) if real.join("CURRENT").is_file() => Ok(real),
        _ => Err(format!("no mqd data directory at {}", dir.display())),
    }
}

fn refuse_cluster_member(db: &store::Db, dir: &Path) -> Result<(), String> {
    let raft_log = db
        .cf_handle(RAFT_LOG_CF)
        .expect("raft_log is always opened");
    match db
        .iterator_cf(raft_log, rocksdb::IteratorMode::Start)
        .next()
    {
        None => Ok(()),
        Some(Err(e)) => Err(format!("cannot read the raft log: {e}")),
        Some(Ok(_)) => Err(format!(
            "{} belongs to a cluster member (it holds a raft log): dropping messages there \
             would make it differ from its peers; start the member on an empty directory instead",
            dir.display()
        )),
    }
}

fn summarize(queues: &[survey::Queue], damage_elsewhere: bool) -> Report {
    let lost = summarize_lost(queues);
    let mut damaged_files: Vec<String> = queues
        .iter()
        .flat_map(|q| q.damaged_files.iter().cloned())
        .collect();
    damaged_files.sort();
    damaged_files.dedup();
    Report {
        queues: queues.len() as u64,
        intact: queues.iter().map(|q| q.intact).sum(),
        lost,
        damaged_files,
        damage_elsewhere,
        outcome: Outcome::Clean,
    }
}

fn summarize_lost(queues: &[survey::Queue]) -> Vec<(Vec<u8>, Vec<u64>)> {
    queues
        .iter()
        .filter(|q| !q.lost.is_empty())
        .map(|q| (q.name.clone(), q.lost.clone()))
        .collect()
}

#[cfg(test)]
mod tests;
