//! Starting and stopping the server: listeners (bound, or inherited from systemd), the engine,
//! the event-loop threads, readiness notification, and a clean stop on SIGTERM or SIGINT that
//! answers what is in flight before it exits. Started as root with `-u`, it binds and opens
//! everything first and then runs as that user.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use mio::{Poll, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::event_loop::{Arrival, EventLoop, LoopWaker, Peer};
use super::identity::{self, Identity};
use super::stream::{self, Listener, SocketFile};
use super::ServerConfig;
use super::{systemd, LoopStats, Shared};
use crate::engine::MemoryBudget;
use crate::engine::{Engine, EngineConfig, Mailbox, Wake as _};

use crate::replication::{ClientHandoff, ClusterConfig, Replica};

/// Serves until SIGTERM or SIGINT.
pub fn serve(config: ServerConfig) -> Result<(), String> {
    serve_then(config, &mut || {})
}

/// Serves until SIGTERM or SIGINT; calls `on_ready` once it listens (after the pid file is
/// written), as it tells systemd.
pub fn serve_then(config: ServerConfig, on_ready: &mut dyn FnMut()) -> Result<(), String> {
    log::debug!("starting with {config:?}");
    super::fd_limit::raise_for(config.max_connections as u64);
    let identity = match &config.user {
        Some(name) => identity::identity_to_assume(name)?,
        None => None,
    };
    // Caught from the start: a stop asked for while the engine opens (priming the WAL takes
    // a moment) is a clean stop once it has opened, not a death by signal.
    let mut signals = Signals::new([SIGTERM, SIGINT]).map_err(|e| e.to_string())?;
    let (listeners, socket_file) = listeners(&config)?;
    let addrs: Vec<String> = listeners.iter().map(Listener::describe).collect();

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

    if config.cluster.is_some() && config.sync != crate::engine::SyncPolicy::Always {
        // A reply waits for its write to be fsynced on a majority of the group.
        return Err("--cluster needs --sync always".into());
    }
    if config.cluster.is_some() {
        // A member that left to drop its damaged copy: emptied before anything opens it.
        crate::replication::resync::wipe_if_decided(&config.data_dir)?;
    }
    let engine = match Engine::start(
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
            prime_wal: config.prime_wal,
            max_queues: config.max_queues,
            queue_memory: config.queue_memory,
            cluster: config.cluster.is_some(),
        },
        mailboxes,
    ) {
        Ok(engine) => engine,
        Err(e) => match &config.cluster {
            Some(cluster) if crate::replication::resync::is_damage(&e) => {
                // No engine, so nobody to serve clients: refused at once, they go elsewhere.
                drop(listeners);
                let damaged = Damaged { cluster, why: &e };
                return serve_damaged(damaged, &config, identity, socket_file, signals, on_ready);
            }
            _ => return Err(e),
        },
    };
    // Under --cluster: the replicated group. Client connections other members forward here
    // arrive on the raft port and go to the loops (`forwarded_clients`, once they exist).
    let clients = ClientHandoff::default();
    let mut replica = match &config.cluster {
        Some(cluster) => {
            engine.check_column_family_ids()?;
            Some(Replica::start(cluster, &engine, clients.clone())?)
        }
        None => None,
    };
    let cluster = replica.as_ref().map(|r| r.status().clone());
    let shared = Arc::new(Shared::new(engine.clone(), &config, cluster));

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
    if replica.is_some() {
        let peers = (handoffs.iter().map(|(sender, _)| sender.clone()))
            .zip(wakers.iter().cloned())
            .map(|(handoff, waker)| Peer { handoff, waker })
            .collect();
        let _ = clients.set(forwarded_clients(shared.clone(), peers));
    }

    write_pid_then_become_user(&config, identity.as_ref(), socket_file.as_ref())?;
    let handles: Vec<_> = loops
        .into_iter()
        .map(|event_loop| {
            std::thread::Builder::new()
                .name(format!("loop-{}", event_loop.index))
                .spawn(move || event_loop.run())
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;

    log::info!(
        "mqd {} serving {} on {} with {threads} event loop{}, sync {:?}",
        env!("CARGO_PKG_VERSION"),
        config.data_dir.display(),
        addrs.join(", "),
        if threads == 1 { "" } else { "s" },
        config.sync
    );
    systemd::notify("READY=1");
    on_ready();

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
    // The raft thread first: it writes to the engine's database, which shutdown flushes. What
    // it leaves unsettled is no lost lead (`Engine::proposal_lost`): the engine stops.
    if let Some(replica) = &mut replica {
        engine.stop_taking_writes();
        replica.stop();
    }
    engine.shutdown();
    stopped(&config, socket_file);
    Ok(())
}

/// The last of a stop: the pid file and the unix socket's file removed.
fn stopped(config: &ServerConfig, socket_file: Option<SocketFile>) {
    if let Some(path) = &config.pid_file {
        let _ = std::fs::remove_file(path);
    }
    drop(socket_file);
    log::info!("stopped");
}

/// A member's database that RocksDB cannot open, damaged: `why`.
struct Damaged<'a> {
    cluster: &'a ClusterConfig,
    why: &'a str,
}

/// Runs a member whose database is damaged past opening (`Replica::start_damaged`) until a stop,
/// or until it leaves to be emptied (exit 75): its quarantine only, no client served.
fn serve_damaged(
    damaged: Damaged,
    config: &ServerConfig,
    identity: Option<Identity>,
    socket_file: Option<SocketFile>,
    mut signals: Signals,
    on_ready: &mut dyn FnMut(),
) -> Result<(), String> {
    log::error!("cannot open {}: {}", config.data_dir.display(), damaged.why);
    let mut replica = Replica::start_damaged(damaged.cluster, &config.data_dir, damaged.why)?;
    write_pid_then_become_user(config, identity.as_ref(), socket_file.as_ref())?;
    systemd::notify("READY=1\nSTATUS=damaged data directory: no client served; waiting to resync");
    on_ready();
    if let Some(signal) = signals.forever().next() {
        log::info!("signal {signal}: stopping");
    }
    systemd::notify("STOPPING=1");
    replica.stop();
    stopped(config, socket_file);
    Ok(())
}

/// Takes the client connections other members forward to this one (on the raft listener's
/// thread): each counts against `--max-connections`, and goes to the loops in turn, flagged as
/// forwarded.
fn forwarded_clients(
    shared: Arc<Shared>,
    peers: Vec<Peer>,
) -> Box<dyn Fn(std::net::TcpStream) + Send + Sync> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    Box::new(move |stream| {
        if shared.shutting_down.load(Ordering::Acquire) {
            return;
        }
        if shared.curr_connections.load(Ordering::Relaxed) >= shared.max_connections {
            log::warn!("refusing a forwarded connection: --max-connections reached");
            return;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            log::warn!("a forwarded connection: {e}");
            return;
        }
        let _ = stream.set_read_timeout(None);
        shared.curr_connections.fetch_add(1, Ordering::Relaxed);
        shared.total_connections.fetch_add(1, Ordering::Relaxed);
        super::forward::received(shared.forwarding.as_ref());
        let Some(peer) = peers.get(next.fetch_add(1, Ordering::Relaxed) % peers.len().max(1))
        else {
            return;
        };
        let arrival = Arrival {
            stream: stream::Stream::Tcp(mio::net::TcpStream::from_std(stream)),
            forwarded: true,
        };
        if peer.handoff.send(arrival).is_ok() {
            peer.waker.wake();
        } else {
            shared.curr_connections.fetch_sub(1, Ordering::Relaxed);
        }
    })
}

/// Writes the pid file (`-P`), then runs as `-u`'s user if given (the pid file removed if that
/// fails), once everything that needs root is open.
fn write_pid_then_become_user(
    config: &ServerConfig,
    identity: Option<&Identity>,
    socket_file: Option<&SocketFile>,
) -> Result<(), String> {
    if let Some(path) = &config.pid_file {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .map_err(|e| format!("cannot write pid file {}: {e}", path.display()))?;
    }
    if let Some(identity) = identity {
        if let Err(e) = become_user(identity, config, socket_file) {
            if let Some(path) = &config.pid_file {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Hands the data directory (and the unix socket, so it can remove it on stop) to `identity`,
/// runs as it from now on, and checks it can still write the data directory (a parent directory
/// it cannot enter would only show later, at the first new file).
fn become_user(
    identity: &Identity,
    config: &ServerConfig,
    socket_file: Option<&SocketFile>,
) -> Result<(), String> {
    // What RocksDB created while opening as root becomes the user's too, so that later starts
    // as that user (with or without -u) find their own files.
    // A data directory reached through a symbolic link is given away where it really is.
    let data_dir = std::fs::canonicalize(&config.data_dir)
        .map_err(|e| format!("{}: {e}", config.data_dir.display()))?;
    identity.take_ownership(&data_dir)?;
    if let Some(SocketFile(path)) = socket_file {
        identity.take_ownership(path)?;
    }
    identity.assume()?;
    if !identity::can_write_dir(&config.data_dir) {
        return Err(format!(
            "-u {}: cannot write {} as that user (check the directories above it)",
            identity.name,
            config.data_dir.display()
        ));
    }
    Ok(())
}

/// Sockets from systemd if it passed any, else the configured addresses; and the unix socket
/// (`-s`), whose file is removed when the returned guard is dropped.
fn listeners(config: &ServerConfig) -> Result<(Vec<Listener>, Option<SocketFile>), String> {
    // The unix socket is bound first: once a TCP port accepts connections (which is how
    // clients and tests see that the server is up), the socket file exists with its mode.
    let mut socket_file = None;
    let mut unix = None;
    if let Some(path) = &config.unix_socket {
        let listener = stream::bind_unix(path, config.unix_mode)?;
        socket_file = Some(SocketFile(path.clone()));
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        unix = Some(Listener::Unix(mio::net::UnixListener::from_std(listener)));
    }
    let passed = systemd::listeners_from_env();
    let mut listeners = Vec::new();
    if passed.is_empty() {
        for addr in &config.listen {
            let listener = std::net::TcpListener::bind(addr)
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            listener.set_nonblocking(true).map_err(|e| e.to_string())?;
            listeners.push(Listener::Tcp(mio::net::TcpListener::from_std(listener)));
        }
    } else {
        log::info!("using {} sockets passed by systemd", passed.len());
        for fd in passed {
            let listener = Listener::from_passed(fd)
                .map_err(|e| format!("a socket passed by systemd: {e}"))?;
            listeners.push(listener);
        }
    }
    if let Some(unix) = unix {
        listeners.push(unix);
    }
    Ok((listeners, socket_file))
}
