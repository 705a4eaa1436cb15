//! A node of a replicated group as `mqd serve --node N --cluster …` runs it: its raft state in
//! the engine's database (`raft_log` column family, fsynced by the engine's syncer), TCP to its
//! peers, its role and term published for `stats`. The queue engine is its state machine: the
//! engine proposes each write batch it would have written (`Engine::propose_to`), every node
//! applies committed entries to its RocksDB, and the engine hears which of its proposals are
//! committed (the replies waiting for them go out) and when this node leads
//! (`crate::engine`'s `cluster` module says what it does then).

use std::sync::Arc;

use raft::prelude::Entry;
use rocksdb::{WriteBatch, DB};

use super::group::GroupId;
use super::listener::{ClientHandoff, RaftListener};
use super::peers::ClusterConfig;
use super::resync;
use super::snapshot::{self, send::SnapshotSender};
use super::status::Status;
use super::storage;
use super::tcp::TcpTransport;
use super::{Applier, Input, Mailbox, Node, NodeConfig, Outcome, Synced, WalSync};
use crate::engine::{Engine, SyncPoint};

pub struct Replica {
    node: Node,
    listener: RaftListener,
}

/// The queue engine as the state machine. An entry's data is a RocksDB write batch's
/// representation (12-byte header: sequence number, then record count, little-endian; then the
/// records), made by the leader's engine: applying it is writing its records. A round's entries
/// are gathered by concatenation into one representation, made the apply batch's records once
/// (`finish`): added to the batch entry by entry, each copied the whole batch again, and a
/// follower catching up on 95,000 entries spent minutes copying.
struct EngineApplier {
    engine: Arc<Engine>,
    gathered: Gathered,
}

/// Size of a write batch representation's header.
const BATCH_HEADER: usize = 12;

/// Gathers write batch representations: the header of the first, then every one's records.
#[derive(Default)]
struct Gathered {
    rep: Vec<u8>,
}

impl Gathered {
    /// Appends the records of the representation `data`; nothing if it is not one.
    fn append(&mut self, data: &[u8]) -> Result<(), String> {
        if data.len() < BATCH_HEADER {
            return Err(format!("a write batch of {} bytes", data.len()));
        }
        if self.rep.is_empty() {
            self.rep.extend_from_slice(&data[..BATCH_HEADER]);
            self.rep[8..12].copy_from_slice(&0u32.to_le_bytes());
        }
        let total = count(&self.rep)
            .checked_add(count(data))
            .ok_or("too many records")?;
        self.rep[8..12].copy_from_slice(&total.to_le_bytes());
        self.rep.extend_from_slice(&data[BATCH_HEADER..]);
        Ok(())
    }

    /// Adds everything gathered to `batch`, and starts again.
    fn add_to(&mut self, batch: &mut WriteBatch) {
        if !self.rep.is_empty() {
            append_batch(batch, &self.rep).expect("a gathered representation is one");
        }
        self.rep.clear();
        if self.rep.capacity() > 4 << 20 {
            self.rep.shrink_to(4 << 20);
        }
    }
}

/// The record count in a write batch representation's header.
fn count(rep: &[u8]) -> u32 {
    u32::from_le_bytes(rep[8..12].try_into().expect("12-byte header"))
}

/// Appends the records of the write batch representation `data` to `batch`.
fn append_batch(batch: &mut WriteBatch, data: &[u8]) -> Result<(), String> {
    if data.len() < BATCH_HEADER {
        return Err(format!("a write batch of {} bytes", data.len()));
    }
    let mut rep = batch.data().to_vec();
    if rep.len() < BATCH_HEADER {
        rep = vec![0; BATCH_HEADER];
    }
    let total = count(&rep)
        .checked_add(count(data))
        .ok_or("too many records")?;
    rep[8..12].copy_from_slice(&total.to_le_bytes());
    rep.extend_from_slice(&data[BATCH_HEADER..]);
    *batch = WriteBatch::from_data(&rep);
    Ok(())
}

impl Applier for EngineApplier {
    fn apply(&mut self, entry: &Entry, _batch: &mut WriteBatch) {
        if let Err(e) = self.gathered.append(&entry.data) {
            // Only mqd's engines propose: a damaged entry is a bug, applied nowhere (every
            // node sees the same bytes).
            log::error!("raft entry {} is no write batch, skipped: {e}", entry.index);
        }
    }

    fn finish(&mut self, batch: &mut WriteBatch) {
        self.gathered.add_to(batch);
    }

    fn settled(&mut self, id: u64, outcome: Outcome) {
        match outcome {
            Outcome::Committed => self.engine.committed(SyncPoint(id)),
            Outcome::Dropped | Outcome::Unknown => self.engine.proposal_lost(SyncPoint(id)),
        }
    }

    fn leading(&mut self, established: bool) {
        self.engine.leading(established);
    }

    fn restored(&mut self) {
        self.engine.restored();
    }

    fn discard(&mut self) {
        // The database cannot be dropped under the engine: the next start empties it.
        resync::leave();
    }

    fn removed(&mut self) {
        // A clean stop, as an operator's: what is in flight on this node is answered first.
        // Not at once: the `remove` may have been asked through this node (its client port or
        // its peer port), and the leader's reply, sent as it applied the change, is still on
        // its way back through it.
        let stop = || {
            std::thread::sleep(REMOVED_GRACE);
            if let Err(e) = signal_hook::low_level::raise(signal_hook::consts::SIGTERM) {
                log::error!("cannot stop after this node's removal ({e}): stop it");
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("removed".into())
            .spawn(stop)
        {
            log::error!("cannot stop after this node's removal ({e}): stop it");
        }
    }
}

/// How long a removed node goes on serving (as a follower that forwards nothing: it knows no
/// leader) before it stops, for the reply to a `remove` asked through it.
const REMOVED_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The raft thread's writes are fsynced by the engine's syncer: one WAL, one fsync.
struct EngineSync(Arc<Engine>);

impl WalSync for EngineSync {
    fn request(&self, number: u64) {
        self.0.request_wal_sync(number);
    }

    fn sync_here(&self, number: u64) -> Option<u64> {
        self.0.sync_wal_here(number)
    }
}

impl Replica {
    /// Starts node `config.node` with its raft state in the engine's database, fsynced by the
    /// engine's syncer. Client connections other members forward here go to `clients`.
    pub fn start(
        config: &ClusterConfig,
        engine: &Arc<Engine>,
        clients: ClientHandoff,
    ) -> Result<Replica, String> {
        let db: Arc<DB> = engine.database();
        let seeding = refuse_single_server_data(&db, engine, config.join)?;
        let mailbox = Mailbox::new();
        let inputs = mailbox.sender();
        {
            let inputs = inputs.clone();
            engine.propose_to(Box::new(move |point: SyncPoint, data| {
                inputs.send(Input::Propose { id: point.0, data }).is_ok()
            }));
        }
        {
            let inputs = inputs.clone();
            engine.report_damage_to(Box::new(move |what: &str| {
                let _ = inputs.send(Input::Damaged(what.to_string()));
            }));
        }
        {
            let inputs = inputs.clone();
            engine.report_wal_syncs(move |number| {
                let _ = inputs.send(Input::Synced(Synced::UpTo(number)));
            });
        }
        let snapshot_dir = snapshot::dir(&db);
        let group = GroupId::default();
        let snapshots =
            SnapshotSender::new(config.peers.clone(), snapshot_dir.clone(), inputs.clone())
                .with_group(group.clone());
        let transport =
            TcpTransport::start(config.node, &config.peers, inputs.clone(), group.clone())?
                .with_snapshots(snapshots);
        // The node first: a directory of another node is refused before anything listens.
        let node = Node::start(
            NodeConfig {
                id: config.node,
                founders: config.ids(),
                timing: config.timing,
                log: config.log,
                join: config.join,
                addresses: config.peers.clone(),
                seeding,
                group,
            },
            db,
            mailbox,
            Box::new(transport),
            Box::new(EngineApplier {
                engine: engine.clone(),
                gathered: Gathered::default(),
            }),
            Box::new(EngineSync(engine.clone())),
        )?;
        let listener = RaftListener::start(
            config.own_address(),
            config.node,
            node.status().clone(),
            inputs,
            clients,
            Some(snapshot_dir),
        )?;
        Ok(Replica { node, listener })
    }

    pub(super) fn of(node: Node, listener: RaftListener) -> Replica {
        Replica { node, listener }
    }

    pub fn status(&self) -> &Arc<Status> {
        self.node.status()
    }

    pub fn stop(&mut self) {
        self.listener.stop();
        self.node.stop();
    }
}

/// A data directory with queues and no raft state was a single server's. As a founder it
/// seeds the group: its queues are the state at the founders' starting point, and reach the
/// other members by snapshot, which they must take from it: they start with `--join` (a
/// founder started empty would hold another state at the same index). A joiner's directory
/// must be empty: its queues would be replaced by the snapshot.
/// True for a founder that seeds the group so.
fn refuse_single_server_data(db: &DB, engine: &Engine, join: bool) -> Result<bool, String> {
    let has_state = storage::exists(db).map_err(|e| format!("cannot read the raft state: {e}"))?;
    let queues = engine.queue_count();
    if has_state || queues == 0 {
        return Ok(false);
    }
    if join {
        return Err(format!(
            "this data directory holds {queues} queues of a single server: a member started \
             with --join starts on an empty directory (protocol-spec/cluster.md 5)"
        ));
    }
    log::warn!(
        "seeding the group with the {queues} queues of a single server in this directory: \
         start every other member with --join on an empty directory (protocol-spec/cluster.md 5)"
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_batches_concatenate_into_one_with_every_record() {
        let mut a = WriteBatch::default();
        a.put(b"k1", b"v1");
        a.delete(b"k0");
        let mut b = WriteBatch::default();
        b.put(b"k2", b"v2");
        let mut gathered = WriteBatch::default();
        append_batch(&mut gathered, a.data()).unwrap();
        append_batch(&mut gathered, b.data()).unwrap();
        assert_eq!(gathered.len(), 3);
        assert!(append_batch(&mut gathered, &[0; 5]).is_err());
        assert_eq!(gathered.len(), 3);
    }

    #[test]
    fn a_rounds_entries_are_gathered_then_added_once_with_every_record_in_order() {
        let mut entries = Vec::new();
        for i in 0..100u32 {
            let mut batch = WriteBatch::default();
            batch.put(i.to_be_bytes(), b"v");
            if i % 10 == 0 {
                batch.delete(i.to_be_bytes());
            }
            entries.push(batch);
        }
        let mut gathered = Gathered::default();
        for entry in &entries {
            gathered.append(entry.data()).unwrap();
        }
        assert!(gathered.append(&[0; 5]).is_err(), "not a representation");
        let mut batch = WriteBatch::default();
        batch.put(b"applied", b"index");
        gathered.add_to(&mut batch);
        assert_eq!(batch.len(), 1 + 100 + 10);
        let mut one_by_one = WriteBatch::default();
        one_by_one.put(b"applied", b"index");
        for entry in &entries {
            append_batch(&mut one_by_one, entry.data()).unwrap();
        }
        assert_eq!(
            batch.data()[8..],
            one_by_one.data()[8..],
            "same records, same order"
        );
        // Started again: the next round holds only its own.
        gathered.add_to(&mut batch);
        assert_eq!(batch.len(), 111);
        gathered.append(entries[1].data()).unwrap();
        let mut next = WriteBatch::default();
        gathered.add_to(&mut next);
        assert_eq!(next.len(), 1);
    }
}
