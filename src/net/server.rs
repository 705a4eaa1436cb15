//! Starting and stopping the server: listeners (bound, or inherited from systemd), the engine,
//! the event-loop threads, readiness notification, and a clean stop on SIGTERM or SIGINT that
//! answers what is in flight before it exits.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use mio::{Poll, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::budget::{Budget, WriteBudget, MAX_WRITES, MAX_WRITE_BYTES};
use super::event_loop::{EventLoop, LoopWaker, Peer};
use super::{systemd, LoopStats, Shared};
use crate::config::Config;
use crate::engine::store::MemoryBudget;
use crate::engine::{Engine, EngineConfig, Mailbox};
use crate::protocol::Limits;

/// Serves until SIGTERM or SIGINT.
pub fn serve(config: Config) -> Result<(), String> {
    let listeners = listeners(&config)?;
    let addrs: Vec<String> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect();

    let threads = config.threads;
    let mut polls = Vec::new();
    let mut wakers = Vec::new();
    let mut mailboxes = Vec::new();
    let mut mailbox_receivers = Vec::new();
    let mut handoffs = Vec::new();
    for _ in 0..threads {
        let poll = Poll::new().map_err(|e| e.to_string())?;
        let waker = Waker::new(poll.registry(), mio::Token(0)).map_err(|e| e.to_string())?;
        let waker = Arc::new(LoopWaker::new(waker));
        let (sender, receiver) = crossbeam_channel::unbounded();
        mailboxes.push(Mailbox {
            sender,
            waker: waker.clone(),
        });
        mailbox_receivers.push(receiver);
        handoffs.push(crossbeam_channel::unbounded());
        polls.push(poll);
        wakers.push(waker);
    }

    let engine = Engine::start(
        EngineConfig {
            data_dir: config.data_dir.clone(),
            sync: config.sync,
            memory: MemoryBudget {
                block_cache: config.cache_bytes,
                ..MemoryBudget::default()
            },
            limits: config.limits,
            min_free_bytes: config.min_free_bytes,
            max_fanout: config.max_fanout,
        },
        mailboxes,
    )?;
    let limits = Limits {
        max_message_size: config.max_message_size,
    };
    let shared = Arc::new(Shared {
        engine: engine.clone(),
        limits,
        input_limit: crate::protocol::input_limit(&limits),
        input_budget: Budget::new(config.input_budget),
        writes: WriteBudget::new(MAX_WRITES, MAX_WRITE_BYTES),
        request_timeout: config.request_timeout,
        idle_timeout: config.idle_timeout,
        max_connections: config.max_connections as u64,
        max_open_reads: config.max_open_reads,
        open_timeout: config.open_timeout,
        threads,
        started: Instant::now(),
        curr_connections: AtomicU64::new(0),
        total_connections: AtomicU64::new(0),
        loop_stats: OnceLock::new(),
        shutting_down: AtomicBool::new(false),
    });

    let stats: Vec<Arc<LoopStats>> = (0..threads).map(|_| Arc::default()).collect();
    let _ = shared.loop_stats.set(stats.clone());
    let mut loops = Vec::new();
    for (index, (poll, receiver)) in polls.into_iter().zip(mailbox_receivers).enumerate() {
        loops.push(EventLoop::new(
            index as u32,
            poll,
            wakers[index].clone(),
            handoffs[index].1.clone(),
            receiver,
            shared.clone(),
            stats[index].clone(),
        ));
    }
    loops[0].peers = handoffs
        .iter()
        .zip(&wakers)
        .map(|((sender, _), waker)| Peer {
            handoff: sender.clone(),
            waker: waker.clone(),
        })
        .collect();
    loops[0].listen(listeners).map_err(|e| e.to_string())?;

    let mut signals = Signals::new([SIGTERM, SIGINT]).map_err(|e| e.to_string())?;
    let handles: Vec<_> = loops
        .into_iter()
        .map(|event_loop| {
            std::thread::Builder::new()
                .name(format!("loop-{}", event_loop.index))
                .spawn(move || event_loop.run())
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;

    if let Some(path) = &config.pid_file {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .map_err(|e| format!("cannot write pid file {}: {e}", path.display()))?;
    }
    log::info!(
        "mqd {} serving {} on {} with {threads} event loops, sync {:?}",
        env!("CARGO_PKG_VERSION"),
        config.data_dir.display(),
        addrs.join(", "),
        config.sync
    );
    systemd::notify("READY=1");

    if let Some(signal) = signals.forever().next() {
        log::info!("signal {signal}: stopping");
    }
    systemd::notify("STOPPING=1");
    shared.shutting_down.store(true, Ordering::Release);
    for waker in &wakers {
        waker.force();
    }
    for handle in handles {
        if handle.join().is_err() {
            log::error!("an event loop panicked");
        }
    }
    engine.shutdown();
    if let Some(path) = &config.pid_file {
        let _ = std::fs::remove_file(path);
    }
    log::info!("stopped");
    Ok(())
}

/// Sockets from systemd if it passed any, else the configured addresses.
fn listeners(config: &Config) -> Result<Vec<mio::net::TcpListener>, String> {
    let mut std_listeners = systemd::listeners_from_env();
    if std_listeners.is_empty() {
        for addr in &config.listen {
            let listener = std::net::TcpListener::bind(addr)
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            std_listeners.push(listener);
        }
    } else {
        log::info!("using {} sockets passed by systemd", std_listeners.len());
    }
    std_listeners
        .into_iter()
        .map(|l| {
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            Ok(mio::net::TcpListener::from_std(l))
        })
        .collect()
}
