//! raft-rs's `Storage` on RocksDB: the log, the hard state and the compaction point in the
//! `raft_log` column family, the applied index and the membership with the state machine's
//! writes (`keys` has the layout). raft-rs reads through the `Storage` trait; the raft thread
//! writes through `persist` (a `Ready`'s entries and hard state), `apply` (committed entries'
//! effects with the applied index) and `compact`. Every write is one RocksDB write without an
//! fsync: the syncer makes them durable, and the raft thread tells raft-rs only then.
//!
//! The small records (hard state, membership, compaction point, last index, applied index) are
//! kept in memory too, since raft-rs asks for them all the time; entries are read from RocksDB
//! (its memtable holds the recent ones).
//!
//! A founding node starts from index 1, term 1 with the founders as voters, as if it had
//! installed a snapshot there (TiKV's `RAFT_INIT_LOG_INDEX`): the founding membership is in no
//! log entry, so a node added later must start from a snapshot, never replay conf changes from
//! index 1 onto an empty membership (notes P2).

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions, DB};

use super::group;
use super::keys::{
    decode_position, encode_position, entry_index, entry_key, ADDRESSES_KEY, APPLIED_KEY,
    CONF_STATE_KEY, GROUP_KEY, HARD_STATE_KEY, INSTALLING_KEY, NODE_ID_KEY, RAFT_LOG_CF,
    REMOVALS_KEY, STATE_CF, TRUNCATED_KEY,
};
use super::members::{self, Addresses, Removals};
use super::snapshot::{self, install, Snapshots};

/// At most this many bytes of the newest log entries are kept in memory (`recent`): a few
/// rounds of pipelined writes, read back as they commit.
const RECENT_BYTES: u64 = 8 << 20;

/// Index and term of the entry the founders start after.
pub const BOOTSTRAP_INDEX: u64 = 1;
pub const BOOTSTRAP_TERM: u64 = 1;

/// Why a storage operation failed.
#[derive(Debug)]
pub enum StoreError {
    Db(rocksdb::Error),
    /// A stored record does not decode, or the log has a hole.
    Corrupt(String),
    /// The caller asked for something that would break the log (a gap, compacting past the
    /// applied index) or that this data directory cannot do (another node's directory).
    Refused(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            StoreError::Db(e) => write!(f, "storage failure: {e}"),
            StoreError::Corrupt(what) => write!(f, "damaged raft state: {what}"),
            StoreError::Refused(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rocksdb::Error> for StoreError {
    fn from(e: rocksdb::Error) -> Self {
        StoreError::Db(e)
    }
}

impl From<StoreError> for raft::Error {
    fn from(e: StoreError) -> Self {
        raft::Error::Store(StorageError::Other(Box::new(e)))
    }
}

/// A node's raft state on RocksDB, with its small records cached.
pub struct RaftStorage {
    db: Arc<DB>,
    node_id: u64,
    hard_state: HardState,
    conf_state: ConfState,
    /// The members' addresses as of `applied`; `None` until a membership change stored them.
    addresses: Option<Addresses>,
    /// Index and term of the last entry compacted away: the log starts after it.
    truncated: (u64, u64),
    /// Index of the last entry in the log (`truncated.0` when it is empty).
    last_index: u64,
    /// Index and term of the last entry applied.
    applied: (u64, u64),
    /// The encoded size and term of each entry in the log, first to last (the sizes' sum is
    /// what compaction bounds, `super::compaction`; the terms are what raft-rs asks for on
    /// every append and commit, which a read of the entry would cost a copy and a decode).
    stored: VecDeque<StoredEntry>,
    log_bytes: u64,
    /// The log's newest entries as persisted, with their encoded sizes: always its last
    /// `recent.len()` entries, at most `RECENT_BYTES` of them. raft-rs asks for entries again
    /// soon after they are persisted (a follower applies them once committed, a leader sends
    /// them to a follower a round behind), which a read costs a RocksDB lookup, a copy and a
    /// decode each.
    recent: VecDeque<(Entry, u64)>,
    recent_bytes: u64,
    /// Snapshots this node makes for its followers (`None`: it cannot send any).
    snapshots: Option<Snapshots>,
    /// The snapshot whose state is being installed (`begin_install`).
    installing: Option<(u64, u64)>,
}

/// What the log keeps in memory of each entry it holds.
#[derive(Clone, Copy)]
struct StoredEntry {
    size: u64,
    /// 0 (no entry has it) when unknown: read from the entry.
    term: u64,
}

fn decode<M: protobuf::Message>(what: &str, bytes: &[u8]) -> Result<M, StoreError> {
    M::parse_from_bytes(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn encode(message: &impl protobuf::Message) -> Vec<u8> {
    // Encoding into a Vec fails only for messages missing required fields: proto3 has none.
    message.write_to_bytes().unwrap_or_default()
}

/// Whether `db` holds a node's raft state (it was started under `--cluster` before).
pub fn exists(db: &DB) -> Result<bool, StoreError> {
    Ok(stored_node_id(db)?.is_some())
}

/// The node whose raft state `db` holds, if any (`I`).
pub fn stored_node_id(db: &DB) -> Result<Option<u64>, StoreError> {
    let Some(stored) = db.get_cf(log_cf(db), NODE_ID_KEY)? else {
        return Ok(None);
    };
    let stored: [u8; 8] = stored[..]
        .try_into()
        .map_err(|_| StoreError::Corrupt("node id".into()))?;
    Ok(Some(u64::from_be_bytes(stored)))
}

/// The group's number (`G`, `group`); 0 if none is stored (a joiner before its snapshot, a
/// directory older than the number) or it cannot be read.
pub fn stored_group_id(db: &DB) -> u64 {
    db.cf_handle(STATE_CF)
        .and_then(|cf| db.get_cf(cf, GROUP_KEY).ok().flatten())
        .and_then(|bytes| <[u8; 8]>::try_from(&bytes[..]).ok())
        .map_or(0, u64::from_be_bytes)
}

/// The stored address map (`M`) of a database opened with or without the `meta` column
/// family (a damaged one, opened in part: `damaged_start`); `None` if it cannot be read.
pub fn stored_addresses(db: &DB) -> Option<Addresses> {
    db.cf_handle(STATE_CF)?;
    read_addresses(db).ok().flatten()
}

/// The members removed as of the applied index (`R`); none if none is stored or it cannot be
/// read (then a removed member that comes back is refused without being told why).
pub fn stored_removals(db: &DB) -> Removals {
    let stored = db
        .cf_handle(STATE_CF)
        .and_then(|cf| db.get_cf(cf, REMOVALS_KEY).ok().flatten());
    match stored {
        Some(bytes) => members::decode_removals(&bytes).unwrap_or_else(|| {
            log::warn!("the stored removed members do not read: taken as none");
            Removals::new()
        }),
        None => Removals::new(),
    }
}

impl RaftStorage {
    /// Opens node `node_id`'s raft state in `db`. A database with none is bootstrapped as a
    /// founder of a group whose voters are `founders` (durably, before this returns), or, with
    /// no founders, as a joiner (`--join`: an empty log at 0 and no membership, so it never
    /// campaigns, until a snapshot brings both); one with state keeps it (its membership is in
    /// the state, `founders` is not looked at) and must belong to `node_id`.
    pub fn open(db: Arc<DB>, node_id: u64, founders: &[u64]) -> Result<RaftStorage, StoreError> {
        Self::open_seeding(db, node_id, founders, false)
    }

    /// `open`, for a founder that is `seeding` the group with a single server's queues: the
    /// group's number it bootstraps with is a random one (`group::founding`).
    pub fn open_seeding(
        db: Arc<DB>,
        node_id: u64,
        founders: &[u64],
        seeding: bool,
    ) -> Result<RaftStorage, StoreError> {
        if node_id == 0 {
            return Err(StoreError::Refused("node id 0 is not allowed".into()));
        }
        let log = log_cf(&db);
        match stored_node_id(&db)? {
            Some(stored) if stored != node_id => {
                return Err(StoreError::Refused(format!(
                    "this data directory belongs to node {stored}, not node {node_id}"
                )));
            }
            Some(_) => {}
            None if founders.is_empty() => bootstrap_joiner(&db, node_id)?,
            None => bootstrap(&db, node_id, founders, group::founding(founders, seeding))?,
        }
        if let Some(bytes) = db.get_cf(log, INSTALLING_KEY)? {
            let (index, term) = decode_position(&bytes)
                .ok_or_else(|| StoreError::Corrupt("snapshot being installed".into()))?;
            log::warn!("installing snapshot {index} (term {term}) again: a crash cut it short");
            // The state first: until then `A` and `C` may be anything.
            let path = snapshot::received_path(&snapshot::dir(&db), index, term);
            let records = install::replace_state(&db, &path).map_err(StoreError::Corrupt)?;
            let mut storage = Self::load(db, node_id)?;
            if storage.truncated.0 < index {
                // Written by a version that reset the log last: not done yet.
                let mut batch = WriteBatch::default();
                storage.reset_log(&mut batch, index, term);
                install::write_durably(&storage.db, batch)?;
                storage.log_was_reset(index, term);
            }
            storage.finish_install(index, term, records)?;
            snapshot::remove_received(&snapshot::dir(&storage.db));
            return Ok(storage);
        }
        // One received but never installed (no `S`): the leader sends a snapshot again.
        snapshot::remove_received(&snapshot::dir(&db));
        Self::load(db, node_id)
    }

    /// Lets this node send snapshots, made in `snapshots.dir()`.
    pub fn with_snapshots(mut self, snapshots: Snapshots) -> RaftStorage {
        self.snapshots = Some(snapshots);
        self
    }

    /// Whether this node can make snapshots now: not from a state half installed.
    pub fn can_snapshot(&self) -> bool {
        self.snapshots.is_some() && self.installing.is_none()
    }

    /// Snapshot files made here since start.
    pub fn snapshots_made(&self) -> u64 {
        self.snapshots.as_ref().map_or(0, Snapshots::made)
    }

    /// Replaces the state and the log by the received snapshot `snap` in one go (its file is
    /// whole on disk): `begin_install`, the state replaced, `finish_install`. The raft thread
    /// runs the middle step on a thread of its own (`super::installing`).
    #[cfg(test)]
    pub fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), StoreError> {
        let path = self.begin_install(snap)?;
        let (index, term) = (snap.get_metadata().index, snap.get_metadata().term);
        let records = install::replace_state(&self.db, &path).map_err(StoreError::Corrupt)?;
        self.finish_install(index, term, records)?;
        let _ = std::fs::remove_file(&path);
        Ok(())
    }

    /// Steps 2 and 3 of `snapshot::install` for the received snapshot `snap` (its file is whole
    /// on disk), in one durable write: the marker `S`, and the raft state at the snapshot (the
    /// log emptied, the compaction point and commit index at it). From here the log goes on
    /// after the snapshot while the state column families are replaced (step 4, the file's
    /// path returned); the applied index stays where it was until `finish_install`.
    pub fn begin_install(&mut self, snap: &Snapshot) -> Result<std::path::PathBuf, StoreError> {
        let meta = snap.get_metadata();
        let (index, term) = (meta.index, meta.term);
        if snapshot::decode_snapshot_data(&snap.data) != Some((index, term)) {
            return Err(StoreError::Refused(format!(
                "snapshot {index} names no file of its own"
            )));
        }
        let path = snapshot::received_path(&snapshot::dir(&self.db), index, term);
        if !path.exists() {
            return Err(StoreError::Refused(format!(
                "snapshot {index} (term {term}) was never received: {}",
                path.display()
            )));
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(
            log_cf(&self.db),
            INSTALLING_KEY,
            encode_position(index, term),
        );
        self.reset_log(&mut batch, index, term);
        install::write_durably(&self.db, batch)?;
        self.log_was_reset(index, term);
        self.installing = Some((index, term));
        Ok(path)
    }

    /// Adds to `batch` the raft state at snapshot `index` (of `term`): the log emptied, the
    /// compaction point there, the commit index at least there.
    fn reset_log(&self, batch: &mut WriteBatch, index: u64, term: u64) {
        let log = log_cf(&self.db);
        batch.delete_range_cf(log, entry_key(0), entry_key(u64::MAX));
        batch.delete_cf(log, entry_key(u64::MAX));
        batch.put_cf(log, TRUNCATED_KEY, encode_position(index, term));
        batch.put_cf(
            log,
            HARD_STATE_KEY,
            encode(&self.hard_state_at(index, term)),
        );
    }

    fn hard_state_at(&self, index: u64, term: u64) -> HardState {
        let mut hard_state = self.hard_state.clone();
        hard_state.term = hard_state.term.max(term);
        hard_state.commit = hard_state.commit.max(index);
        hard_state
    }

    /// What `reset_log` wrote, in memory.
    fn log_was_reset(&mut self, index: u64, term: u64) {
        self.hard_state = self.hard_state_at(index, term);
        self.truncated = (index, term);
        self.last_index = index;
        self.stored.clear();
        self.log_bytes = 0;
        self.recent.clear();
        self.recent_bytes = 0;
    }

    /// Whether a snapshot's state is being installed (`begin_install` done, `finish_install`
    /// not yet).
    pub fn installing(&self) -> Option<(u64, u64)> {
        self.installing
    }

    /// Step 5 of `snapshot::install`, the state replaced: the applied index and membership read
    /// back from it, `S` deleted (durably). The log, which may have grown past the snapshot
    /// meanwhile, is left alone. The file is left too (`snapshot::remove_received`): until an
    /// fsync the raft thread asked for covers the deletion, a start-up may still need it.
    pub fn finish_install(
        &mut self,
        index: u64,
        term: u64,
        records: u64,
    ) -> Result<(), StoreError> {
        let path = snapshot::received_path(&snapshot::dir(&self.db), index, term);
        let state = state_cf(&self.db);
        let applied = self
            .db
            .get_cf(state, APPLIED_KEY)?
            .and_then(|v| decode_position(&v));
        if applied != Some((index, term)) {
            return Err(StoreError::Corrupt(format!(
                "snapshot {index} (term {term}) holds the state at {applied:?}"
            )));
        }
        let conf_state: ConfState = match self.db.get_cf(state, CONF_STATE_KEY)? {
            Some(bytes) => decode("membership", &bytes)?,
            None => return Err(StoreError::Corrupt("a snapshot with no membership".into())),
        };
        let addresses = read_addresses(&self.db)?;
        let mut batch = WriteBatch::default();
        batch.delete_cf(log_cf(&self.db), INSTALLING_KEY);
        install::write_durably(&self.db, batch)?;
        self.conf_state = conf_state;
        // A snapshot made before any membership change holds no map: this node's stays.
        if addresses.is_some() {
            self.addresses = addresses;
        }
        self.applied = (index, term);
        self.installing = None;
        log::debug!(
            "snapshot {index}: {records} records, {} installed",
            path.display()
        );
        Ok(())
    }

    /// Reads the stored state (the node id already checked).
    fn load(db: Arc<DB>, node_id: u64) -> Result<RaftStorage, StoreError> {
        let log = log_cf(&db);
        let state = state_cf(&db);
        let hard_state = match db.get_cf(log, HARD_STATE_KEY)? {
            Some(bytes) => decode("hard state", &bytes)?,
            None => return Err(StoreError::Corrupt("no hard state".into())),
        };
        let position = |what: &str, bytes: Option<Vec<u8>>| match bytes {
            Some(bytes) => decode_position(&bytes).ok_or_else(|| StoreError::Corrupt(what.into())),
            None => Err(StoreError::Corrupt(format!("no {what}"))),
        };
        let truncated = position("compaction point", db.get_cf(log, TRUNCATED_KEY)?)?;
        let applied = position("applied index", db.get_cf(state, APPLIED_KEY)?)?;
        let conf_state = match db.get_cf(state, CONF_STATE_KEY)? {
            Some(bytes) => decode("membership", &bytes)?,
            None => return Err(StoreError::Corrupt("no membership".into())),
        };
        let addresses = read_addresses(&db)?;
        // The last entry: the greatest `L` key, if any is past the compaction point.
        let mut last_index = truncated.0;
        let last_key = db
            .iterator_cf(
                log,
                IteratorMode::From(&entry_key(u64::MAX), Direction::Reverse),
            )
            .next()
            .transpose()?;
        if let Some(index) = last_key.and_then(|(key, _)| entry_index(&key)) {
            last_index = last_index.max(index);
        }
        let mut storage = RaftStorage {
            db,
            node_id,
            hard_state,
            conf_state,
            addresses,
            truncated,
            last_index,
            applied,
            stored: VecDeque::new(),
            log_bytes: 0,
            recent: VecDeque::new(),
            recent_bytes: 0,
            snapshots: None,
            installing: None,
        };
        storage.measure()?;
        Ok(storage)
    }

    /// Reads the size and term of every entry in the log (bounded by compaction). Past a
    /// missing entry, terms are unknown (reading them reports the damage).
    fn measure(&mut self) -> Result<(), StoreError> {
        let mut read = ReadOptions::default();
        read.set_iterate_upper_bound(entry_key(self.last_index + 1));
        let from = entry_key(self.truncated.0 + 1);
        let iter = self.db.iterator_cf_opt(
            log_cf(&self.db),
            read,
            IteratorMode::From(&from, Direction::Forward),
        );
        self.stored.clear();
        self.log_bytes = 0;
        self.recent.clear();
        self.recent_bytes = 0;
        let mut contiguous = true;
        for item in iter {
            let (key, value) = item?;
            let expected = self.truncated.0 + 1 + self.stored.len() as u64;
            contiguous &= entry_index(&key) == Some(expected);
            let term = match contiguous {
                true => decode::<Entry>("entry", &value).map_or(0, |e| e.term),
                false => 0,
            };
            self.stored.push_back(StoredEntry {
                size: value.len() as u64,
                term,
            });
            self.log_bytes += value.len() as u64;
        }
        Ok(())
    }

    /// How many entries the log holds, and their encoded size in bytes.
    pub fn log_size(&self) -> (u64, u64) {
        (self.last_index - self.truncated.0, self.log_bytes)
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    /// Index and term of the last applied entry: where apply resumes after a restart
    /// (`raft::Config::applied`).
    pub fn applied(&self) -> (u64, u64) {
        self.applied
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The members' addresses stored with the membership, if a change ever stored them.
    pub fn addresses(&self) -> Option<&Addresses> {
        self.addresses.as_ref()
    }

    /// The first and last index in the log (first = last + 1 when it is empty).
    pub fn bounds(&self) -> (u64, u64) {
        (self.truncated.0 + 1, self.last_index)
    }

    /// Writes a `Ready`'s new entries and hard state in one write (no fsync). Entries replace
    /// the log from the first one's index on: stored entries past the last new one are deleted,
    /// or a shorter conflicting suffix from a new leader would leave stale ones behind.
    pub fn persist(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StoreError> {
        let log = log_cf(&self.db);
        let mut batch = WriteBatch::default();
        let mut last_index = self.last_index;
        let mut stored = Vec::with_capacity(entries.len());
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            if first.index <= self.truncated.0 || first.index > self.last_index + 1 {
                return Err(StoreError::Refused(format!(
                    "entries from {} do not continue the log [{}, {}]",
                    first.index,
                    self.truncated.0 + 1,
                    self.last_index
                )));
            }
            for (i, entry) in entries.iter().enumerate() {
                if entry.index != first.index + i as u64 {
                    return Err(StoreError::Refused("entries out of order".into()));
                }
                let encoded = encode(entry);
                stored.push(StoredEntry {
                    size: encoded.len() as u64,
                    term: entry.term,
                });
                batch.put_cf(log, entry_key(entry.index), encoded);
            }
            if self.last_index > last.index {
                batch.delete_range_cf(
                    log,
                    entry_key(last.index + 1),
                    entry_key(self.last_index + 1),
                );
            }
            last_index = last.index;
        }
        if let Some(hs) = hard_state {
            batch.put_cf(log, HARD_STATE_KEY, encode(hs));
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.db.write(batch)?;
        if let Some(first) = entries.first() {
            // The entries from `first` on are replaced.
            let kept = (first.index - self.truncated.0 - 1) as usize;
            for replaced in self.stored.drain(kept..) {
                self.log_bytes -= replaced.size;
            }
            self.keep_recent(entries, &stored);
            self.log_bytes += stored.iter().map(|e| e.size).sum::<u64>();
            self.stored.extend(stored);
        }
        self.last_index = last_index;
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    /// The index of the first entry in `recent` (one past the log's end when it is empty).
    fn recent_first(&self) -> u64 {
        self.last_index + 1 - self.recent.len() as u64
    }

    /// `entries`, just written from the first one's index on over the log ending at
    /// `self.last_index` (not moved yet), join the newest entries kept in memory.
    fn keep_recent(&mut self, entries: &[Entry], sizes: &[StoredEntry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let kept = first.index.saturating_sub(self.recent_first()) as usize;
        for (_, size) in self.recent.drain(kept.min(self.recent.len())..) {
            self.recent_bytes -= size;
        }
        for (entry, stored) in entries.iter().zip(sizes) {
            self.recent.push_back((entry.clone(), stored.size));
            self.recent_bytes += stored.size;
        }
        while self.recent_bytes > RECENT_BYTES {
            let Some((_, size)) = self.recent.pop_front() else {
                break;
            };
            self.recent_bytes -= size;
        }
    }

    /// Writes `batch` (what committed entries up to `index`, of `term`, do to the state
    /// machine) with the applied index and, after a membership change, the new membership and
    /// the members' addresses.
    pub fn apply(
        &mut self,
        mut batch: WriteBatch,
        index: u64,
        term: u64,
        conf_state: Option<(&ConfState, &Addresses, &Removals)>,
    ) -> Result<(), StoreError> {
        if index < self.applied.0 || index > self.hard_state.commit {
            return Err(StoreError::Refused(format!(
                "applying up to {index}: applied {}, committed {}",
                self.applied.0, self.hard_state.commit
            )));
        }
        let state = state_cf(&self.db);
        batch.put_cf(state, APPLIED_KEY, encode_position(index, term));
        if let Some((cs, addresses, removals)) = conf_state {
            batch.put_cf(state, CONF_STATE_KEY, encode(cs));
            batch.put_cf(state, ADDRESSES_KEY, members::encode(addresses));
            if !removals.is_empty() {
                batch.put_cf(state, REMOVALS_KEY, members::encode_removals(removals));
            } else {
                batch.delete_cf(state, REMOVALS_KEY);
            }
        }
        self.db.write(batch)?;
        self.applied = (index, term);
        if let Some((cs, addresses, _)) = conf_state {
            self.conf_state = cs.clone();
            self.addresses = Some(addresses.clone());
        }
        Ok(())
    }

    /// Drops the log's entries up to `index`, which must be applied: a peer needing them
    /// then needs a snapshot. Compacting at or before the current point does nothing.
    pub fn compact(&mut self, index: u64) -> Result<(), StoreError> {
        if index <= self.truncated.0 {
            return Ok(());
        }
        if index > self.applied.0 {
            return Err(StoreError::Refused(format!(
                "compacting up to {index} past the applied index {}",
                self.applied.0
            )));
        }
        let term = self.stored_term(index)?;
        let log = log_cf(&self.db);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(log, entry_key(self.truncated.0 + 1), entry_key(index + 1));
        batch.put_cf(log, TRUNCATED_KEY, encode_position(index, term));
        self.db.write(batch)?;
        for dropped in self.stored.drain(..(index - self.truncated.0) as usize) {
            self.log_bytes -= dropped.size;
        }
        self.truncated = (index, term);
        Ok(())
    }

    /// The term of an entry in the log (not the compaction point).
    fn stored_term(&self, index: u64) -> Result<u64, StoreError> {
        let known = index
            .checked_sub(self.truncated.0 + 1)
            .and_then(|at| self.stored.get(at as usize))
            .map_or(0, |e| e.term);
        if known != 0 {
            return Ok(known);
        }
        match self.db.get_cf(log_cf(&self.db), entry_key(index))? {
            Some(bytes) => Ok(decode::<Entry>("entry", &bytes)?.term),
            None => Err(StoreError::Corrupt(format!("entry {index} is missing"))),
        }
    }

    /// Entries `[low, high)` as stored, stopping once they exceed `max_size` bytes (always at
    /// least one).
    fn read_entries(&self, low: u64, high: u64, max_size: u64) -> Result<Vec<Entry>, StoreError> {
        let high = high.min(self.last_index + 1);
        let recent_first = self.recent_first();
        if low >= recent_first && low < high {
            let (from, to) = (
                (low - recent_first) as usize,
                (high - recent_first) as usize,
            );
            let mut entries = Vec::with_capacity(to - from);
            let mut size = 0u64;
            for (entry, entry_size) in self.recent.range(from..to) {
                size += entry_size;
                if !entries.is_empty() && size > max_size {
                    break;
                }
                entries.push(entry.clone());
            }
            return Ok(entries);
        }
        let mut read = ReadOptions::default();
        read.set_iterate_upper_bound(entry_key(high));
        let from = entry_key(low);
        let iter = self.db.iterator_cf_opt(
            log_cf(&self.db),
            read,
            IteratorMode::From(&from, Direction::Forward),
        );
        let mut entries = Vec::with_capacity((high - low).min(1024) as usize);
        let mut size = 0u64;
        for item in iter {
            let (key, value) = item?;
            let expected = low + entries.len() as u64;
            if entry_index(&key) != Some(expected) {
                return Err(StoreError::Corrupt(format!("entry {expected} is missing")));
            }
            size += value.len() as u64;
            if !entries.is_empty() && size > max_size {
                break;
            }
            entries.push(decode("entry", &value)?);
        }
        if entries.is_empty() && low < high {
            return Err(StoreError::Corrupt(format!("entry {low} is missing")));
        }
        Ok(entries)
    }
}

/// Writes the state of a founder: the log starts after (1, 1), committed and applied there,
/// with `founders` as voters; one synced write.
fn bootstrap(db: &DB, node_id: u64, founders: &[u64], group: u64) -> Result<(), StoreError> {
    if !founders.contains(&node_id) {
        return Err(StoreError::Refused(format!(
            "node {node_id} is not among the founders {founders:?}: a node added to a running \
             group starts with --join (protocol-spec/cluster.md 7)"
        )));
    }
    let log = log_cf(db);
    let state = state_cf(db);
    let hard_state = HardState {
        term: BOOTSTRAP_TERM,
        commit: BOOTSTRAP_INDEX,
        ..Default::default()
    };
    let conf_state = ConfState::from((founders.to_vec(), vec![]));
    let position = encode_position(BOOTSTRAP_INDEX, BOOTSTRAP_TERM);
    let mut batch = WriteBatch::default();
    batch.put_cf(log, HARD_STATE_KEY, encode(&hard_state));
    batch.put_cf(log, TRUNCATED_KEY, position);
    batch.put_cf(state, APPLIED_KEY, position);
    batch.put_cf(state, CONF_STATE_KEY, encode(&conf_state));
    batch.put_cf(state, GROUP_KEY, group.to_be_bytes());
    // Last: a directory with a node id has all of the above.
    batch.put_cf(log, NODE_ID_KEY, node_id.to_be_bytes());
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    db.write_opt(batch, &sync)?;
    // Under `manual_wal_flush` a synced write still waits in the buffer for a flush.
    db.flush_wal(true)?;
    Ok(())
}

/// Writes the state of a joiner: nothing applied, no membership, the log empty from index 1
/// (any leader's log starts later, so it is sent a snapshot); one synced write.
fn bootstrap_joiner(db: &DB, node_id: u64) -> Result<(), StoreError> {
    let log = log_cf(db);
    let state = state_cf(db);
    let position = encode_position(0, 0);
    let mut batch = WriteBatch::default();
    batch.put_cf(log, HARD_STATE_KEY, encode(&HardState::default()));
    batch.put_cf(log, TRUNCATED_KEY, position);
    batch.put_cf(state, APPLIED_KEY, position);
    batch.put_cf(state, CONF_STATE_KEY, encode(&ConfState::default()));
    batch.put_cf(log, NODE_ID_KEY, node_id.to_be_bytes());
    install::write_durably(db, batch)?;
    Ok(())
}

/// The stored address map (`M`), if any.
fn read_addresses(db: &DB) -> Result<Option<Addresses>, StoreError> {
    match db.get_cf(state_cf(db), ADDRESSES_KEY)? {
        Some(bytes) => members::decode(&bytes)
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt("members' addresses".into())),
        None => Ok(None),
    }
}

fn log_cf(db: &DB) -> &rocksdb::ColumnFamily {
    db.cf_handle(RAFT_LOG_CF)
        .expect("the replication column families are always opened")
}

fn state_cf(db: &DB) -> &rocksdb::ColumnFamily {
    db.cf_handle(STATE_CF)
        .expect("the replication column families are always opened")
}

impl raft::Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if low > high || high > self.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        Ok(self.read_entries(low, high, max_size)?)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.truncated.0 {
            return Ok(self.truncated.1);
        }
        if index < self.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if index > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.stored_term(index)?)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    /// A snapshot for follower `to`, at `request_index` or later and not older than the log's
    /// start (the follower continues from the log after it); made in the background
    /// (`snapshot::generate`): until it is ready raft-rs hears "temporarily unavailable" and
    /// asks again later.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // Not of a state half installed: a node that became leader while installing one.
        let ready = self
            .snapshots
            .as_ref()
            .filter(|_| self.installing.is_none())
            .and_then(|s| s.get(request_index.max(self.truncated.0), to));
        ready.ok_or(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests;
