//! Receiving a snapshot: a connection that opens with `SNAPSHOT_MARKER` (`listener`) carries a
//! `MsgSnapshot` from a member, then the file (length, bytes, CRC-32). The file is written to a
//! temporary name in 1 MiB pieces (memory stays bounded whatever the length says), checked,
//! fsynced and renamed; only then does raft-rs see the message (it installs from that file,
//! `install`), and the sender hears `ACCEPTED`. One at a time; a length over the free disk space
//! is refused before a byte is written.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::Sender;
use raft::prelude::{Message, MessageType};

use super::format::{Crc32, ACCEPTED};
use super::{decode_snapshot_data, received_path, sync_dir};
use crate::replication::driver::Input;
use crate::replication::frame;

const CHUNK: usize = 1 << 20;
/// A sender silent this long ends the transfer.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Free space left on the disk after a received file, at least.
const DISK_MARGIN: u64 = 64 << 20;

/// Receives one snapshot on `stream` (its marker already read), its message one `admits`
/// (to this node, from a node it takes a leader's messages from), into `dir`; `busy` allows
/// one transfer at a time.
pub fn receive(
    stream: TcpStream,
    admits: &dyn Fn(&Message) -> bool,
    inputs: &Sender<Input>,
    dir: &Path,
    busy: &AtomicBool,
) -> Result<(), String> {
    if busy.swap(true, Ordering::AcqRel) {
        return Err("another snapshot is being received".into());
    }
    let outcome = receive_one(&stream, admits, inputs, dir);
    busy.store(false, Ordering::Release);
    let answer = [if outcome.is_ok() { ACCEPTED } else { 0 }];
    let _ = (&stream).write_all(&answer);
    outcome
}

fn receive_one(
    stream: &TcpStream,
    admits: &dyn Fn(&Message) -> bool,
    inputs: &Sender<Input>,
    dir: &Path,
) -> Result<(), String> {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let mut input = BufReader::with_capacity(CHUNK, stream);
    let message = frame::read(&mut input)
        .map_err(|e| e.to_string())?
        .ok_or("closed before the message")?;
    if message.get_msg_type() != MessageType::MsgSnapshot || !admits(&message) {
        return Err(format!(
            "a {:?} from {} to {}: not a member's snapshot for this node",
            message.get_msg_type(),
            message.from,
            message.to
        ));
    }
    let meta = message.get_snapshot().get_metadata();
    let (index, term) = (meta.index, meta.term);
    if decode_snapshot_data(&message.get_snapshot().data) != Some((index, term)) {
        return Err(format!("snapshot {index} names no file of its own"));
    }
    let mut len = [0; 8];
    input.read_exact(&mut len).map_err(|e| e.to_string())?;
    let len = u64::from_be_bytes(len);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let free = crate::engine::free_bytes(dir).unwrap_or(u64::MAX);
    if len.saturating_add(DISK_MARGIN) > free {
        return Err(format!(
            "a snapshot of {len} bytes, with {free} bytes free on the disk"
        ));
    }
    clear_earlier(dir);
    let temporary = dir.join(format!("receiving-{index}-{term}.tmp"));
    let mut file = File::create(&temporary).map_err(|e| format!("{}: {e}", temporary.display()))?;
    let mut crc = Crc32::default();
    let mut chunk = vec![0; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = input
            .read(&mut chunk[..CHUNK.min(left as usize)])
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("closed {left} bytes before the end"));
        }
        crc.update(&chunk[..n]);
        file.write_all(&chunk[..n]).map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    let mut sent_crc = [0; 4];
    input.read_exact(&mut sent_crc).map_err(|e| e.to_string())?;
    if u32::from_be_bytes(sent_crc) != crc.value() {
        let _ = std::fs::remove_file(&temporary);
        return Err("the file's CRC does not match".into());
    }
    file.sync_all().map_err(|e| e.to_string())?;
    std::fs::rename(&temporary, received_path(dir, index, term)).map_err(|e| e.to_string())?;
    sync_dir(dir).map_err(|e| e.to_string())?;
    log::info!(
        "snapshot {index} (term {term}) received from node {}: {len} bytes",
        message.from
    );
    inputs
        .send(Input::Message(Box::new(message)))
        .map_err(|_| "the node stopped".to_string())
}

/// Files of earlier transfers: cut short, or never installed (raft-rs found them stale). An
/// install cut short by a crash is redone at start-up, before anything listens.
fn clear_earlier(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("receiving-") || name.starts_with("received-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
