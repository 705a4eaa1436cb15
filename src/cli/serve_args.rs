//! The options of `mqd serve`, mqd's own long ones and every MemcacheQ 0.2.1 short one, and what
//! they add up to: a [`ServerConfig`] for the server and the few things done to the process before it
//! starts (daemon, core limit, logging).

use std::net::SocketAddr;
use std::path::PathBuf;

use argh::FromArgs;

use super::logging::LogFormat;
use super::parse as config;
use crate::engine::SyncPolicy;
use crate::net::ServerConfig;

#[derive(FromArgs)]
#[argh(subcommand, name = "serve")]
/// run the server (MemcacheQ's short options are accepted too; -h lists them)
pub struct Serve {
    /// address to listen on, repeatable (default 127.0.0.1:22201 and 127.0.0.1:47774; either
    /// port speaks both protocols)
    #[argh(option)]
    listen: Vec<SocketAddr>,
    /// TCP port, MemcacheQ style (with -l, replaces the default listeners)
    #[argh(option, short = 'p')]
    port: Option<u16>,
    /// address for -p, MemcacheQ style (default 127.0.0.1)
    #[argh(option, short = 'l')]
    address: Option<std::net::IpAddr>,
    /// unix socket to listen on too (MemcacheQ -s; alone, without TCP listeners)
    #[argh(option, short = 's')]
    unix_socket: Option<PathBuf>,
    /// permission bits of the unix socket, octal (MemcacheQ -a; default 0700)
    #[argh(option, short = 'a')]
    unix_mode: Option<String>,
    /// data directory (default ./mqd-data)
    #[argh(option, short = 'H')]
    data_dir: Option<PathBuf>,
    /// largest message in bytes, k/m suffixes allowed (default 1m, at most 32m)
    #[argh(option, short = 'B')]
    max_message_size: Option<String>,
    /// when a write is durable: always (fsync before acknowledging, default), interval:<ms>,
    /// or none
    #[argh(option)]
    sync: Option<String>,
    /// same as --sync none (MemcacheQ's -N)
    #[argh(switch, short = 'N')]
    no_sync: bool,
    /// event-loop threads (default: one per core but one, at least one)
    #[argh(option, short = 't')]
    threads: Option<usize>,
    /// most simultaneous connections (default 1024)
    #[argh(option, short = 'c')]
    max_connections: Option<usize>,
    /// most open (unconfirmed) messages one connection may hold (default 100)
    #[argh(option)]
    max_open_reads: Option<usize>,
    /// an open message not confirmed within this many milliseconds goes back to its queue
    /// (default: never)
    #[argh(option)]
    open_timeout: Option<u64>,
    /// most messages one queue may hold (default: no limit)
    #[argh(option)]
    max_queue_items: Option<u64>,
    /// most message bytes one queue may hold, k/m suffixes allowed (default: no limit)
    #[argh(option)]
    max_queue_bytes: Option<String>,
    /// refuse new messages while the data directory's disk has less free space than this
    /// (k/m/g suffixes; default 256m; 0 turns the check off)
    #[argh(option)]
    min_free_space: Option<String>,
    /// when a queue is full, drop its oldest messages instead of refusing new ones
    #[argh(switch)]
    discard_old_when_full: bool,
    /// input-buffer bytes all connections together may hold beyond 16 KiB each, k/m/g
    /// suffixes (default 64m): past it, connections with a partial request wait unread
    #[argh(option)]
    input_budget: Option<String>,
    /// reply bytes all connections together may hold beyond 64 KiB each, k/m/g suffixes
    /// (default 64m): past it, connections with unsent replies run no more commands, and reads
    /// wait for room for large messages, until clients read
    #[argh(option)]
    output_budget: Option<String>,
    /// close a connection whose request stays incomplete this many seconds (default 60; 0: never)
    #[argh(option)]
    request_timeout: Option<u64>,
    /// close a connection with no traffic for this many seconds, unless it waits on the
    /// server (default 0: never, as memcached)
    #[argh(option)]
    idle_timeout: Option<u64>,
    /// most fan-out queues (`<queue>+<child>`) one queue may have (default 64)
    #[argh(option)]
    max_fanout: Option<usize>,
    /// most queues that may exist; a set that would create one more is refused (default: no
    /// limit)
    #[argh(option)]
    max_queues: Option<u64>,
    /// memory for the state of queues kept loaded, k/m/g suffixes (default 64m, about 100,000
    /// queues): past it, idle queues are unloaded (their record on disk is enough) and loaded
    /// again when used
    #[argh(option)]
    queue_memory: Option<String>,
    /// under --sync always, do not write two WAL files' worth of filler before serving (by
    /// default it does, so that fsyncs overwrite blocks in place from the first write)
    #[argh(switch)]
    no_wal_prime: bool,
    /// this node's id in --cluster
    #[argh(option)]
    node: Option<u64>,
    /// the replicated group, every member as ID=HOST:PORT (its replication address),
    /// comma-separated; this node listens on its own (protocol-spec/cluster.md)
    #[argh(option)]
    cluster: Option<String>,
    /// with --cluster, the raft tick in milliseconds (default 50): heartbeats every 2 ticks,
    /// elections after 10 to 20 ticks without a leader
    #[argh(option)]
    raft_tick_ms: Option<u64>,
    /// with --cluster, join a group whose first member seeds it with a single server's queues:
    /// start empty, never campaign, and take the state from that member's snapshot
    /// (protocol-spec/cluster.md 5)
    #[argh(switch)]
    join: bool,
    /// with --cluster, compact the raft log once it holds more entries than this (default
    /// 10000; a quarter is kept behind the applied index)
    #[argh(option)]
    raft_log_entries: Option<u64>,
    /// block cache of RocksDB in MB (MemcacheQ's -m; default 64)
    #[argh(option, short = 'm')]
    cache_mb: Option<usize>,
    /// write the process id to this file
    #[argh(option, short = 'P')]
    pid_file: Option<PathBuf>,
    /// more logging; twice for even more (RUST_LOG overrides)
    #[argh(switch, short = 'v')]
    verbose: u8,
    /// log line format: auto (journal when stderr is systemd's journal), plain or journal
    /// (`<N>` priority prefixes, no timestamp)
    #[argh(option)]
    log_format: Option<String>,
    /// run as a daemon (MemcacheQ -d); returns once the server listens, or fails with its error
    #[argh(switch, short = 'd')]
    daemon: bool,
    /// raise the core-file size limit to the maximum (MemcacheQ -r)
    #[argh(switch, short = 'r')]
    raise_core_limit: bool,
    /// when started as root, run as this user once listening (MemcacheQ -u)
    #[argh(option, short = 'u')]
    user: Option<String>,
    /// UDP port (MemcacheQ -U): only 0 (off) is accepted
    #[argh(option, short = 'U')]
    udp_port: Option<u16>,
    /// print MemcacheQ-style usage and exit
    #[argh(switch, short = 'h')]
    usage: bool,
    /// print the license and exit
    #[argh(switch, short = 'i')]
    license: bool,
    /// no effect: MemcacheQ's BerkeleyDB page size (-A)
    #[argh(option, short = 'A')]
    bdb_page_size: Option<u64>,
    /// no effect: MemcacheQ's BerkeleyDB log buffer in KB (-L)
    #[argh(option, short = 'L')]
    bdb_log_buffer: Option<u64>,
    /// no effect: MemcacheQ's BerkeleyDB checkpoint seconds (-C)
    #[argh(option, short = 'C')]
    bdb_checkpoint: Option<u64>,
    /// no effect: MemcacheQ's BerkeleyDB memp_trickle seconds (-T)
    #[argh(option, short = 'T')]
    bdb_trickle: Option<u64>,
    /// no effect: MemcacheQ's BerkeleyDB queue size check seconds (-S)
    #[argh(option, short = 'S')]
    bdb_size_check: Option<u64>,
    /// no effect: MemcacheQ's BerkeleyDB clean page percentage (-e)
    #[argh(option, short = 'e')]
    bdb_clean_percent: Option<u64>,
    /// no effect: MemcacheQ's BerkeleyDB file size in MB (-E)
    #[argh(option, short = 'E')]
    bdb_file_size: Option<u64>,
    /// no effect: MemcacheQ's BerkeleyDB deadlock detection ms (-D)
    #[argh(option, short = 'D')]
    bdb_deadlock: Option<u64>,
    /// no effect: MemcacheQ's BerkeleyDB log removal (-R)
    #[argh(switch, short = 'R')]
    bdb_remove_logs: bool,
}

/// What `mqd serve` was asked to do.
pub enum Start {
    /// `-h`: print MemcacheQ-style usage.
    Usage,
    /// `-i`: print the license.
    License,
    Run(Box<Plan>),
}

/// A server to run, and what to do to the process first.
pub struct Plan {
    pub config: ServerConfig,
    pub daemon: bool,
    pub raise_core_limit: bool,
    /// None: decide from the environment (the journal or not).
    pub log_format: Option<LogFormat>,
    pub verbose: u8,
    /// MemcacheQ options given that do nothing here, as typed (`-L 1024 -R`), for one log line.
    pub without_effect: Vec<String>,
}

impl Serve {
    /// Checks the options and turns them into a plan.
    pub fn plan(self) -> Result<Start, String> {
        if self.usage {
            return Ok(Start::Usage);
        }
        if self.license {
            return Ok(Start::License);
        }
        if self.udp_port.unwrap_or(0) != 0 {
            return Err("-U: mqd has no UDP; use -U 0 or leave it out".into());
        }
        let without_effect = self.without_effect();
        let log_format = match &self.log_format {
            Some(text) => LogFormat::parse(text)?,
            None => None,
        };
        Ok(Start::Run(Box::new(Plan {
            daemon: self.daemon,
            raise_core_limit: self.raise_core_limit,
            log_format,
            verbose: self.verbose,
            without_effect,
            config: self.config()?,
        })))
    }

    fn without_effect(&self) -> Vec<String> {
        let numbers = [
            ('A', self.bdb_page_size),
            ('L', self.bdb_log_buffer),
            ('C', self.bdb_checkpoint),
            ('T', self.bdb_trickle),
            ('S', self.bdb_size_check),
            ('e', self.bdb_clean_percent),
            ('E', self.bdb_file_size),
            ('D', self.bdb_deadlock),
        ];
        let mut given: Vec<String> = numbers
            .iter()
            .filter_map(|(letter, value)| value.map(|v| format!("-{letter} {v}")))
            .collect();
        if self.bdb_remove_logs {
            given.push("-R".into());
        }
        given
    }

    fn config(self) -> Result<ServerConfig, String> {
        let mut config = ServerConfig::default();
        let mut listen = self.listen;
        if self.port.is_some() || self.address.is_some() {
            let ip = self.address.unwrap_or([127, 0, 0, 1].into());
            listen.push(SocketAddr::new(ip, self.port.unwrap_or(22201)));
        }
        if !listen.is_empty() {
            config.listen = listen;
        } else if self.unix_socket.is_some() {
            // MemcacheQ's -s alone means no network.
            config.listen = Vec::new();
        }
        config.unix_socket = self.unix_socket;
        if let Some(mode) = self.unix_mode {
            config.unix_mode = u32::from_str_radix(&mode, 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    format!("-a {mode:?}: expected octal permission bits such as 0700")
                })?;
        }
        if let Some(dir) = self.data_dir {
            config.data_dir = dir;
        }
        if let Some(size) = self.max_message_size {
            config.max_message_size = config::parse_size(&size)?;
        }
        config.sync = match (self.sync, self.no_sync) {
            (Some(_), true) => return Err("give --sync or -N, not both".into()),
            (Some(sync), false) => config::parse_sync(&sync)?,
            (None, true) => SyncPolicy::Never,
            (None, false) => SyncPolicy::Always,
        };
        if let Some(threads) = self.threads {
            config.threads = threads;
        }
        if let Some(n) = self.max_connections {
            config.max_connections = n;
        }
        if let Some(n) = self.max_open_reads {
            config.max_open_reads = n;
        }
        config.open_timeout = self.open_timeout.map(std::time::Duration::from_millis);
        config.limits.max_items = self.max_queue_items;
        if let Some(bytes) = self.max_queue_bytes {
            config.limits.max_bytes = Some(config::parse_size(&bytes)? as u64);
        }
        config.limits.discard_old = self.discard_old_when_full;
        if let Some(space) = self.min_free_space {
            config.min_free_bytes = config::parse_size(&space)? as u64;
        }
        if let Some(mb) = self.cache_mb {
            config.cache_bytes = mb << 20;
        }
        config.pid_file = self.pid_file;
        config.user = self.user;
        if let Some(size) = self.input_budget {
            config.input_budget = config::parse_size(&size)?;
        }
        if let Some(size) = self.output_budget {
            config.output_budget = config::parse_size(&size)?;
        }
        let seconds = |s: u64| (s > 0).then(|| std::time::Duration::from_secs(s));
        if let Some(s) = self.request_timeout {
            config.request_timeout = seconds(s);
        }
        config.idle_timeout = self.idle_timeout.and_then(seconds);
        if let Some(n) = self.max_fanout {
            config.max_fanout = n;
        }
        config.max_queues = self.max_queues;
        if let Some(size) = self.queue_memory {
            config.queue_memory = config::parse_size(&size)?;
        }
        config.prime_wal = !self.no_wal_prime;
        config.cluster = crate::replication::ClusterConfig::parse(
            self.node,
            self.cluster.as_deref(),
            self.raft_tick_ms,
            self.raft_log_entries,
            self.join,
        )?;
        config::validate(&config)?;
        Ok(config)
    }
}
