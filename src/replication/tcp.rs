//! The transport between processes: one outgoing TCP connection per peer (a `Link`). The raft
//! thread never waits on a socket: it writes a batch itself when the link is idle and the
//! kernel takes the whole batch at once (`MSG_DONTWAIT`), which saves a thread hand-off per
//! message on the replication's critical path (two per replicated write; docs/replication.md);
//! otherwise the batch, or the bytes the kernel did not take, go to the peer's writer thread
//! through a bounded queue, which connects, waits on a slow peer, and keeps the order. A peer
//! that cannot be reached is reported to raft-rs (`report_unreachable`: it stops streaming
//! appends and probes), and what was queued for it is dropped: raft-rs sends again what still
//! matters. Incoming connections are `listener`'s. A connection is read only once a write on it
//! failed: a member that knows this node was removed answers that, then closes
//! (`Link::broken`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use raft::prelude::{Message, MessageType};

use super::driver::Input;
use super::frame;
use super::group::GroupId;
use super::listener::REMOVED_MARKER;
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
    /// Each peer, by id (dropping one ends its writer).
    peers: HashMap<u64, Peer>,
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
            peers: HashMap::new(),
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
        let link = Arc::new(Mutex::new(Link::default()));
        let behind = Arc::new(AtomicUsize::new(0));
        let writer = Writer {
            peer: id,
            addr: addr.to_string(),
            inputs: self.inputs.clone(),
            link: link.clone(),
            behind: behind.clone(),
            retry_at: Instant::now(),
            down: false,
            buffer: Vec::new(),
            group: self.group.clone(),
        };
        std::thread::Builder::new()
            .name(format!("raft-to-{id}"))
            .spawn(move || writer.run(receiver))
            .map_err(|e| format!("cannot start a raft writer thread: {e}"))?;
        let peer = Peer {
            id,
            addr: addr.to_string(),
            inputs: self.inputs.clone(),
            queue: sender,
            link,
            behind,
            outgoing: Vec::new(),
            buffer: Vec::new(),
        };
        self.peers.insert(id, peer);
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
            match self.peers.get_mut(&message.to) {
                Some(peer) => peer.outgoing.push(message),
                None => log::debug!("raft message to unknown node {} dropped", message.to),
            }
        }
        for peer in self.peers.values_mut() {
            if !peer.outgoing.is_empty() {
                peer.send();
            }
        }
    }

    fn set_peers(&mut self, peers: &std::collections::BTreeMap<u64, String>) {
        // A peer gone, or moved: its writer ends once its queue is dropped.
        self.peers
            .retain(|id, peer| peers.get(id).is_some_and(|a| *a == peer.addr));
        for (&id, addr) in peers {
            if id != self.me && !self.peers.contains_key(&id) {
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

/// A peer as the raft thread sees it: its writer's queue and the connection they share.
struct Peer {
    id: u64,
    addr: String,
    /// The raft thread's channel: what the peer answered on a broken link goes there.
    inputs: Sender<Input>,
    queue: Sender<Outgoing>,
    link: Arc<Mutex<Link>>,
    /// What was queued for the writer and is not written yet (it counts down once it has
    /// written, holding the link): the raft thread writes itself only when nothing is, so
    /// frames leave in the order raft-rs sent them.
    behind: Arc<AtomicUsize>,
    /// This round's messages to the peer, in order.
    outgoing: Vec<Message>,
    buffer: Vec<u8>,
}

impl Peer {
    /// Sends `outgoing`: written now when the link is connected and idle and the kernel takes
    /// every byte without waiting; what it does not take is left to the writer.
    fn send(&mut self) {
        let messages = std::mem::take(&mut self.outgoing);
        if let Some(mut link) = self.link.try_lock() {
            let idle = self.behind.load(Ordering::Acquire) == 0 && link.unsent.is_empty();
            if link.stream.is_some() && idle {
                self.buffer.clear();
                encode_all(&messages, &mut self.buffer);
                match link.write_now(&self.buffer) {
                    Ok(written) if written == self.buffer.len() => {}
                    Ok(written) => {
                        // The rest waits in the link for the writer, which is woken.
                        link.unsent.extend_from_slice(&self.buffer[written..]);
                        drop(link);
                        self.queue_for_writer(vec![Outgoing::Unsent]);
                    }
                    Err(_) => {
                        // The writer connects again and reports the peer if it cannot.
                        link.broken(self.id, &self.inputs);
                        drop(link);
                        self.queue_for_writer(
                            messages.into_iter().map(Outgoing::Message).collect(),
                        );
                    }
                }
                return;
            }
        }
        self.queue_for_writer(messages.into_iter().map(Outgoing::Message).collect());
    }

    fn queue_for_writer(&self, items: Vec<Outgoing>) {
        for item in items {
            self.behind.fetch_add(1, Ordering::AcqRel);
            if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                self.queue.try_send(item)
            {
                self.behind.fetch_sub(1, Ordering::AcqRel);
                log::debug!("raft queue to {} full: message dropped", self.addr);
            }
        }
    }
}

/// What the raft thread hands a peer's writer.
enum Outgoing {
    Message(Message),
    /// Bytes the raft thread began writing wait in the link (`Link::unsent`).
    Unsent,
}

/// A peer's connection, shared by its writer and the raft thread.
#[derive(Default)]
struct Link {
    stream: Option<TcpStream>,
    /// The end of a batch the kernel took only part of: written before anything else.
    unsent: Vec<u8>,
}

impl Link {
    /// Drops the connection after a failed write, first reading what `peer` answered on it, if
    /// anything: a member that knows this node was removed says so (`REMOVED_MARKER` and the
    /// index of the change) and closes, which fails a later write.
    fn broken(&mut self, peer: u64, inputs: &Sender<Input>) {
        let Some(mut stream) = self.stream.take() else {
            return;
        };
        let mut notice = [0; 12];
        let mut got = 0;
        if stream.set_nonblocking(true).is_ok() {
            while got < notice.len() {
                match stream.read(&mut notice[got..]) {
                    Ok(n) if n > 0 => got += n,
                    _ => break,
                }
            }
        }
        if got == notice.len() && notice[..4] == REMOVED_MARKER {
            let index = u64::from_be_bytes(notice[4..].try_into().expect("8 bytes"));
            let _ = inputs.send(Input::RemovedBy { by: peer, index });
        }
    }

    /// Writes what the kernel takes of `bytes` without waiting (nothing is left unsent
    /// before them: the caller checked).
    fn write_now(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let stream = self.stream.as_ref().expect("checked by the caller");
        // SAFETY: `bytes` is valid for its length; send reads at most that many.
        let sent = unsafe {
            libc::send(
                stream.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if sent >= 0 {
            return Ok(sent as usize);
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(0),
            _ => Err(e),
        }
    }
}

fn encode_all<'a>(messages: impl IntoIterator<Item = &'a Message>, buffer: &mut Vec<u8>) {
    for message in messages {
        if let Err(e) = frame::encode(message, buffer) {
            log::error!("raft message to node {} not sent: {e}", message.to);
        }
    }
}

/// One peer's writer thread: connects, writes what the raft thread left to it, and what it
/// knows of the peer.
struct Writer {
    peer: u64,
    addr: String,
    inputs: Sender<Input>,
    link: Arc<Mutex<Link>>,
    behind: Arc<AtomicUsize>,
    retry_at: Instant,
    /// Whether the peer was reported unreachable since it last took a message.
    down: bool,
    buffer: Vec<u8>,
    group: GroupId,
}

impl Writer {
    /// Until the transport is dropped (its node stopped).
    fn run(mut self, queue: Receiver<Outgoing>) {
        while let Ok(first) = queue.recv() {
            // Whatever else is queued goes in the same write.
            let batch: Vec<Outgoing> = std::iter::once(first).chain(queue.try_iter()).collect();
            let shared = self.link.clone();
            let mut link = shared.lock();
            let result = self.deliver(&mut link, &batch);
            // Counted down holding the link: the raft thread writes itself only after this.
            self.behind.fetch_sub(batch.len(), Ordering::AcqRel);
            drop(link);
            if let Err(e) = result {
                if !self.down {
                    log::warn!("raft peer {} at {}: {e}", self.peer, self.addr);
                    self.down = true;
                }
                let _ = self.inputs.send(Input::Unreachable(self.peer));
            }
        }
    }

    fn deliver(&mut self, link: &mut Link, batch: &[Outgoing]) -> Result<(), String> {
        if link.stream.is_none() {
            // Bytes begun on a connection that is gone cannot be finished on another.
            link.unsent.clear();
            // Not again before `retry_at`: this batch is dropped (it must not postpone the next
            // attempt, or a peer sent to more often than that would never be tried again).
            if Instant::now() < self.retry_at {
                return Err("not connected".into());
            }
            match self.connect() {
                Ok(stream) => link.stream = Some(stream),
                Err(e) => {
                    self.retry_at = Instant::now() + RETRY_AFTER;
                    return Err(e);
                }
            }
        }
        self.buffer.clear();
        self.buffer.append(&mut link.unsent);
        let messages = batch.iter().filter_map(|item| match item {
            Outgoing::Message(message) => Some(message),
            Outgoing::Unsent => None,
        });
        encode_all(messages, &mut self.buffer);
        let stream = link.stream.as_mut().expect("connected above");
        if let Err(e) = stream.write_all(&self.buffer) {
            // Connect again at once for the next batch: the peer may have restarted.
            link.broken(self.peer, &self.inputs);
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

#[cfg(test)]
mod tests {
    use super::*;
    use raft::prelude::Entry;
    use std::io::Read;
    use std::net::TcpListener;

    /// An append to node 2 carrying `size` bytes, numbered by its term.
    fn append(number: u64, size: usize) -> Message {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgAppend);
        message.from = 1;
        message.to = 2;
        message.term = number;
        let entry = Entry {
            data: vec![number as u8; size].into(),
            ..Default::default()
        };
        message.entries = vec![entry].into();
        message
    }

    /// Odd sizes, mostly small, every 64th larger than a socket buffer's free space.
    fn size_of(number: u64) -> usize {
        let n = number as usize;
        if n.is_multiple_of(64) {
            1 + (n * 7919) % (300 << 10)
        } else {
            1 + (n * 31) % 2000
        }
    }

    /// A peer that reads nothing for a while fills the kernel's buffers: the raft thread's
    /// writes come back partial or refused, and the writer finishes them. Every frame still
    /// arrives whole and in the order sent, whichever path wrote it.
    #[test]
    fn frames_reach_a_slow_peer_whole_and_in_order_past_full_buffers() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let peers = [(1, "127.0.0.1:1".to_string()), (2, addr)].into();
        let (to_node_1, _node_1) = crossbeam_channel::bounded(1024);
        let mut transport = TcpTransport::start(1, &peers, to_node_1, Default::default()).unwrap();
        // The first message makes the writer connect; the rest find the link connected.
        transport.send(vec![append(0, 10)]);
        let (mut stream, _) = listener.accept().unwrap();
        let mut hello = [0; 12];
        stream.read_exact(&mut hello).unwrap();

        const MESSAGES: u64 = 3000;
        let sender = std::thread::spawn(move || {
            for number in 1..=MESSAGES {
                transport.send(vec![append(number, size_of(number))]);
                if number.is_multiple_of(500) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            transport
        });
        std::thread::sleep(Duration::from_millis(300));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut next = 0;
        while next <= MESSAGES {
            let message = frame::read(&mut stream).unwrap().expect("a frame");
            assert_eq!(message.term, next, "frames out of order");
            if next > 0 {
                let data = &message.entries[0].data;
                assert_eq!(data.len(), size_of(next));
                assert!(
                    data.iter().all(|&b| b == next as u8),
                    "frame {next} damaged"
                );
            }
            next += 1;
        }
        drop(sender.join().unwrap());
    }
}
