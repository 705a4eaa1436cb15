//! Replication (issue 22): a group of mqd nodes keeps one log with Raft, through tikv's raft-rs,
//! which does the consensus. This module supplies what raft-rs leaves to its user: the log's
//! storage on RocksDB (`storage`, laid out as `keys` says), the raft thread that drives a
//! `RawNode` and persists each `Ready` before it sends or applies what depends on it (`driver`,
//! `ready`, `apply`; the fsync is the engine's, through `WalSync`), and the transport between processes (`tcp` out,
//! `listener` in, `frame` on the wire) behind the `Transport` it sends through; the
//! `listener` also takes the client connections other members forward to this one
//! (`FORWARD_MARKER`) and hands them to the server (`ClientHandoff`), and snapshot transfers
//! (`snapshot`: made, sent, received and installed when a follower needs entries the leader
//! compacted away, `installing` without stopping the raft thread; `compaction` decides when a node drops the head of its log), and
//! membership changes online (`membership` on the raft thread, `members` the address map the
//! log carries, `admin` the `mqd cluster` requests). The state machine is the queue engine
//! (`replica`): entries are its write batches. `mqd serve --node --cluster` runs a `Replica`.
//! Nothing here runs without `--cluster`.
//!
//! How it works and what step 4 needs: `docs/replication.md`.

pub mod admin;
mod apply;
#[cfg(test)]
mod cluster_tests;
pub mod compaction;
mod damaged_start;
#[cfg(test)]
pub mod db;
pub mod driver;
mod frame;
pub mod group;
mod installing;
pub mod keys;
pub mod listener;
pub mod members;
mod membership;
pub mod peers;
mod quarantine;
mod ready;
pub mod replica;
pub mod resync;
pub mod slog_bridge;
pub mod snapshot;
pub mod status;
pub mod storage;
pub mod tcp;
#[cfg(test)]
mod test_support;
pub mod transport;

pub use apply::{Applier, Outcome};
pub use compaction::LogLimits;
pub use driver::{Input, Mailbox, Node, NodeConfig, Synced, Timing, WalSync};
pub use listener::{ClientHandoff, FORWARD_MARKER};
pub use peers::ClusterConfig;
pub use replica::Replica;
