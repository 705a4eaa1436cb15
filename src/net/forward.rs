//! Forwarding (issue 22, step 5): under `--cluster`, a client connection on a member that is not
//! the established leader is served through the leader. At its first queue command (one this
//! node would refuse with `no leader`) the connection becomes a byte pipe to the leader for the
//! rest of its life: the bytes from that command on go to the leader's raft address, opened with
//! `replication::FORWARD_MARKER`, and the leader's bytes come back after any reply this node
//! produced before (`stats`, say). No reply is parsed, so memcache text, binary, meta and mqmq,
//! blocking and open reads are all forwarded alike.
//!
//! This module owns the upstream socket and the routing decision; `Connection` drives the pipe
//! with its own socket and output buffer, and the event loop registers the upstream socket under
//! a token of its own. A connection that arrived forwarded is never forwarded again (its node
//! answers `no leader` if it does not serve either), so members that disagree on the leader for
//! a moment cannot make a loop.
//!
//! Memory is bounded both ways: at most `WINDOW` bytes from the client wait for the leader's
//! socket (the client is not read meanwhile), and the leader is read only while the client's
//! unsent output is under `WINDOW`. If the leader cannot be reached (refused, or silent for
//! `CONNECT_WITHIN`), nothing went to it: the command is answered here, `no leader`, and the
//! client may retry. If the leader closes once bytes went (it died, or lost the lead), the
//! client's connection is closed: the outcome of what it had in flight is unknown, as when a
//! server crashes, and a client that reconnects is forwarded to the next leader or told
//! `no leader`.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use parking_lot::Mutex;

use crate::replication::admin::ADMIN_MARKER;
use crate::replication::status::Status;
use crate::replication::tcp;
use crate::replication::FORWARD_MARKER;

/// Most bytes held on their way in each direction, per forwarded connection.
pub const WINDOW: usize = 64 << 10;
/// Bytes asked of a socket per read.
const CHUNK: usize = 16 << 10;
/// A leader that has not accepted the connection this long is taken for unreachable.
pub const CONNECT_WITHIN: Duration = Duration::from_secs(1);
/// A leader whose machine vanished sends no reset: the kernel gives up on the connection after
/// this long without an acknowledgement of bytes sent, or of keepalive probes sent after this
/// long idle (then every second, three times), and the client's connection is closed.
const LEADER_SILENT_FOR: Duration = Duration::from_secs(10);

/// Where this node's queue commands go: the members' raft addresses (as the node publishes
/// them, `Status::members`: a member added online is forwarded to too), each resolved once,
/// and the leader this node knows; and the counts `stats` shows.
pub struct Forwarding {
    status: Arc<Status>,
    /// `HOST:PORT` -> what it resolved to (`None`: it did not).
    resolved: Mutex<HashMap<String, Option<SocketAddr>>>,
    /// This member's replication address (its `--cluster` entry, where it listens), resolved.
    own: Option<SocketAddr>,
    /// Connections piped to the leader from here: open now, and since start.
    pub current: AtomicU64,
    pub total: AtomicU64,
    /// Connections other members forwarded to this one, since start.
    pub received: AtomicU64,
}

impl Forwarding {
    /// Resolves every other member's `HOST:PORT` in `peers` now (a name that does not resolve
    /// then is never forwarded to: its clients get `no leader`); an address learned later is
    /// resolved when first needed.
    pub fn new(status: Arc<Status>, peers: &BTreeMap<u64, String>) -> Forwarding {
        let own = peers
            .get(&status.node)
            .and_then(|a| a.to_socket_addrs().ok())
            .and_then(|mut a| a.next());
        let forwarding = Forwarding {
            status,
            resolved: Mutex::default(),
            own,
            current: AtomicU64::new(0),
            total: AtomicU64::new(0),
            received: AtomicU64::new(0),
        };
        for (&id, address) in peers {
            if id != forwarding.status.node {
                forwarding.resolve(address);
            }
        }
        forwarding
    }

    fn resolve(&self, address: &str) -> Option<SocketAddr> {
        let mut resolved = self.resolved.lock();
        *resolved.entry(address.to_string()).or_insert_with(|| {
            let found = address.to_socket_addrs().ok().and_then(|mut a| a.next());
            if found.is_none() {
                log::warn!("member at {address} does not resolve: not forwarded to");
            }
            found
        })
    }

    /// The leader this node knows (0: none).
    pub fn leader(&self) -> u64 {
        self.status.view().leader
    }

    /// This member's own replication address, where `cluster …` goes (its admin side).
    pub fn admin_address(&self) -> Option<SocketAddr> {
        self.own
    }

    /// Where a queue command this node does not serve goes: the leader's address, if another
    /// member is known to lead and the connection did not arrive forwarded.
    pub fn route(&self, forwarded: bool) -> Option<SocketAddr> {
        if forwarded {
            return None;
        }
        let leader = self.status.view().leader;
        if leader == 0 || leader == self.status.node {
            return None;
        }
        let address = self.status.members().address(leader)?;
        self.resolve(&address)
    }
}

/// The leader's end of a forwarded connection.
pub struct Upstream {
    pub stream: TcpStream,
    /// The leader it goes to (its raft address).
    pub to: SocketAddr,
    /// Registered with the loop's poll.
    pub registered: bool,
    /// Bytes for the leader not sent yet: the marker, then the client's.
    to_leader: Vec<u8>,
    /// The socket may have more to read.
    pub readable: bool,
    /// Bytes came back or went out: the connection is established.
    pub connected: bool,
    started: Instant,
    /// The client's end of the stream was passed on (`shutdown(Write)`).
    shut: bool,
    /// It goes to this member's admin side (`cluster …`), not to the leader.
    pub admin: bool,
    /// The leader closed its side.
    pub closed: bool,
}

impl Upstream {
    /// Starts connecting to the leader at `address` (non-blocking); with `admin`, to this
    /// member's admin side there.
    pub fn connect(address: SocketAddr, admin: bool) -> io::Result<Upstream> {
        let stream = TcpStream::connect(address)?;
        let _ = stream.set_nodelay(true);
        // A blocking read forwarded to a leader whose machine died must not wait forever.
        tcp::give_up_on_a_silent_peer(&stream, LEADER_SILENT_FOR);
        Ok(Upstream {
            stream,
            to: address,
            registered: false,
            to_leader: if admin { ADMIN_MARKER } else { FORWARD_MARKER }.to_vec(),
            readable: true,
            connected: false,
            started: Instant::now(),
            shut: false,
            admin,
            closed: false,
        })
    }

    /// Whether more of the client's bytes may be taken now.
    pub fn has_room(&self) -> bool {
        self.to_leader.len() < WINDOW
    }

    /// Whether everything taken was sent.
    pub fn drained(&self) -> bool {
        self.to_leader.is_empty()
    }

    /// The leader did not accept the connection in time.
    pub fn overdue(&self, now: Instant) -> bool {
        !self.connected && now.saturating_duration_since(self.started) >= CONNECT_WITHIN
    }

    /// Reads from `client` into the bytes for the leader while there is room: the bytes read,
    /// and whether the client closed its side.
    pub fn take_from(&mut self, client: &mut impl Read) -> io::Result<(usize, bool)> {
        let mut taken = 0;
        while self.has_room() {
            let len = self.to_leader.len();
            let room = (WINDOW - len).min(CHUNK);
            self.to_leader.resize(len + room, 0);
            let read = client.read(&mut self.to_leader[len..]);
            self.to_leader.truncate(len + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => return Ok((taken, true)),
                Ok(n) => taken += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok((taken, false)),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok((taken, false))
    }

    /// Sends what it can of the bytes for the leader; true if any went.
    pub fn send(&mut self) -> io::Result<bool> {
        let mut sent = 0;
        while sent < self.to_leader.len() {
            match self.stream.write(&self.to_leader[sent..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    sent += n;
                    self.connected = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.to_leader.drain(..sent);
        Ok(sent > 0)
    }

    /// Sends `bytes` (the client's, buffered before the pipe began) directly; how many went.
    pub fn send_direct(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut sent = 0;
        while sent < bytes.len() {
            match self.stream.write(&bytes[sent..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }

    /// The client sent all it will: once its bytes are sent, the leader is told so.
    pub fn finish(&mut self) {
        if !self.shut && self.drained() {
            self.shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
    }

    /// Reads from the leader onto the end of `out`, at most `room` bytes; how many came.
    pub fn receive(&mut self, out: &mut Vec<u8>, room: usize) -> io::Result<usize> {
        let mut received = 0;
        while self.readable && !self.closed && received < room {
            let len = out.len();
            let ask = (room - received).min(CHUNK);
            out.resize(len + ask, 0);
            let read = self.stream.read(&mut out[len..]);
            out.truncate(len + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => self.closed = true,
                Ok(n) => {
                    received += n;
                    self.connected = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.readable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(received)
    }
}

/// Counts a connection received forwarded.
pub fn received(forwarding: Option<&Forwarding>) {
    if let Some(f) = forwarding {
        f.received.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;
    use crate::replication::status::{Role, StatusView};

    fn knowing(node: u64, leader: u64) -> Forwarding {
        let peers: BTreeMap<u64, String> = [
            (1, "127.0.0.1:7001"),
            (2, "127.0.0.1:7002"),
            (3, "nowhere.invalid:1"),
        ]
        .map(|(id, a)| (id, a.to_string()))
        .into();
        let members = crate::replication::members::Members::new(peers.clone());
        let status = Arc::new(Status::with_members(node, Arc::new(members)));
        status.publish(&StatusView {
            node,
            role: Role::Follower,
            term: 2,
            leader,
            commit: 1,
            applied: 1,
            last_index: 1,
            first_index: 2,
            log_bytes: 0,
            snapshots_made: 0,
            snapshots_installed: 0,
            voters: 3,
            learners: 0,
        });
        Forwarding::new(status, &peers)
    }

    #[test]
    fn only_a_connection_not_forwarded_goes_to_another_member_known_to_lead() {
        let to_two: SocketAddr = "127.0.0.1:7002".parse().unwrap();
        assert_eq!(knowing(1, 2).route(false), Some(to_two));
        assert_eq!(knowing(1, 2).route(true), None, "forwarded once already");
        assert_eq!(knowing(1, 0).route(false), None, "no leader known");
        assert_eq!(
            knowing(1, 1).route(false),
            None,
            "this node, not established yet"
        );
        assert_eq!(
            knowing(1, 3).route(false),
            None,
            "a name that did not resolve"
        );
    }

    #[test]
    fn an_upstream_sends_the_marker_first_and_holds_at_most_a_window() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut upstream = Upstream::connect(listener.local_addr().unwrap(), false).unwrap();
        let (mut leader, _) = listener.accept().unwrap();
        while !upstream.send().unwrap() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut marker = [0; 4];
        leader.read_exact(&mut marker).unwrap();
        assert_eq!(marker, FORWARD_MARKER);
        // A client with far more to say than the window: only a window's worth is taken.
        let mut client = &vec![7u8; 4 * WINDOW][..];
        let (taken, eof) = upstream.take_from(&mut client).unwrap();
        assert_eq!((taken, eof), (WINDOW, false));
        assert!(!upstream.has_room());
        leader.write_all(b"STORED\r\n").unwrap();
        let mut out = b"local\r\n".to_vec();
        while upstream.receive(&mut out, 5).unwrap() == 0 {
            upstream.readable = true;
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            out, b"local\r\nSTORE",
            "at most the room asked for, after what was there"
        );
    }
}
