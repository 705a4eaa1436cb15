//! Sending a snapshot: when raft-rs has a `MsgSnapshot` for a follower, the transport hands it
//! here instead of to the peer's ordinary connection, and a thread of its own streams the file
//! on a connection of its own (`SNAPSHOT_MARKER`, the message's frame, the file's length, the
//! file in 1 MiB reads, its CRC-32), so heartbeats and appends to that follower are never held
//! behind it. Once the follower answers that the file is on its disk, raft-rs hears `Finish`;
//! anything else is `Failure` (raft-rs tries again later). It must hear one or the other, or
//! the follower stays paused (notes P12). One transfer per follower at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::Mutex;
use raft::prelude::Message;

use super::format::{Crc32, ACCEPTED};
use super::{decode_snapshot_data, generated_path, SNAPSHOT_MARKER};
use crate::replication::driver::Input;
use crate::replication::frame;
use crate::replication::group::GroupId;

/// Bytes read from the file and written per write.
const CHUNK: usize = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A follower that takes nothing for this long ends the transfer.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the follower may take to fsync the file and answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// Sends this node's snapshots to its peers.
pub struct SnapshotSender {
    /// The members' addresses (the transport keeps them up to date).
    peers: Mutex<BTreeMap<u64, String>>,
    dir: PathBuf,
    inputs: Sender<Input>,
    busy: Arc<Mutex<BTreeSet<u64>>>,
    /// Stated first on every transfer's connection (`group`).
    group: GroupId,
}

impl SnapshotSender {
    pub fn new(peers: BTreeMap<u64, String>, dir: PathBuf, inputs: Sender<Input>) -> Self {
        SnapshotSender {
            peers: Mutex::new(peers),
            dir,
            inputs,
            busy: Arc::default(),
            group: GroupId::default(),
        }
    }

    /// States `group` on its connections (without: 0, which any group takes).
    pub fn with_group(mut self, group: GroupId) -> Self {
        self.group = group;
        self
    }

    /// The members' addresses changed.
    pub fn set_peers(&self, peers: &BTreeMap<u64, String>) {
        *self.peers.lock() = peers.clone();
    }

    /// Starts sending the snapshot `message` names; its outcome comes back as
    /// `Input::SnapshotSent`.
    pub fn send(&self, message: Message) {
        let to = message.to;
        let Some(addr) = self.peers.lock().get(&to).cloned() else {
            let _ = self.inputs.send(Input::SnapshotSent { to, done: false });
            return;
        };
        if !self.busy.lock().insert(to) {
            // The transfer under way reports, and raft-rs waits for it.
            log::debug!("a snapshot for node {to} is already being sent");
            return;
        }
        let (dir, inputs, busy) = (self.dir.clone(), self.inputs.clone(), self.busy.clone());
        let group = self.group.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("raft-snap-to-{to}"))
            .spawn(move || {
                let started = Instant::now();
                let outcome = transfer(&addr, &group, &dir, &message);
                busy.lock().remove(&to);
                match &outcome {
                    Ok(bytes) => log::info!(
                        "snapshot {} sent to node {to}: {bytes} bytes in {:?}",
                        message.get_snapshot().get_metadata().index,
                        started.elapsed()
                    ),
                    Err(e) => log::warn!("snapshot to node {to} at {addr} failed: {e}"),
                }
                let done = outcome.is_ok();
                let _ = inputs.send(Input::SnapshotSent { to, done });
            });
        if let Err(e) = spawned {
            log::error!("cannot start a snapshot sender: {e}");
            self.busy.lock().remove(&to);
            let _ = self.inputs.send(Input::SnapshotSent { to, done: false });
        }
    }
}

/// Streams the file; returns its size once the follower has it on disk.
fn transfer(
    addr: &str,
    group: &GroupId,
    dir: &std::path::Path,
    message: &Message,
) -> Result<u64, String> {
    let (index, term) =
        decode_snapshot_data(&message.get_snapshot().data).ok_or("a snapshot naming no file")?;
    let path = generated_path(dir, index, term);
    let mut file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let stream = crate::replication::tcp::connect_to_member(addr, CONNECT_TIMEOUT, group)?;
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_read_timeout(Some(ANSWER_TIMEOUT));
    let mut out = BufWriter::with_capacity(CHUNK, &stream);
    let mut head = SNAPSHOT_MARKER.to_vec();
    frame::encode(message, &mut head).map_err(|e| e.to_string())?;
    head.extend_from_slice(&len.to_be_bytes());
    out.write_all(&head).map_err(|e| e.to_string())?;
    let mut crc = Crc32::default();
    let mut chunk = vec![0; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = file
            .read(&mut chunk[..CHUNK.min(left as usize)])
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("{} is shorter than it was", path.display()));
        }
        crc.update(&chunk[..n]);
        out.write_all(&chunk[..n]).map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    out.write_all(&crc.value().to_be_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())?;
    drop(out);
    let mut answer = [0; 1];
    (&stream)
        .read_exact(&mut answer)
        .map_err(|e| format!("no answer: {e}"))?;
    if answer[0] != ACCEPTED {
        return Err("refused".into());
    }
    Ok(len)
}
