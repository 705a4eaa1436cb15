//! mqd: a durable message-queue server that MemcacheQ clients (memcache text protocol) and mqmq
//! clients (binary frames) can both use, on one port, over one RocksDB-backed queue engine.
//!
//! The data path: `net` (event loops, connections) → `protocol` (pure codecs, one command
//! vocabulary) → `engine` (queues on RocksDB, group commit) → back out through the codec.
//! Around it: `cli` (the command line, which builds the server's config), `client` (blocking
//! clients for the command line, the bench tool and tests) and `id_hash` (the hash maps keyed by
//! ids that the engine and the event loops share). `replication`: Raft between `--cluster` nodes
//! (tikv's raft-rs): the leader's engine proposes its write batches, every node applies them.

pub mod cli;
pub mod client;
pub mod engine;
pub mod id_hash;
pub mod net;
pub use mqd_protocol as protocol;
pub mod replication;
#[cfg(test)]
pub(crate) mod test_dir;
