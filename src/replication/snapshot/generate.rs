//! Making snapshots, on the node that sends them (the leader): raft-rs asks its storage for one
//! (`RaftStorage::snapshot`), and gets it if a file made at or after the index it needs is
//! ready; otherwise a background thread starts making one and raft-rs is told "temporarily
//! unavailable" (it asks again at the follower's next heartbeat response). The raft thread never
//! waits for it (notes P10).
//!
//! A file is written from a RocksDB snapshot (a consistent view, no copy) of the state column
//! families, and its raft metadata (applied index and term, membership) is read from that same
//! view: the file is exactly the state at that index (notes P6), whatever was applied since.
//! Written to a temporary name, fsynced, renamed: a file under its final name is whole.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use protobuf::Message as _;
use raft::prelude::{ConfState, Snapshot};
use rocksdb::DB;

use super::format::{Writer, STATE_FAMILIES};
use super::{generated_path, snapshot_data};
use crate::replication::keys::{decode_position, APPLIED_KEY, CONF_STATE_KEY, STATE_CF};

/// A snapshot file made here.
#[derive(Clone, Debug)]
pub struct Generated {
    pub index: u64,
    pub term: u64,
    pub conf_state: ConfState,
    pub bytes: u64,
    pub records: u64,
}

impl Generated {
    /// raft-rs's snapshot: the metadata, and in `data` what names the file.
    pub fn to_snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let meta = snapshot.mut_metadata();
        meta.index = self.index;
        meta.term = self.term;
        meta.set_conf_state(self.conf_state.clone());
        snapshot.data = snapshot_data(self.index, self.term).to_vec().into();
        snapshot
    }
}

#[derive(Default)]
struct State {
    latest: Option<Generated>,
    generating: bool,
    /// Files made since the process started.
    made: u64,
}

/// Told when making a file met damage in this node's state (`crate::replication::resync`).
pub type DamageReport = Arc<dyn Fn(String) + Send + Sync>;

/// The snapshots of one node, and the thread making the next one.
pub struct Snapshots {
    db: Arc<DB>,
    dir: PathBuf,
    state: Arc<Mutex<State>>,
    damage: Option<DamageReport>,
}

impl Snapshots {
    /// The files an earlier run made in `dir` are removed (not the received ones: an install
    /// cut short by a crash is redone from its file).
    pub fn new(db: Arc<DB>, dir: PathBuf) -> Snapshots {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let made = name.starts_with("make-")
                    || (name.ends_with(".snap") && !name.starts_with("received-"));
                if made {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Snapshots {
            db,
            dir,
            state: Arc::default(),
            damage: None,
        }
    }

    /// A file that cannot be made because the state is damaged is reported to `report`: the
    /// node then gets a copy back from the group (a leader that cannot make a snapshot would
    /// leave a follower that needs one waiting for ever).
    pub fn reporting_damage_to(mut self, report: DamageReport) -> Snapshots {
        self.damage = Some(report);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Files made since start.
    pub fn made(&self) -> u64 {
        self.state.lock().made
    }

    /// A snapshot at `at_least` or later whose membership includes `to`, if one is ready;
    /// otherwise starts making one (unless one is being made) and returns `None`.
    pub fn get(&self, at_least: u64, to: u64) -> Option<Snapshot> {
        let mut state = self.state.lock();
        if let Some(latest) = &state.latest {
            let cs = &latest.conf_state;
            let member = cs.voters.contains(&to) || cs.learners.contains(&to);
            if latest.index >= at_least
                && member
                && generated_path(&self.dir, latest.index, latest.term).exists()
            {
                return Some(latest.to_snapshot());
            }
        }
        if !state.generating {
            state.generating = true;
            let (db, dir, shared) = (self.db.clone(), self.dir.clone(), self.state.clone());
            let damage = self.damage.clone();
            let spawned = std::thread::Builder::new()
                .name("raft-snapshot".into())
                .spawn(move || {
                    let started = std::time::Instant::now();
                    let made = generate(&db, &dir);
                    let mut state = shared.lock();
                    state.generating = false;
                    match made {
                        Ok(generated) => {
                            log::info!(
                                "raft snapshot at {} (term {}) made: {} records, {} bytes in {:?}",
                                generated.index,
                                generated.term,
                                generated.records,
                                generated.bytes,
                                started.elapsed()
                            );
                            if let Some(old) = state.latest.replace(generated) {
                                // A sender still reading it keeps its open file.
                                let _ =
                                    std::fs::remove_file(generated_path(&dir, old.index, old.term));
                            }
                            state.made += 1;
                        }
                        Err(e) => {
                            log::error!("cannot make a raft snapshot: {e}");
                            if let Some(report) =
                                damage.filter(|_| crate::replication::resync::is_damage(&e))
                            {
                                report(e);
                            }
                        }
                    }
                });
            if let Err(e) = spawned {
                log::error!("cannot start the snapshot thread: {e}");
                state.generating = false;
            }
        }
        None
    }
}

/// Writes the state as of now to a file in `dir`.
pub fn generate(db: &DB, dir: &Path) -> Result<Generated, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let view = db.snapshot();
    let meta = db.cf_handle(STATE_CF).ok_or("no state column family")?;
    let (index, term) = view
        .get_cf(meta, APPLIED_KEY)
        .map_err(|e| e.to_string())?
        .and_then(|v| decode_position(&v))
        .ok_or("no applied index")?;
    let conf_state = view
        .get_cf(meta, CONF_STATE_KEY)
        .map_err(|e| e.to_string())?
        .ok_or("no membership")
        .and_then(|v| ConfState::parse_from_bytes(&v).map_err(|_| "a damaged membership"))?;
    let temporary = dir.join(format!("make-{index}-{term}.tmp"));
    let file = File::create(&temporary).map_err(|e| format!("{}: {e}", temporary.display()))?;
    let mut writer = Writer::new(BufWriter::with_capacity(1 << 20, file)).map_err(io)?;
    for (family, name) in STATE_FAMILIES.iter().enumerate() {
        // The tests' databases have no `messages`.
        let Some(cf) = db.cf_handle(name) else {
            continue;
        };
        // A raw iterator copies nothing; a one-off scan should not evict the block cache.
        let mut read = rocksdb::ReadOptions::default();
        read.fill_cache(false);
        read.set_readahead_size(2 << 20);
        let mut iter = view.raw_iterator_cf_opt(cf, read);
        iter.seek_to_first();
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            writer.record(family, key, value).map_err(io)?;
            iter.next();
        }
        iter.status().map_err(|e| e.to_string())?;
    }
    let (out, records) = writer.finish().map_err(io)?;
    let file = out.into_inner().map_err(|e| e.to_string())?;
    file.sync_all().map_err(io)?;
    let bytes = file.metadata().map_err(io)?.len();
    let generated = Generated {
        index,
        term,
        conf_state,
        bytes,
        records,
    };
    std::fs::rename(&temporary, generated_path(dir, index, term)).map_err(io)?;
    super::sync_dir(dir).map_err(io)?;
    Ok(generated)
}

fn io(e: std::io::Error) -> String {
    e.to_string()
}
