//! A node of a replicated group as `mqd serve --node N --cluster …` runs it today: its raft
//! state in the engine's database (`raft_log` column family), TCP to its peers, elections and heartbeats, its role and term
//! published for `stats`. Nothing is proposed yet: the queue engine still writes alone (plan
//! step 4 proposes its write batches here and applies them on every node).

use std::collections::BTreeSet;
use std::sync::Arc;

use raft::prelude::Entry;
use rocksdb::{WriteBatch, DB};

use super::listener::RaftListener;
use super::peers::ClusterConfig;
use super::status::Status;
use super::tcp::TcpTransport;
use super::{Applier, Input, Mailbox, Node, NodeConfig, Outcome, Synced, WalSync};
use crate::engine::Engine;

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

/// The raft thread's writes are fsynced by the engine's syncer: one WAL, one fsync.
struct EngineSync(Arc<Engine>);

impl WalSync for EngineSync {
    fn request(&self, number: u64) {
        self.0.request_wal_sync(number);
    }
}

impl Replica {
    /// Starts node `config.node` with its raft state in the engine's database, fsynced by the
    /// engine's syncer.
    pub fn start(config: &ClusterConfig, engine: &Arc<Engine>) -> Result<Replica, String> {
        let db: Arc<DB> = engine.database();
        let mailbox = Mailbox::new();
        let inputs = mailbox.sender();
        {
            let inputs = inputs.clone();
            engine.report_wal_syncs(move |number| {
                let _ = inputs.send(Input::Synced(Synced::UpTo(number)));
            });
        }
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
            Box::new(EngineSync(engine.clone())),
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
