//! Everything the server is told at start, parsed and checked once: the flags of `mqd serve`
//! (including MemcacheQ's short options) become one [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::engine::{QueueLimits, SyncPolicy};

/// Largest message size the protocols allow: mqmq's 32 MiB.
pub const MAX_MESSAGE_SIZE_LIMIT: usize = 32 << 20;

#[derive(Clone, Debug)]
pub struct Config {
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

impl Default for Config {
    fn default() -> Self {
        Config {
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

/// `always`, `none`, or `interval:<ms>`.
pub fn parse_sync(text: &str) -> Result<SyncPolicy, String> {
    match text {
        "always" => Ok(SyncPolicy::Always),
        "none" => Ok(SyncPolicy::Never),
        _ => match text.strip_prefix("interval:").map(str::parse::<u64>) {
            Some(Ok(ms)) if ms > 0 => Ok(SyncPolicy::Interval(Duration::from_millis(ms))),
            _ => Err(format!(
                "bad --sync {text:?}: expected always, none or interval:<ms> (ms > 0)"
            )),
        },
    }
}

/// A size in bytes, with an optional k/m/g suffix (MemcacheQ's -B takes plain bytes).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let lower = text.to_ascii_lowercase();
    let (digits, unit) = match lower.as_bytes().last() {
        Some(b'k') => (&lower[..lower.len() - 1], 1 << 10),
        Some(b'm') => (&lower[..lower.len() - 1], 1 << 20),
        Some(b'g') => (&lower[..lower.len() - 1], 1 << 30),
        _ => (lower.as_str(), 1),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("bad size {text:?}"))
}

/// Checks that the combination makes sense.
pub fn validate(config: &Config) -> Result<(), String> {
    if config.max_message_size == 0 || config.max_message_size > MAX_MESSAGE_SIZE_LIMIT {
        return Err(format!(
            "--max-message-size must be between 1 and {MAX_MESSAGE_SIZE_LIMIT} bytes"
        ));
    }
    if config.threads == 0 || config.threads > 256 {
        return Err("--threads must be between 1 and 256".into());
    }
    if config.listen.is_empty() && config.unix_socket.is_none() {
        return Err("nothing to listen on".into());
    }
    if config.max_connections == 0 {
        return Err("--max-connections must be at least 1".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_policies() {
        assert_eq!(parse_sync("always"), Ok(SyncPolicy::Always));
        assert_eq!(parse_sync("none"), Ok(SyncPolicy::Never));
        assert_eq!(
            parse_sync("interval:100"),
            Ok(SyncPolicy::Interval(Duration::from_millis(100)))
        );
        assert!(parse_sync("interval:0").is_err());
        assert!(parse_sync("sometimes").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert_eq!(parse_size("3g"), Ok(3 << 30));
        assert!(parse_size("x").is_err());
    }
}
