//! The `mqd` command: `serve` runs the server; `info`, `put` and `get` talk to a running one over
//! the mqmq protocol for use from a shell; `top` watches one over HTTP; `repair` drops the
//! messages a damaged table file made unreadable, with the server stopped; `cluster` shows and
//! changes a replicated group's membership.

use std::process::ExitCode;

use argh::FromArgs;
use mqd::cli::cluster::Cluster;
use mqd::cli::logging::{self, LogFormat};
use mqd::cli::memcacheq_cli;
use mqd::cli::process;
use mqd::cli::repair::Repair;
use mqd::cli::serve_args::{Plan, Serve, Start};
use mqd::client::MqmqClient;

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
    Top(Top),
    Repair(Repair),
    Cluster(Cluster),
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

#[derive(FromArgs)]
#[argh(subcommand, name = "top")]
/// watch a running server's queues (depth, rates, oldest age), refreshing; q quits
struct Top {
    /// server address (default 127.0.0.1:22201)
    #[argh(option, default = "String::from(\"127.0.0.1:22201\")")]
    addr: String,
    /// milliseconds between refreshes (default 1000)
    #[argh(option, default = "1000")]
    interval: u64,
    /// stop after this many refreshes (default 0: until q)
    #[argh(option, default = "0")]
    iterations: u64,
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "serve") {
        // MemcacheQ users write -vv, -dr, -p22201; argh wants separate words.
        args = [
            vec!["serve".to_string()],
            memcacheq_cli::split_short_options(&args[1..]),
        ]
        .concat();
    }
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let cli = match Cli::from_args(&["mqd"], &strs) {
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
    if !matches!(cli.command, Command::Serve(_)) {
        logging::init("info", LogFormat::detect());
    }
    let command = match cli.command {
        Command::Repair(repair) => return repair.run(),
        Command::Cluster(cluster) => return cluster.run(),
        command => command,
    };
    let result = match command {
        Command::Serve(serve) => match serve.plan() {
            Ok(Start::Usage) => print_out(&format!("{}\n", memcacheq_cli::USAGE)),
            Ok(Start::License) => print_out(memcacheq_cli::LICENSE),
            Ok(Start::Run(plan)) => run(*plan),
            Err(e) => Err(e),
        },
        Command::Repair(_) | Command::Cluster(_) => Ok(()),
        Command::Info(info) => print_info(&info.addr),
        Command::Top(top) => mqd::cli::top::run(
            &top.addr,
            std::time::Duration::from_millis(top.interval.max(100)),
            top.iterations,
        ),
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

/// `mqd serve`: logging, then what MemcacheQ's process options ask (core limit, daemon), then
/// the server. A daemon's start-up error goes back to the shell that started it.
fn run(mut plan: Plan) -> Result<(), String> {
    let level = match plan.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let format = plan.log_format.unwrap_or_else(LogFormat::detect);
    process::tune_allocator();
    logging::init(level, format);
    if !plan.without_effect.is_empty() {
        log::info!(
            "MemcacheQ's BerkeleyDB options {} have no effect here: RocksDB sizes its own caches, \
             logs and files",
            plan.without_effect.join(" ")
        );
    }
    if plan.raise_core_limit {
        let limit = process::raise_core_limit()?;
        log::info!("core file limit raised to {}", core_limit_text(limit));
    }
    let mut startup = None;
    if plan.daemon {
        let config = &mut plan.config;
        for path in [
            Some(&mut config.data_dir),
            config.pid_file.as_mut(),
            config.unix_socket.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            *path = std::path::absolute(&*path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        let keep_stderr = process::stderr_is_file() || logging::stderr_is_journal();
        startup = Some(process::daemonize(keep_stderr)?);
    }
    let result = mqd::net::server::serve_then(plan.config, &mut || {
        if let Some(pipe) = startup.take() {
            pipe.ready();
        }
    });
    if let (Err(e), Some(pipe)) = (&result, startup.take()) {
        // The parent prints it, on the shell's stderr; printing it here too would double it
        // when the daemon kept that stderr.
        pipe.failed(e);
        std::process::exit(1);
    }
    result
}

/// Prints to stdout; a reader that went away (`| head`) is not an error.
fn print_out(text: &str) -> Result<(), String> {
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
    Ok(())
}

fn core_limit_text(limit: u64) -> String {
    if limit == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        format!("{limit} bytes")
    }
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
