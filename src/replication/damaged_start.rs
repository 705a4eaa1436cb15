//! A member whose database RocksDB cannot open because a block it reads while opening is
//! damaged (a table file's footer, index or properties: `cannot open DATA_DIR: Corruption: …`).
//! Failing the start would be the single server's answer (`mqd repair` is there for it), but
//! a supervisor would start a member into the same failure for ever, and the group holds what
//! it needs: so the member runs only its quarantine (`quarantine`), as one whose raft state
//! cannot be read does, and once the others hold every committed entry without it, it exits with
//! `resync::EXIT_RESYNC` to be started again on an emptied directory (`resync`).
//!
//! What the quarantine must know (this member's last entry, term and commit) is read from a
//! read-only view of the database holding only the replication column families: RocksDB opens
//! the table files of the column families it is asked for, so damage in the queues' tables (the
//! bulk of the data) leaves the raft state readable. Damage in the raft log's own tables leaves
//! nothing known, and the member waits for an operator (the quarantine's most cautious case).
//!
//! Nothing serves the client port meanwhile: there is no engine to serve it with. Its listeners
//! are closed (clients are refused at once and go to another member, as twemproxy does).

use std::path::Path;
use std::sync::Arc;

use rocksdb::{Options, DB};

use super::group::GroupId;
use super::keys::{RAFT_LOG_CF, STATE_CF};
use super::listener::{ClientHandoff, RaftListener};
use super::peers::ClusterConfig;
use super::quarantine::{self, Quarantine};
use super::tcp::TcpTransport;
use super::{resync, storage, Applier, Mailbox, Node, Outcome, Replica};
use raft::prelude::Entry;
use rocksdb::WriteBatch;

/// The quarantined member's state machine: there is none to apply to; dropping the copy is
/// leaving, to be emptied by the next start.
struct Leaving;

impl Applier for Leaving {
    fn apply(&mut self, _entry: &Entry, _batch: &mut WriteBatch) {}

    fn settled(&mut self, _id: u64, _outcome: Outcome) {}

    fn discard(&mut self) {
        resync::leave();
    }
}

/// What this member's raft state still says, from the replication column families opened
/// read-only (the raft log and `meta`, or the raft log alone): the quarantine's watch and the
/// stored member addresses. `None` when not even the raft log's tables open.
fn read_what_is_left(data_dir: &Path) -> Option<DB> {
    let options = Options::default();
    [vec![RAFT_LOG_CF, STATE_CF], vec![RAFT_LOG_CF]]
        .into_iter()
        .find_map(
            |families| match DB::open_cf_for_read_only(&options, data_dir, families, false) {
                Ok(db) => Some(db),
                Err(e) => {
                    log::warn!("the raft state cannot be read either: {e}");
                    None
                }
            },
        )
}

impl Replica {
    /// Starts member `config.node`, whose database failed to open with `why` (damage), in
    /// quarantine: its raft listener and transport, and a raft thread that records the damage
    /// (`resync::Stage::Damaged`) and waits for the proof that it may drop its copy.
    pub fn start_damaged(
        config: &ClusterConfig,
        data_dir: &Path,
        why: &str,
    ) -> Result<Replica, String> {
        let election = config.timing.tick * config.timing.election_ticks as u32;
        let answer_every = quarantine::answer_every(election);
        let left = read_what_is_left(data_dir);
        let mut peers = config.peers.clone();
        let group = GroupId::default();
        let watch = match &left {
            Some(db) => {
                if let Some(id) = storage::stored_node_id(db).ok().flatten() {
                    if id != config.node {
                        return Err(format!(
                            "{}: this data directory is node {id}'s, not node {}'s",
                            data_dir.display(),
                            config.node
                        ));
                    }
                }
                if let Some(stored) = storage::stored_addresses(db) {
                    peers = stored;
                }
                group.set(storage::stored_group_id(db));
                Quarantine::of_damaged_state(db, config.node, answer_every)
            }
            None => Quarantine::knowing_nothing(config.node, answer_every),
        };
        drop(left);
        let mailbox = Mailbox::new();
        let inputs = mailbox.sender();
        let transport = TcpTransport::start(config.node, &peers, inputs.clone(), group)?;
        let why = format!("cannot open {}: {why}", data_dir.display());
        let node = Node::quarantined(
            watch,
            data_dir.to_path_buf(),
            why,
            mailbox,
            Box::new(transport),
            Box::new(Leaving),
        )?;
        let address = peers
            .get(&config.node)
            .map_or_else(|| config.own_address().to_string(), Clone::clone);
        let listener = RaftListener::start(
            &address,
            config.node,
            Arc::clone(node.status()),
            inputs,
            ClientHandoff::default(),
            None,
        )?;
        Ok(Replica::of(node, listener))
    }
}
