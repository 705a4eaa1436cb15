//! Incoming connections on this node's `--cluster` address: a thread accepts, and each
//! connection gets a thread that reads its first four bytes. Most are raft peers: the thread
//! goes on decoding frames and hands the messages to the raft thread; a frame that does not
//! decode, or a message not from a member to this node, closes its connection. A peer keeps one
//! connection to this node: one that connects again has given its older ones up, which may
//! still look open here (after a partition their close never arrived), so a connection's first
//! message from a peer closes that peer's older connections (`OpenConnections::claim`). Past
//! a small limit of peers, and of connections that have not sent a message yet, new ones are
//! closed at once.
//!
//! A connection that opens with `SNAPSHOT_MARKER` carries a snapshot file from a member
//! (`snapshot::receive`), one at a time. One that opens with `admin::ADMIN_MARKER` (or
//! `ADMIN_FORWARDED_MARKER`) is `mqd cluster`'s (`admin::serve`).
//!
//! Who is a member is read from the node's published address map (`Status::members`) for each
//! message, so a member added or removed online is let in or shut out at once. A leader's
//! messages (appends, heartbeats, snapshots) are let in from a node this one does not know yet:
//! a member that was down while that node was added and became leader learns of it only from
//! its log (`admits`). A message refused from a node this one knows was removed (`members`) is
//! answered on its connection with `REMOVED_MARKER` and the index of the removal, so that a
//! member removed while it was down learns it and stops (`tell_removed`).
//!
//! A connection that opens with [`FORWARD_MARKER`] (a frame length no raft frame can have) is a
//! client connection another member forwards to this one (`crate::net::forward`): it is handed,
//! as it is, to whoever [`ClientHandoff`] names (the event loops), and counts against none of
//! the raft limits. The replication does not know the network layer: the server plugs it in.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use raft::prelude::Message;

use super::admin::serve::{self as admin, AdminContext};
use super::admin::{ADMIN_FORWARDED_MARKER, ADMIN_MARKER};
use super::driver::Input;
use super::frame;
use super::group::{self, GROUP_MARKER};
use super::snapshot::{receive, SNAPSHOT_MARKER};
use super::status::Status;

/// Per peer: incoming raft connections that have not sent a message yet, and peers with a
/// connection (a node not known yet may send as a leader), at most this many.
const CONNECTIONS_PER_PEER: usize = 4;
/// An incoming connection silent this long is closed (its peer reconnects when it next sends).
const READ_IDLE: Duration = Duration::from_secs(60);
/// A connection must say what it is (its first four bytes) this soon, and a raft connection
/// bring its first message (each read, not the whole message).
const IDENTIFY_WITHIN: Duration = Duration::from_secs(5);
/// Connections accepted and not yet identified, at most: each has a thread.
const MOST_UNIDENTIFIED: usize = 256;
/// How long a removed member's connection is read (and dropped) after it was told.
const REMOVED_DRAIN: Duration = Duration::from_secs(1);
/// How long a stop waits for admin requests being answered.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// The first four bytes of a client connection forwarded by another member: as a raft frame's
/// length it would be over `frame::MAX_FRAME`, so no raft peer sends it.
pub const FORWARD_MARKER: [u8; 4] = [0xff; 4];

/// What a member answers, on the connection, to raft messages from a member it knows was
/// removed: these four bytes, then the index of the change that removed it (u64 BE). Raft
/// connections carry nothing else towards the node that opened them.
pub const REMOVED_MARKER: [u8; 4] = [0xff, 0xff, 0xff, 0xf9];

/// Takes a forwarded client connection (set by the server once its event loops exist; until
/// then such connections are closed).
pub type ClientHandoff = Arc<OnceLock<Box<dyn Fn(TcpStream) + Send + Sync>>>;

/// The incoming raft connections open.
#[derive(Default)]
struct OpenConnections {
    /// Each by a number of its own (to close them all on stop), with the peer its first
    /// message came from once it sent one: at most one per peer (`claim`).
    streams: HashMap<u64, (TcpStream, Option<u64>)>,
}

type Open = Arc<Mutex<OpenConnections>>;

impl OpenConnections {
    /// Takes connection `key` in, not yet known to be any peer's: false if `most` such are
    /// open already.
    fn admit(&mut self, key: u64, stream: TcpStream, most: usize) -> bool {
        if self
            .streams
            .values()
            .filter(|(_, peer)| peer.is_none())
            .count()
            >= most
        {
            return false;
        }
        self.streams.insert(key, (stream, None));
        true
    }

    /// Connection `key` brought a message from `peer`: it is that peer's connection now, and
    /// the peer's older one is closed (its reader then ends). False, and nothing changed, if
    /// `peer` would be one more than `most` peers with a connection.
    fn claim(&mut self, key: u64, peer: u64, most: usize) -> bool {
        let older = self
            .streams
            .iter()
            .find(|(_, (_, owner))| *owner == Some(peer))
            .map(|(&older, _)| older);
        match older.and_then(|older| self.streams.remove(&older)) {
            Some((stream, _)) => {
                let _ = stream.shutdown(Shutdown::Both);
            }
            None if self.streams.values().filter(|(_, o)| o.is_some()).count() >= most => {
                return false;
            }
            None => {}
        }
        if let Some((stream, owner)) = self.streams.get_mut(&key) {
            *owner = Some(peer);
            let _ = stream.set_read_timeout(Some(READ_IDLE));
        }
        true
    }

    /// Connection `key` ended.
    fn close(&mut self, key: u64) {
        self.streams.remove(&key);
    }
}

pub struct RaftListener {
    stop: Arc<AtomicBool>,
    address: std::net::SocketAddr,
    open: Open,
    thread: Option<JoinHandle<()>>,
    answering: Arc<AtomicUsize>,
}

/// What a reader checks messages against: this node, and the members it knows now.
struct Members {
    me: u64,
    status: Arc<Status>,
}

impl Members {
    fn admits(&self, message: &Message) -> bool {
        admits(self.me, |id| self.status.members().contains(id), message)
    }

    fn peers(&self) -> BTreeSet<u64> {
        let map = self.status.members().get();
        map.keys().copied().filter(|&id| id != self.me).collect()
    }

    /// Incoming raft connections not yet any peer's, and peers with a connection, at most.
    fn most_connections(&self) -> usize {
        CONNECTIONS_PER_PEER * self.peers().len().max(1)
    }
}

impl RaftListener {
    /// Listens on `address` for node `me`, whose peers are the members `status` publishes;
    /// snapshots are received into `snapshots` (refused without it).
    pub fn start(
        address: &str,
        me: u64,
        status: Arc<Status>,
        inputs: Sender<Input>,
        clients: ClientHandoff,
        snapshots: Option<PathBuf>,
    ) -> Result<RaftListener, String> {
        let listener = TcpListener::bind(address)
            .map_err(|e| format!("cannot listen for raft peers on {address}: {e}"))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let open = Open::default();
        let answering = Arc::<AtomicUsize>::default();
        let members = Arc::new(Members { me, status });
        let thread = {
            let stop = stop.clone();
            let open = open.clone();
            let accepting = Accepting {
                open,
                members,
                inputs,
                clients,
                unidentified: Arc::default(),
                snapshots: snapshots.map(Arc::new),
                receiving: Arc::default(),
                answering: answering.clone(),
            };
            std::thread::Builder::new()
                .name("raft-accept".into())
                .spawn(move || accept(listener, &stop, accepting))
                .map_err(|e| format!("cannot start the raft listener: {e}"))?
        };
        log::info!("raft node {me} listening for peers on {bound}");
        Ok(RaftListener {
            stop,
            address: bound,
            open,
            thread: Some(thread),
            answering,
        })
    }

    #[cfg(test)]
    pub fn address(&self) -> std::net::SocketAddr {
        self.address
    }

    /// Stops accepting and closes every incoming connection. Admin requests being answered get
    /// up to `ANSWER_WITHIN` to finish: the change that removed this node (which then stops)
    /// may have been asked through it, and its reply is on its way back.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accepting thread.
        let _ = TcpStream::connect(self.address);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let deadline = Instant::now() + ANSWER_WITHIN;
        while self.answering.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for (_, (stream, _)) in self.open.lock().unwrap().streams.drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for RaftListener {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the accepting thread shares with the connections' threads.
#[derive(Clone)]
struct Accepting {
    open: Open,
    members: Arc<Members>,
    inputs: Sender<Input>,
    clients: ClientHandoff,
    /// Connections whose first bytes have not arrived yet.
    unidentified: Arc<AtomicUsize>,
    /// Where snapshot files go.
    snapshots: Option<Arc<PathBuf>>,
    /// A snapshot is being received.
    receiving: Arc<AtomicBool>,
    /// Admin requests being answered.
    answering: Arc<AtomicUsize>,
}

fn accept(listener: TcpListener, stop: &AtomicBool, accepting: Accepting) {
    let mut next = 0u64;
    for stream in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                log::warn!("raft listener: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        if accepting.unidentified.fetch_add(1, Ordering::AcqRel) >= MOST_UNIDENTIFIED {
            accepting.unidentified.fetch_sub(1, Ordering::AcqRel);
            log::warn!("connection from {peer} refused: {MOST_UNIDENTIFIED} still silent");
            continue;
        }
        next += 1;
        let (key, accepting) = (next, accepting.clone());
        let spawned = std::thread::Builder::new()
            .name("raft-from-peer".into())
            .spawn(move || serve(stream, key, &peer, &accepting));
        if let Err(e) = spawned {
            log::error!("cannot start a raft reader thread: {e}");
        }
    }
}

/// Reads what a connection is, then hands it to the event loops (a forwarded client) or reads
/// its raft messages until it closes.
fn serve(mut stream: TcpStream, key: u64, peer: &str, accepting: &Accepting) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IDENTIFY_WITHIN));
    let ours = accepting.members.status.group().get();
    let identified = identify(&mut stream, ours);
    accepting.unidentified.fetch_sub(1, Ordering::AcqRel);
    let first = match identified {
        Ok(Identity::Marker(first)) => first,
        Ok(Identity::OtherGroup(theirs)) => {
            log_another_group(peer, theirs, ours);
            return;
        }
        Err(e) => {
            log::debug!("connection from {peer} closed before it said what it is: {e}");
            return;
        }
    };
    if first == SNAPSHOT_MARKER {
        let Some(dir) = &accepting.snapshots else {
            log::warn!("snapshot from {peer} refused: this node takes none");
            return;
        };
        let members = &accepting.members;
        if let Err(e) = receive::receive(
            stream,
            &|m| members.admits(m),
            &accepting.inputs,
            dir,
            &accepting.receiving,
        ) {
            log::warn!("snapshot from {peer} not received: {e}");
        }
        return;
    }
    if first == ADMIN_MARKER || first == ADMIN_FORWARDED_MARKER {
        let ctx = AdminContext {
            status: accepting.members.status.clone(),
            inputs: accepting.inputs.clone(),
            answering: accepting.answering.clone(),
        };
        if let Err(e) = admin::serve(stream, first == ADMIN_FORWARDED_MARKER, &ctx) {
            log::info!("admin connection from {peer} closed: {e}");
        }
        return;
    }
    if first == FORWARD_MARKER {
        match accepting.clients.get() {
            Some(hand) => hand(stream),
            None => log::info!("forwarded connection from {peer} closed: not serving yet"),
        }
        return;
    }
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let most = accepting.members.most_connections();
    if !accepting.open.lock().unwrap().admit(key, clone, most) {
        log::warn!("raft connection from {peer} refused: {most} open have not sent a message yet");
        return;
    }
    // The first message comes at once (a peer connects when it has one to send); then, a
    // peer whose machine died never closes its end: its connection ends after a silence.
    let mut reader = BufReader::with_capacity(64 << 10, (&first[..]).chain(stream));
    let mut claim = |from: u64| accepting.open.lock().unwrap().claim(key, from, most);
    if let Err(e) = read(
        &mut reader,
        &accepting.members,
        &accepting.inputs,
        &mut claim,
    ) {
        log::warn!("raft connection from {peer} closed: {e}");
        if let Some((id, index)) = e.removed {
            let (_, stream) = reader.into_inner().into_inner();
            tell_removed(stream, id, index);
        }
    }
    accepting.open.lock().unwrap().close(key);
}

/// What a connection's first bytes say.
enum Identity {
    /// The four bytes that say what it is (a marker, or a raft frame's length).
    Marker([u8; 4]),
    /// A node of another group (its number).
    OtherGroup(u64),
}

/// Reads what a connection is. A member's connection states its group first (`GROUP_MARKER`
/// and the number; `group`): one of this node's group `ours` (or where either is not known)
/// goes on with the four bytes after it. A connection without it is a client's (forwarded, an
/// admin's) or a member's of a version before the number.
fn identify(stream: &mut TcpStream, ours: u64) -> io::Result<Identity> {
    let mut first = [0; 4];
    stream.read_exact(&mut first)?;
    if first != GROUP_MARKER {
        return Ok(Identity::Marker(first));
    }
    let mut theirs = [0; 8];
    stream.read_exact(&mut theirs)?;
    let theirs = u64::from_be_bytes(theirs);
    if !group::same_group(ours, theirs) {
        return Ok(Identity::OtherGroup(theirs));
    }
    stream.read_exact(&mut first)?;
    Ok(Identity::Marker(first))
}

/// A connection from another group's node, refused; logged at most once every `QUIET_FOR`
/// (its node connects again every 100 ms).
fn log_another_group(peer: &str, theirs: u64, ours: u64) {
    const QUIET_FOR: Duration = Duration::from_secs(10);
    static LAST: parking_lot::Mutex<Option<Instant>> = parking_lot::const_mutex(None);
    let mut last = LAST.lock();
    if last.is_some_and(|at| at.elapsed() < QUIET_FOR) {
        return;
    }
    *last = Some(Instant::now());
    log::error!(
        "connection from {peer} refused: its node belongs to another group (number {theirs:x}; \
         this node's is {ours:x}). A node added to a running group starts with --join on an \
         empty data directory: one started without it bootstrapped a group of its own \
         (protocol-spec/cluster.md 7)"
    );
}

/// Whether node `me` takes `message`: one to it, from a member (`known`); or, from a node it
/// does not know, a leader's (an append, a heartbeat, a snapshot), which raft-rs checks against
/// its term like any: a member that missed a node's addition while down must take the log from
/// that node if it leads now, or never learn of it. A vote, or an answer, from a node it does
/// not know (a removed member that never learned of its removal, still campaigning) is refused.
fn admits(me: u64, known: impl Fn(u64) -> bool, message: &Message) -> bool {
    use raft::prelude::MessageType::{MsgAppend, MsgHeartbeat, MsgSnapshot};
    if message.to != me || message.from == me || message.from == 0 {
        return false;
    }
    known(message.from)
        || matches!(
            message.get_msg_type(),
            MsgAppend | MsgHeartbeat | MsgSnapshot
        )
}

/// Why a connection's reading ended early.
struct ReadError {
    why: String,
    /// Its sender was refused, and is a member this node knows removed: its id, and the index
    /// of the change that removed it.
    removed: Option<(u64, u64)>,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// Until the peer closes, or the node stops. The first message admitted names the peer whose
/// connection this is (`claim`: false refuses it).
fn read(
    reader: &mut impl std::io::BufRead,
    members: &Members,
    inputs: &Sender<Input>,
    claim: &mut impl FnMut(u64) -> bool,
) -> Result<(), ReadError> {
    let mut claimed = false;
    loop {
        let message = match frame::read(reader) {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(()),
            Err(e) => {
                return Err(ReadError {
                    why: e.to_string(),
                    removed: None,
                })
            }
        };
        if !members.admits(&message) {
            let removed = (message.to == members.me)
                .then(|| members.status.members().removed_at(message.from))
                .flatten()
                .map(|index| (message.from, index));
            return Err(ReadError {
                why: format!(
                    "a message from {} to {}: not a member to this node",
                    message.from, message.to
                ),
                removed,
            });
        }
        if !claimed {
            if !claim(message.from) {
                return Err(ReadError {
                    why: format!("node {}: too many peers connected", message.from),
                    removed: None,
                });
            }
            claimed = true;
        }
        if inputs.send(Input::Message(Box::new(message))).is_err() {
            return Ok(()); // the node stopped
        }
    }
}

/// Tells node `id`, removed by the change at `index` and still sending as a member (it was down
/// when it was removed), on its own connection: `REMOVED_MARKER` and the index. Its transport
/// finds the answer when its next write fails (`tcp`), once this end is closed. What it sends
/// meanwhile is read and dropped for a moment first: closing with unread bytes would reset the
/// connection, which can cost the peer the answer.
fn tell_removed(mut stream: TcpStream, id: u64, index: u64) {
    let mut notice = REMOVED_MARKER.to_vec();
    notice.extend_from_slice(&index.to_be_bytes());
    if stream.write_all(&notice).is_err() {
        return;
    }
    log::warn!("told node {id} it was removed from the group at index {index}");
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(REMOVED_DRAIN));
    let deadline = Instant::now() + REMOVED_DRAIN;
    let mut sink = [0; 4096];
    while Instant::now() < deadline && matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use raft::prelude::{Message, MessageType};

    use super::super::group::GroupId;
    use super::super::members::Members as Addresses;
    use super::super::tcp::TcpTransport;
    use super::super::transport::Transport;
    use super::*;

    fn heartbeat(from: u64, to: u64, term: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.from = from;
        m.to = to;
        m.term = term;
        m
    }

    /// Node 2's status, knowing members 1 and 3 (at addresses nobody reads here).
    fn status_of_2() -> Arc<Status> {
        let map = [1, 2, 3].map(|id| (id, format!("127.0.0.1:{id}"))).into();
        Arc::new(Status::with_members(2, Arc::new(Addresses::new(map))))
    }

    /// Node 2 listening on a port of its own, and what it hands its raft thread.
    fn node_2() -> (RaftListener, crossbeam_channel::Receiver<Input>) {
        let (to_node_2, node_2) = crossbeam_channel::bounded(64);
        let listener = RaftListener::start(
            "127.0.0.1:0",
            2,
            status_of_2(),
            to_node_2,
            ClientHandoff::default(),
            None,
        )
        .unwrap();
        (listener, node_2)
    }

    /// Whether the other end closed `stream` (within 10 s).
    fn closed(mut stream: std::net::TcpStream) -> bool {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut byte = [0];
        std::io::Read::read(&mut stream, &mut byte).unwrap_or(0) == 0
    }

    fn next_message(inputs: &crossbeam_channel::Receiver<Input>) -> Option<Message> {
        loop {
            match inputs.recv_timeout(Duration::from_secs(10)).ok()? {
                Input::Message(m) => return Some(*m),
                _ => continue,
            }
        }
    }

    #[test]
    fn a_node_of_another_group_is_refused_and_one_of_this_group_or_none_taken() {
        let (to_node_2, node_2) = crossbeam_channel::bounded(64);
        let ours = GroupId::default();
        ours.set(7);
        let map = [1, 2].map(|id| (id, format!("127.0.0.1:{id}"))).into();
        let status =
            Arc::new(Status::with_members(2, Arc::new(Addresses::new(map))).with_group(ours));
        let mut listener = RaftListener::start(
            "127.0.0.1:0",
            2,
            status,
            to_node_2,
            ClientHandoff::default(),
            None,
        )
        .unwrap();
        let addr = listener.address().to_string();
        let peers = [(1, "127.0.0.1:1".to_string()), (2, addr)].into();
        for (group, term, delivered) in [(8, 5, false), (7, 6, true), (0, 7, true)] {
            let theirs = GroupId::default();
            theirs.set(group);
            let (to_node_1, _node_1) = crossbeam_channel::bounded(64);
            let mut transport = TcpTransport::start(1, &peers, to_node_1, theirs).unwrap();
            transport.send(vec![heartbeat(1, 2, term)]);
            let got = match node_2.recv_timeout(Duration::from_millis(500)) {
                Ok(Input::Message(m)) => Some(m.term),
                _ => None,
            };
            assert_eq!(got, delivered.then_some(term), "group {group}");
        }
        listener.stop();
    }

    #[test]
    fn messages_cross_loopback_past_a_bad_peer_and_a_restarted_one() {
        let (mut listener, node_2) = node_2();
        let addr = listener.address().to_string();
        let peers = [(1, "127.0.0.1:1".to_string()), (2, addr.clone())].into();
        let (to_node_1, _node_1) = crossbeam_channel::bounded(64);
        let mut transport = TcpTransport::start(1, &peers, to_node_1, Default::default()).unwrap();
        transport.send(vec![heartbeat(1, 2, 5), heartbeat(1, 2, 6)]);
        assert_eq!(next_message(&node_2).map(|m| m.term), Some(5));
        assert_eq!(next_message(&node_2).map(|m| m.term), Some(6));

        // Garbage, then a vote request from a stranger: each closes its own connection only.
        let mut garbage = std::net::TcpStream::connect(&addr).unwrap();
        garbage.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).unwrap();
        let mut stranger = std::net::TcpStream::connect(&addr).unwrap();
        let mut frame = Vec::new();
        let mut vote = heartbeat(9, 2, 7);
        vote.set_msg_type(MessageType::MsgRequestVote);
        super::super::frame::encode(&vote, &mut frame).unwrap();
        stranger.write_all(&frame).unwrap();
        assert!(closed(garbage) && closed(stranger));
        transport.send(vec![heartbeat(1, 2, 8)]);
        assert_eq!(next_message(&node_2).map(|m| m.term), Some(8));
        listener.stop();
        drop(node_2);

        // The peer restarts while messages keep coming, more often than connections are
        // retried: the writer still connects again.
        for _ in 0..10 {
            transport.send(vec![heartbeat(1, 2, 9)]);
            std::thread::sleep(Duration::from_millis(20));
        }
        let (to_node_2, node_2) = crossbeam_channel::bounded(64);
        let _listener = RaftListener::start(
            &addr,
            2,
            status_of_2(),
            to_node_2,
            ClientHandoff::default(),
            None,
        )
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            transport.send(vec![heartbeat(1, 2, 10)]);
            if let Ok(Input::Message(m)) = node_2.recv_timeout(Duration::from_millis(20)) {
                assert_eq!(m.term, 10);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never reconnected");
        }
    }

    #[test]
    fn a_peers_new_connection_replaces_its_old_ones_which_never_lock_others_out() {
        // After a partition a peer's old connections are half open on this side (the close
        // never arrived): the peer has dropped them and connects again. Each new one from the
        // same peer replaces the older, so they cannot fill the slots and lock out a member
        // reconnecting after the partition (seen: elections held up 5 s).
        let (mut listener, node_2) = node_2();
        let addr = listener.address().to_string();
        let send = |from: u64, term: u64| {
            let mut stream = std::net::TcpStream::connect(&addr).unwrap();
            let mut frame = Vec::new();
            super::super::frame::encode(&heartbeat(from, 2, term), &mut frame).unwrap();
            stream.write_all(&frame).unwrap();
            stream
        };
        let mut old = Vec::new();
        for term in 1..=(2 * CONNECTIONS_PER_PEER as u64 + 2) {
            old.push(send(3, term));
            assert_eq!(next_message(&node_2).map(|m| m.term), Some(term));
        }
        let _newest_of_3 = send(3, 100);
        assert_eq!(next_message(&node_2).map(|m| m.term), Some(100));
        let _of_1 = send(1, 101);
        assert_eq!(next_message(&node_2).map(|m| m.term), Some(101));
        assert!(old.into_iter().all(closed));
        listener.stop();
    }

    #[test]
    fn a_leaders_messages_are_taken_from_a_node_not_known_yet_and_nothing_else() {
        let known = |id: u64| id == 1 || id == 3;
        let message = |kind, from, to| {
            let mut m = heartbeat(from, to, 5);
            m.set_msg_type(kind);
            m
        };
        use MessageType::*;
        for kind in [
            MsgAppend,
            MsgHeartbeat,
            MsgSnapshot,
            MsgRequestVote,
            MsgAppendResponse,
        ] {
            assert!(
                admits(2, known, &message(kind, 1, 2)),
                "{kind:?} from a member"
            );
            assert!(
                !admits(2, known, &message(kind, 1, 3)),
                "{kind:?} to another node"
            );
            assert!(
                !admits(2, known, &message(kind, 2, 2)),
                "{kind:?} from itself"
            );
        }
        for kind in [MsgAppend, MsgHeartbeat, MsgSnapshot] {
            assert!(
                admits(2, known, &message(kind, 4, 2)),
                "a new leader's {kind:?}"
            );
        }
        for kind in [
            MsgRequestVote,
            MsgRequestPreVote,
            MsgAppendResponse,
            MsgHeartbeatResponse,
            MsgTimeoutNow,
        ] {
            assert!(
                !admits(2, known, &message(kind, 4, 2)),
                "{kind:?} from a stranger"
            );
        }
    }

    #[test]
    fn a_forwarded_client_is_handed_over_with_its_bytes_and_takes_no_peer_slot() {
        let (to_node_2, node_2) = crossbeam_channel::bounded(64);
        let (handed, clients_in) = crossbeam_channel::unbounded();
        let clients = ClientHandoff::default();
        let _ = clients.set(Box::new(move |stream| {
            let _ = handed.send(stream);
        }));
        let listener =
            RaftListener::start("127.0.0.1:0", 2, status_of_2(), to_node_2, clients, None).unwrap();
        let addr = listener.address();
        // More forwarded clients than the raft peers may have connections.
        let mut sent = Vec::new();
        for i in 0..CONNECTIONS_PER_PEER * 2 + 3 {
            let mut client = std::net::TcpStream::connect(addr).unwrap();
            client.write_all(&FORWARD_MARKER).unwrap();
            client
                .write_all(format!("get q{i}\r\n").as_bytes())
                .unwrap();
            sent.push(client);
        }
        for _ in 0..sent.len() {
            let mut stream = clients_in.recv_timeout(Duration::from_secs(10)).unwrap();
            let mut line = [0; 5];
            std::io::Read::read_exact(&mut stream, &mut line).unwrap();
            assert_eq!(&line, b"get q");
        }
        // A raft peer still gets in, its first frame read in full.
        let peers = [(1, "127.0.0.1:1".to_string()), (2, addr.to_string())].into();
        let (to_node_1, _node_1) = crossbeam_channel::bounded(64);
        let mut transport = TcpTransport::start(1, &peers, to_node_1, Default::default()).unwrap();
        transport.send(vec![heartbeat(1, 2, 4)]);
        assert_eq!(next_message(&node_2).map(|m| m.term), Some(4));
    }
}
