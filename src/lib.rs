//! mqd: a durable message-queue server that MemcacheQ clients (memcache text protocol) and mqmq
//! clients (binary frames) can both use, on one port, over one RocksDB-backed queue engine.
//!
//! The data path: `net` (event loops, connections) → `protocol` (pure codecs, one command
//! vocabulary) → `engine` (queues on RocksDB, group commit) → back out through the codec.

pub mod client;
pub mod config;
pub mod engine;
pub mod id_hash;
pub mod logging;
pub mod memcacheq_cli;
pub mod net;
pub mod process;
pub use mqd_protocol as protocol;
pub mod replication;
pub mod serve_args;
pub mod top;
