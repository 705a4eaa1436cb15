//! A snapshot file over real TCP: `SnapshotSender` to a `RaftListener`, and what a receiver
//! does with a transfer that is cut, damaged, or larger than its disk.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use crossbeam_channel::Receiver;
use raft::prelude::{Message, MessageType};

use super::super::driver::Input;
use super::super::listener::{ClientHandoff, RaftListener};
use super::super::test_support::TempDir;
use super::*;

fn snapshot_message(index: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    m.from = 1;
    m.to = 2;
    m.term = term;
    let snapshot = m.mut_snapshot();
    snapshot.mut_metadata().index = index;
    snapshot.mut_metadata().term = term;
    snapshot.data = snapshot_data(index, term).to_vec().into();
    m
}

fn listener(dir: &TempDir) -> (RaftListener, Receiver<Input>) {
    let (inputs, node) = crossbeam_channel::unbounded();
    let listener = RaftListener::start(
        "127.0.0.1:0",
        2,
        {
            let map = [1, 2, 3].map(|id| (id, format!("127.0.0.1:{id}"))).into();
            std::sync::Arc::new(crate::replication::status::Status::with_members(
                2,
                std::sync::Arc::new(crate::replication::members::Members::new(map)),
            ))
        },
        inputs,
        ClientHandoff::default(),
        Some(dir.path().to_path_buf()),
    )
    .unwrap();
    (listener, node)
}

fn next(inputs: &Receiver<Input>) -> Option<Input> {
    inputs.recv_timeout(Duration::from_secs(10)).ok()
}

#[test]
fn a_file_crosses_loopback_and_the_message_follows_it() {
    let (sender_dir, receiver_dir) = (TempDir::new("send"), TempDir::new("receive"));
    let (listener, node_2) = listener(&receiver_dir);
    let body: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
    std::fs::write(generated_path(sender_dir.path(), 7, 2), &body).unwrap();
    let (reports, node_1) = crossbeam_channel::unbounded();
    let peers = [(2, listener.address().to_string())].into();
    let sender = send::SnapshotSender::new(peers, sender_dir.path().to_path_buf(), reports);
    sender.send(snapshot_message(7, 2));
    match next(&node_2) {
        Some(Input::Message(m)) => assert_eq!(m.get_snapshot().get_metadata().index, 7),
        _ => panic!("no snapshot message"),
    }
    assert!(matches!(
        next(&node_1),
        Some(Input::SnapshotSent { to: 2, done: true })
    ));
    let received = std::fs::read(received_path(receiver_dir.path(), 7, 2)).unwrap();
    assert!(received == body, "the file differs");
    // A peer that is not there: Failure, so raft-rs sends again later.
    let (reports, node_1) = crossbeam_channel::unbounded();
    let peers = [(2, "127.0.0.1:1".to_string())].into();
    let sender = send::SnapshotSender::new(peers, sender_dir.path().to_path_buf(), reports);
    sender.send(snapshot_message(7, 2));
    assert!(matches!(
        next(&node_1),
        Some(Input::SnapshotSent { to: 2, done: false })
    ));
}

/// Sends a transfer by hand: the marker, the message, `len`, then `body` and `crc`.
fn transfer(addr: std::net::SocketAddr, len: u64, body: &[u8], crc: Option<u32>) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut bytes = SNAPSHOT_MARKER.to_vec();
    crate::replication::frame::encode(&snapshot_message(9, 3), &mut bytes).unwrap();
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes.extend_from_slice(body);
    if let Some(crc) = crc {
        bytes.extend_from_slice(&crc.to_be_bytes());
    }
    stream.write_all(&bytes).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut answer);
    answer
}

#[test]
fn a_cut_damaged_or_oversized_transfer_reaches_neither_disk_nor_raft() {
    let dir = TempDir::new("receive");
    let (listener, node_2) = listener(&dir);
    let addr = listener.address();
    let mut crc = format::Crc32::default();
    crc.update(b"hello");
    // Cut before its end; a wrong CRC; 1 EiB claimed with 5 bytes sent.
    assert_eq!(transfer(addr, 10, b"hello", None), [0]);
    assert_eq!(transfer(addr, 5, b"hello", Some(crc.value() ^ 1)), [0]);
    assert_eq!(transfer(addr, 1 << 60, b"hello", None), [0]);
    assert!(node_2.try_recv().is_err(), "raft-rs saw a snapshot");
    assert!(!received_path(dir.path(), 9, 3).exists());
    // The same transfer whole is taken.
    assert_eq!(
        transfer(addr, 5, b"hello", Some(crc.value())),
        [format::ACCEPTED]
    );
    assert!(matches!(next(&node_2), Some(Input::Message(_))));
    assert_eq!(
        std::fs::read(received_path(dir.path(), 9, 3)).unwrap(),
        b"hello"
    );
}
