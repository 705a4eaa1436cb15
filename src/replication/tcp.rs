//! The transport between processes: one outgoing TCP connection per peer, each with a writer
//! thread fed by a bounded queue, so the raft thread never waits on a socket. A peer that
//! cannot be reached is reported to raft-rs (`report_unreachable`: it stops streaming appends
//! and probes), and what was queued for it is dropped: raft-rs sends again what still matters.
//! Incoming connections are `listener`'s.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use raft::prelude::{Message, MessageType};

use super::driver::Input;
use super::frame;
use super::group::GroupId;
use super::snapshot::send::SnapshotSender;
use super::transport::Transport;

/// Messages queued for one peer before more are dropped.
const QUEUE: usize = 4096;
/// How long a connection attempt may take: a heartbeat interval or so.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
/// After a failed attempt, messages are dropped without trying again for this long.
const RETRY_AFTER: Duration = Duration::from_millis(100);
/// A peer that stops reading for this long loses its connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// A peer that acknowledges nothing for this long (its link is down: no reset ever comes) loses
/// its connection, which is then made again every `RETRY_AFTER`. Without it a partitioned peer
/// is reached again only at the kernel's next retransmission after the link heals, whose
/// back-off grows to two minutes: a node cut off for 60 s rejoined 46 s after the heal.
const PEER_SILENT_FOR: Duration = Duration::from_secs(5);

pub struct TcpTransport {
    me: u64,
    /// Each peer's address and its writer's queue (dropping it ends the writer).
    queues: HashMap<u64, (String, Sender<Message>)>,
    inputs: Sender<Input>,
    /// Where `MsgSnapshot`s go (their files need a connection of their own).
    snapshots: Option<SnapshotSender>,
    /// This node's group, stated first on every connection (`group`).
    group: GroupId,
}

impl TcpTransport {
    /// Starts a writer thread for every peer in `peers` (id -> `HOST:PORT`) but `me`.
    /// Unreachable peers are reported to `inputs`.
    /// Every connection states `group` first.
    pub fn start(
        me: u64,
        peers: &std::collections::BTreeMap<u64, String>,
        inputs: Sender<Input>,
        group: GroupId,
    ) -> Result<TcpTransport, String> {
        let mut transport = TcpTransport {
            me,
            queues: HashMap::new(),
            inputs,
            snapshots: None,
            group,
        };
        for (&id, addr) in peers.iter().filter(|(&id, _)| id != me) {
            transport.start_writer(id, addr)?;
        }
        Ok(transport)
    }

    fn start_writer(&mut self, id: u64, addr: &str) -> Result<(), String> {
        let (sender, receiver) = crossbeam_channel::bounded(QUEUE);
        let writer = Writer {
            peer: id,
            addr: addr.to_string(),
            inputs: self.inputs.clone(),
            stream: None,
            retry_at: Instant::now(),
            down: false,
            buffer: Vec::new(),
            group: self.group.clone(),
        };
        std::thread::Builder::new()
            .name(format!("raft-to-{id}"))
            .spawn(move || writer.run(receiver))
            .map_err(|e| format!("cannot start a raft writer thread: {e}"))?;
        self.queues.insert(id, (addr.to_string(), sender));
        Ok(())
    }

    /// Sends snapshots through `sender`; without one they are dropped.
    pub fn with_snapshots(mut self, sender: SnapshotSender) -> TcpTransport {
        self.snapshots = Some(sender);
        self
    }
}

impl Transport for TcpTransport {
    fn send(&mut self, messages: Vec<Message>) {
        for message in messages {
            if message.get_msg_type() == MessageType::MsgSnapshot {
                match &self.snapshots {
                    Some(sender) => sender.send(message),
                    None => log::warn!("snapshot for node {} dropped", message.to),
                }
                continue;
            }
            let Some((_, queue)) = self.queues.get(&message.to) else {
                log::debug!("raft message to unknown node {} dropped", message.to);
                continue;
            };
            if let Err(TrySendError::Full(m)) = queue.try_send(message) {
                log::debug!("raft queue to node {} full: message dropped", m.to);
            }
        }
    }

    fn set_peers(&mut self, peers: &std::collections::BTreeMap<u64, String>) {
        // A peer gone, or moved: its writer ends once its queue is dropped.
        self.queues
            .retain(|id, (addr, _)| peers.get(id).is_some_and(|a| a == addr));
        for (&id, addr) in peers {
            if id != self.me && !self.queues.contains_key(&id) {
                log::info!("raft peer {id} at {addr}: sending to it from now on");
                if let Err(e) = self.start_writer(id, addr) {
                    log::error!("raft peer {id}: {e}");
                }
            }
        }
        if let Some(sender) = &self.snapshots {
            sender.set_peers(peers);
        }
    }
}

/// One peer's connection and what it knows of it.
struct Writer {
    peer: u64,
    addr: String,
    inputs: Sender<Input>,
    stream: Option<BufWriter<TcpStream>>,
    retry_at: Instant,
    /// Whether the peer was reported unreachable since it last took a message.
    down: bool,
    buffer: Vec<u8>,
    group: GroupId,
}

impl Writer {
    /// Until the transport is dropped (its node stopped).
    fn run(mut self, queue: Receiver<Message>) {
        while let Ok(first) = queue.recv() {
            // Whatever else is queued goes in the same write.
            let batch: Vec<Message> = std::iter::once(first).chain(queue.try_iter()).collect();
            if let Err(e) = self.deliver(&batch) {
                if !self.down {
                    log::warn!("raft peer {} at {}: {e}", self.peer, self.addr);
                    self.down = true;
                }
                let _ = self.inputs.send(Input::Unreachable(self.peer));
            }
        }
    }

    fn deliver(&mut self, batch: &[Message]) -> Result<(), String> {
        if self.stream.is_none() {
            // Not again before `retry_at`: this batch is dropped (it must not postpone the next
            // attempt, or a peer sent to more often than that would never be tried again).
            if Instant::now() < self.retry_at {
                return Err("not connected".into());
            }
            match self.connect() {
                Ok(stream) => self.stream = Some(BufWriter::new(stream)),
                Err(e) => {
                    self.retry_at = Instant::now() + RETRY_AFTER;
                    return Err(e);
                }
            }
        }
        self.buffer.clear();
        for message in batch {
            if let Err(e) = frame::encode(message, &mut self.buffer) {
                log::error!("raft message to node {} not sent: {e}", self.peer);
            }
        }
        let stream = self.stream.as_mut().expect("connected above");
        if let Err(e) = stream.write_all(&self.buffer).and_then(|()| stream.flush()) {
            // Connect again at once for the next batch: the peer may have restarted.
            self.stream = None;
            return Err(format!("send failed: {e}"));
        }
        if self.down {
            log::info!("raft peer {} at {} reached", self.peer, self.addr);
            self.down = false;
        }
        Ok(())
    }

    fn connect(&self) -> Result<TcpStream, String> {
        let stream = connect_to_member(&self.addr, CONNECT_TIMEOUT, &self.group)?;
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        give_up_on_a_silent_peer(&stream, PEER_SILENT_FOR);
        Ok(stream)
    }
}

/// A connection from this member to another (raft messages, snapshots), which states `group`
/// first (`group::GROUP_MARKER`); clients' and admin connections do not.
pub fn connect_to_member(
    addr: &str,
    timeout: Duration,
    group: &GroupId,
) -> Result<TcpStream, String> {
    let mut stream = connect_to(addr, timeout)?;
    stream
        .write_all(&group.hello())
        .map_err(|e| format!("send failed: {e}"))?;
    Ok(stream)
}

/// A connection to a member's address (`HOST:PORT`, resolved now), trying each address it
/// resolves to for up to `timeout`, without Nagle's delay.
pub fn connect_to(addr: &str, timeout: Duration) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .collect();
    let mut last = "no address".to_string();
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = format!("cannot connect: {e}"),
        }
    }
    Err(last)
}

/// Has the kernel close `stream` once its peer has acknowledged nothing for `after` (data sent,
/// or keepalive probes sent after `after` idle, then every second, three times): a peer whose
/// link or machine vanished sends no reset. Best effort.
pub fn give_up_on_a_silent_peer(stream: &impl AsRawFd, after: Duration) {
    let secs = after.as_secs().max(1) as libc::c_int;
    let fd = stream.as_raw_fd();
    for (level, option, value) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3),
        (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, secs * 1000),
    ] {
        // SAFETY: setsockopt reads one c_int from `value`, whose size is passed.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                option,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}
