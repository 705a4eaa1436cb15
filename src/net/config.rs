//! What the server is told at start, as plain values: addresses, the data directory, limits,
//! budgets and the engine's settings. The command line (`crate::cli`) parses flags into it;
//! `server` starts everything from it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::engine::{QueueLimits, SyncPolicy};

/// Largest message size the protocols allow: mqmq's 32 MiB.
pub const MAX_MESSAGE_SIZE_LIMIT: usize = 32 << 20;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Addresses to listen on (ignored when systemd passes sockets).
    pub listen: Vec<SocketAddr>,
    /// A unix socket to listen on too (MemcacheQ's `-s`), and its permission bits (`-a`).
    pub unix_socket: Option<PathBuf>,
    pub unix_mode: u32,
    pub data_dir: PathBuf,
    pub max_message_size: usize,
    pub sync: SyncPolicy,
    /// Event-loop threads.
    pub threads: usize,
    pub max_connections: usize,
    /// Open (unconfirmed) messages one connection may hold.
    pub max_open_reads: usize,
    /// An open message not confirmed within this time goes back to its queue.
    pub open_timeout: Option<Duration>,
    /// Per-queue limits.
    pub limits: QueueLimits,
    /// Free disk space below which new messages are refused.
    pub min_free_bytes: u64,
    /// Shared RocksDB block cache, bytes.
    pub cache_bytes: usize,
    pub pid_file: Option<PathBuf>,
    /// When started as root, the user to run as once listening (MemcacheQ's `-u`).
    pub user: Option<String>,
    /// Input-buffer bytes all connections together may hold beyond 16 KiB each.
    pub input_budget: usize,
    /// Reply bytes all connections together may hold beyond 64 KiB each.
    pub output_budget: usize,
    /// A request left incomplete this long gets its connection closed.
    pub request_timeout: Option<Duration>,
    /// A connection with no traffic this long is closed (memcached's idle_timeout).
    pub idle_timeout: Option<Duration>,
    /// Most fan-out queues one queue may have.
    pub max_fanout: usize,
    /// Most queues that may exist (None: no limit).
    pub max_queues: Option<u64>,
    /// Memory for the state of queues kept loaded; idle queues beyond it are unloaded.
    pub queue_memory: usize,
    /// Under `--sync always`, prime the WAL before serving (`engine::wal_prime`).
    pub prime_wal: bool,
    /// `--node` and `--cluster`: a member of a replicated group (`crate::replication`).
    pub cluster: Option<crate::replication::ClusterConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            unix_socket: None,
            unix_mode: 0o700,
            data_dir: PathBuf::from("./mqd-data"),
            max_message_size: 1 << 20,
            sync: SyncPolicy::Always,
            threads: default_threads(),
            max_connections: 1024,
            max_open_reads: 100,
            open_timeout: None,
            limits: QueueLimits::default(),
            min_free_bytes: 256 << 20,
            cache_bytes: 64 << 20,
            pid_file: None,
            user: None,
            input_budget: 64 << 20,
            output_budget: 64 << 20,
            request_timeout: Some(Duration::from_secs(60)),
            idle_timeout: None,
            max_fanout: 64,
            max_queues: None,
            queue_memory: 64 << 20,
            prime_wal: true,
            cluster: None,
        }
    }
}

/// MemcacheQ's port and mqmq's port, on loopback; each accepts both protocols.
pub fn default_listen() -> Vec<SocketAddr> {
    vec![
        "127.0.0.1:22201".parse().unwrap(),
        "127.0.0.1:47774".parse().unwrap(),
    ]
}

/// One event loop per core but one, which is left to the WAL syncer (a quarter to a third of
/// the server's CPU under `--sync always` writes) and RocksDB's flushes and compactions; at
/// least one. On two cores one loop served unpipelined gets 25% faster and pipelined set+get
/// pairs 7% faster than two, with 15-17% less CPU per request, and sets as fast: the loops no
/// longer take turns at the commit lock or preempt the syncer.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1).max(1))
        .unwrap_or(1)
}
