//! Incoming raft connections: a thread accepts on this node's `--cluster` address, and each
//! connection gets a reader thread that decodes frames and hands the messages to the raft
//! thread. A frame that does not decode, or a message not from a member to this node, closes
//! its connection. Few connections are expected (one per peer, and one more while a peer
//! reconnects), so past a small limit new ones are closed at once.

use std::collections::{BTreeSet, HashMap};
use std::io::BufReader;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

use super::driver::Input;
use super::frame;

/// Incoming connections open at once, per peer.
const CONNECTIONS_PER_PEER: usize = 4;
/// An incoming connection silent this long is closed (its peer reconnects when it next sends).
const READ_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// The incoming connections open, by a number of their own, to close them on stop.
type Open = Arc<Mutex<HashMap<u64, TcpStream>>>;

pub struct RaftListener {
    stop: Arc<AtomicBool>,
    address: std::net::SocketAddr,
    open: Open,
    thread: Option<JoinHandle<()>>,
}

/// What a reader checks messages against.
struct Members {
    me: u64,
    peers: BTreeSet<u64>,
}

impl RaftListener {
    /// Listens on `address` for node `me`, whose peers are `peers`.
    pub fn start(
        address: &str,
        me: u64,
        peers: BTreeSet<u64>,
        inputs: Sender<Input>,
    ) -> Result<RaftListener, String> {
        let listener = TcpListener::bind(address)
            .map_err(|e| format!("cannot listen for raft peers on {address}: {e}"))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let open = Open::default();
        let most = CONNECTIONS_PER_PEER * peers.len().max(1);
        let members = Arc::new(Members { me, peers });
        let thread = {
            let stop = stop.clone();
            let open = open.clone();
            std::thread::Builder::new()
                .name("raft-accept".into())
                .spawn(move || accept(listener, &stop, &open, most, members, inputs))
                .map_err(|e| format!("cannot start the raft listener: {e}"))?
        };
        log::info!("raft node {me} listening for peers on {bound}");
        Ok(RaftListener {
            stop,
            address: bound,
            open,
            thread: Some(thread),
        })
    }

    #[cfg(test)]
    pub fn address(&self) -> std::net::SocketAddr {
        self.address
    }

    /// Stops accepting and closes every incoming connection.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accepting thread.
        let _ = TcpStream::connect(self.address);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        for (_, stream) in self.open.lock().unwrap().drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for RaftListener {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept(
    listener: TcpListener,
    stop: &AtomicBool,
    open: &Open,
    most: usize,
    members: Arc<Members>,
    inputs: Sender<Input>,
) {
    let mut next = 0u64;
    for stream in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                log::warn!("raft listener: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        {
            let mut open = open.lock().unwrap();
            if open.len() >= most {
                log::warn!("raft connection from {peer} refused: {most} already open");
                continue;
            }
            next += 1;
            open.insert(next, clone);
        }
        let _ = stream.set_nodelay(true);
        // A peer whose machine died never closes its end: its connection ends after a silence.
        let _ = stream.set_read_timeout(Some(READ_IDLE));
        let (key, open, members, inputs) = (next, open.clone(), members.clone(), inputs.clone());
        let spawned = std::thread::Builder::new()
            .name("raft-from-peer".into())
            .spawn(move || {
                if let Err(e) = read(stream, &members, &inputs) {
                    log::warn!("raft connection from {peer} closed: {e}");
                }
                open.lock().unwrap().remove(&key);
            });
        if let Err(e) = spawned {
            log::error!("cannot start a raft reader thread: {e}");
        }
    }
}

/// Until the peer closes, or the node stops.
fn read(stream: TcpStream, members: &Members, inputs: &Sender<Input>) -> Result<(), String> {
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    while let Some(message) = frame::read(&mut reader).map_err(|e| e.to_string())? {
        if message.to != members.me || !members.peers.contains(&message.from) {
            return Err(format!(
                "a message from {} to {}: not a member to this node",
                message.from, message.to
            ));
        }
        if inputs.send(Input::Message(Box::new(message))).is_err() {
            return Ok(()); // the node stopped
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use raft::prelude::{Message, MessageType};

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

    fn next_message(inputs: &crossbeam_channel::Receiver<Input>) -> Option<Message> {
        loop {
            match inputs.recv_timeout(Duration::from_secs(10)).ok()? {
                Input::Message(m) => return Some(*m),
                _ => continue,
            }
        }
    }

    #[test]
    fn messages_cross_loopback_past_a_bad_peer_and_a_restarted_one() {
        let (to_node_2, node_2) = crossbeam_channel::bounded(64);
        let mut listener = RaftListener::start("127.0.0.1:0", 2, [1, 3].into(), to_node_2).unwrap();
        let addr = listener.address().to_string();
        let peers = [(1, "127.0.0.1:1".to_string()), (2, addr.clone())].into();
        let (to_node_1, _node_1) = crossbeam_channel::bounded(64);
        let mut transport = TcpTransport::start(1, &peers, to_node_1).unwrap();
        transport.send(vec![heartbeat(1, 2, 5), heartbeat(1, 2, 6)]);
        assert_eq!(next_message(&node_2).map(|m| m.term), Some(5));
        assert_eq!(next_message(&node_2).map(|m| m.term), Some(6));

        // Garbage, then a message from a stranger: each closes its own connection only.
        let mut garbage = std::net::TcpStream::connect(&addr).unwrap();
        garbage.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).unwrap();
        let mut stranger = std::net::TcpStream::connect(&addr).unwrap();
        let mut frame = Vec::new();
        super::super::frame::encode(&heartbeat(9, 2, 7), &mut frame).unwrap();
        stranger.write_all(&frame).unwrap();
        for mut closed in [garbage, stranger] {
            closed
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut byte = [0];
            assert_eq!(std::io::Read::read(&mut closed, &mut byte).unwrap_or(0), 0);
        }
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
        let _listener = RaftListener::start(&addr, 2, [1, 3].into(), to_node_2).unwrap();
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
}
