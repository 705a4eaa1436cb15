//! The `mqd` command: `serve` runs the server; `info`, `put` and `get` talk to a running one over
//! the mqmq protocol for use from a shell.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;
use mqd::client::MqmqClient;
use mqd::config::{self, Config};
use mqd::engine::SyncPolicy;

#[derive(FromArgs)]
/// mqd: a durable message queue for MemcacheQ (memcache text) and mqmq (binary frame) clients.
struct Cli {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Serve(Box<Serve>),
    Info(Info),
    Put(Put),
    Get(Get),
}

#[derive(FromArgs)]
#[argh(subcommand, name = "serve")]
/// run the server (MemcacheQ's short options are accepted too)
struct Serve {
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
    /// event-loop threads (default: one per core)
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
    /// block cache of RocksDB in MB (MemcacheQ's -m; default 64)
    #[argh(option, short = 'm')]
    cache_mb: Option<usize>,
    /// input-buffer bytes all connections together may hold beyond 16 KiB each, k/m/g
    /// suffixes (default 256m): past it, connections with a partial request wait unread
    #[argh(option)]
    input_budget: Option<String>,
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
    /// write the process id to this file
    #[argh(option, short = 'P')]
    pid_file: Option<PathBuf>,
    /// more logging; twice for even more (RUST_LOG overrides)
    #[argh(switch, short = 'v')]
    verbose: u8,
    /// daemon mode (MemcacheQ -d): not supported, run under systemd instead (ignored)
    #[argh(switch, short = 'd')]
    daemon: bool,
    /// user (MemcacheQ -u): ignored (use the systemd unit's User=)
    #[argh(option, short = 'u')]
    user: Option<String>,
    /// remove logs (MemcacheQ -R): ignored, RocksDB manages its own
    #[argh(switch, short = 'R')]
    remove_logs: bool,
    /// checkpoint seconds (MemcacheQ -C): ignored, RocksDB manages its own
    #[argh(option, short = 'C')]
    checkpoint: Option<u64>,
    /// UDP port (MemcacheQ -U): only 0 (off) is accepted
    #[argh(option, short = 'U')]
    udp_port: Option<u16>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "info")]
/// print connections, queues and messages of a running server, as `mqmq info` does
struct Info {
    /// server address (default 127.0.0.1:47774)
    #[argh(option, default = "String::from(\"127.0.0.1:47774\")")]
    addr: String,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "put")]
/// append a message to a queue
struct Put {
    #[argh(positional)]
    queue: String,
    #[argh(positional)]
    message: String,
    /// server address (default 127.0.0.1:47774)
    #[argh(option, default = "String::from(\"127.0.0.1:47774\")")]
    addr: String,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "get")]
/// take the oldest message of a queue and print it (exit 1 if none arrived in time)
struct Get {
    #[argh(positional)]
    queue: String,
    /// milliseconds to wait for a message (default 1)
    #[argh(option, default = "1")]
    wait: u64,
    /// server address (default 127.0.0.1:47774)
    #[argh(option, default = "String::from(\"127.0.0.1:47774\")")]
    addr: String,
}

fn main() -> ExitCode {
    // MemcacheQ users write -vv; argh wants -v -v.
    let args: Vec<String> = std::env::args()
        .flat_map(|arg| match arg.strip_prefix('-') {
            Some(vs) if vs.len() > 1 && vs.bytes().all(|b| b == b'v') => {
                vec!["-v".to_string(); vs.len()]
            }
            _ => vec![arg],
        })
        .collect();
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let cli = match Cli::from_args(&["mqd"], &strs[1..]) {
        Ok(cli) => cli,
        Err(exit) => {
            if exit.status.is_ok() {
                println!("{}", exit.output);
                return ExitCode::SUCCESS;
            }
            eprintln!("{}", exit.output);
            return ExitCode::from(2);
        }
    };
    let verbose = match &cli.command {
        Command::Serve(serve) => serve.verbose,
        _ => 0,
    };
    let default_level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .format_timestamp_millis()
        .init();
    let result = match cli.command {
        Command::Serve(serve) => serve_config(*serve).and_then(mqd::net::server::serve),
        Command::Info(info) => print_info(&info.addr),
        Command::Put(put) => MqmqClient::connect(put.addr.as_str())
            .and_then(|mut c| c.put(put.queue.as_bytes(), put.message.as_bytes()))
            .map_err(|e| e.to_string()),
        Command::Get(get) => match MqmqClient::connect(get.addr.as_str())
            .and_then(|mut c| c.get(get.queue.as_bytes(), get.wait))
        {
            Ok(Some(body)) => {
                use std::io::Write;
                let mut out = std::io::stdout();
                let _ = out.write_all(&body).and_then(|_| out.write_all(b"\n"));
                Ok(())
            }
            Ok(None) => {
                eprintln!("no message in {} ms", get.wait);
                return ExitCode::from(1);
            }
            Err(e) => Err(e.to_string()),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mqd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve_config(args: Serve) -> Result<Config, String> {
    let mut config = Config::default();
    let mut listen = args.listen;
    if args.port.is_some() || args.address.is_some() {
        let ip = args.address.unwrap_or([127, 0, 0, 1].into());
        listen.push(SocketAddr::new(ip, args.port.unwrap_or(22201)));
    }
    if !listen.is_empty() {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(size) = args.max_message_size {
        config.max_message_size = config::parse_size(&size)?;
    }
    config.sync = match (args.sync, args.no_sync) {
        (Some(_), true) => return Err("give --sync or -N, not both".into()),
        (Some(sync), false) => config::parse_sync(&sync)?,
        (None, true) => SyncPolicy::Never,
        (None, false) => SyncPolicy::Always,
    };
    if let Some(threads) = args.threads {
        config.threads = threads;
    }
    if let Some(n) = args.max_connections {
        config.max_connections = n;
    }
    if let Some(n) = args.max_open_reads {
        config.max_open_reads = n;
    }
    config.open_timeout = args.open_timeout.map(std::time::Duration::from_millis);
    config.limits.max_items = args.max_queue_items;
    if let Some(bytes) = args.max_queue_bytes {
        config.limits.max_bytes = Some(config::parse_size(&bytes)? as u64);
    }
    config.limits.discard_old = args.discard_old_when_full;
    if let Some(space) = args.min_free_space {
        config.min_free_bytes = config::parse_size(&space)? as u64;
    }
    if let Some(mb) = args.cache_mb {
        config.cache_bytes = mb << 20;
    }
    config.pid_file = args.pid_file;
    if let Some(size) = args.input_budget {
        config.input_budget = config::parse_size(&size)?;
    }
    let seconds = |s: u64| (s > 0).then(|| std::time::Duration::from_secs(s));
    if let Some(s) = args.request_timeout {
        config.request_timeout = seconds(s);
    }
    config.idle_timeout = args.idle_timeout.and_then(seconds);
    if let Some(n) = args.max_fanout {
        config.max_fanout = n;
    }
    if args.daemon || args.user.is_some() || args.remove_logs || args.checkpoint.is_some() {
        log::warn!("MemcacheQ options -d, -u, -R and -C are accepted and ignored");
    }
    if args.udp_port.unwrap_or(0) != 0 {
        return Err("UDP is not supported: use -U 0 or leave it out".into());
    }
    config::validate(&config)?;
    Ok(config)
}

/// Prints `Info` the way the mqmq tool prints it.
fn print_info(addr: &str) -> Result<(), String> {
    let mut client = MqmqClient::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    let json = client.info().map_err(|e| e.to_string())?;
    let _ = client.quit();
    let info = mqd::protocol::mqmq::parse_info_json(&json)
        .ok_or_else(|| format!("unexpected Info reply: {json}"))?;
    println!("Number of connections: {}", info.connections);
    println!("Number of queues: {}", info.queues.len());
    println!(
        "Number of messages: {}",
        info.queues.iter().map(|(_, n)| n).sum::<u64>()
    );
    println!("Queues:");
    for (name, messages) in &info.queues {
        println!("\t{}: {messages}", String::from_utf8_lossy(name));
    }
    Ok(())
}
