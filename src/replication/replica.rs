//! A node of a replicated group as `mqd serve --node N --cluster …` runs it today: its raft
//! state in `<data dir>/raft`, TCP to its peers, elections and heartbeats, its role and term
//! published for `stats`. Nothing is proposed yet: the queue engine still writes alone (plan
//! step 4 proposes its write batches here and applies them on every node).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use raft::prelude::Entry;
use rocksdb::WriteBatch;

use super::listener::RaftListener;
use super::peers::ClusterConfig;
use super::status::Status;
use super::tcp::TcpTransport;
use super::{db, Applier, Mailbox, Node, NodeConfig, Outcome};

/// The directory, inside the data directory, of the replication database.
pub const RAFT_DIR: &str = "raft";

pub struct Replica {
    node: Node,
    listener: RaftListener,
}

/// Until step 4: no entry has data, since nothing proposes.
struct NothingApplied;

impl Applier for NothingApplied {
    fn apply(&mut self, entry: &Entry, _batch: &mut WriteBatch) {
        log::warn!(
            "raft entry {} ignored: nothing applies entries yet",
            entry.index
        );
    }

    fn settled(&mut self, _id: u64, _outcome: Outcome) {}
}

impl Replica {
    pub fn start(config: &ClusterConfig, data_dir: &Path) -> Result<Replica, String> {
        let db = db::open(&data_dir.join(RAFT_DIR))?;
        let mailbox = Mailbox::new();
        let inputs = mailbox.sender();
        let transport = TcpTransport::start(config.node, &config.peers, inputs.clone())?;
        // The node first: a directory of another node is refused before anything listens.
        let node = Node::start(
            NodeConfig {
                id: config.node,
                founders: config.ids(),
                timing: config.timing,
            },
            db,
            mailbox,
            Box::new(transport),
            Box::new(NothingApplied),
        )?;
        let peers: BTreeSet<u64> = config
            .ids()
            .into_iter()
            .filter(|&id| id != config.node)
            .collect();
        let listener = RaftListener::start(config.own_address(), config.node, peers, inputs)?;
        Ok(Replica { node, listener })
    }

    pub fn status(&self) -> &Arc<Status> {
        self.node.status()
    }

    pub fn stop(&mut self) {
        self.listener.stop();
        self.node.stop();
    }
}
