//! Snapshots (plan step 6): how a follower that needs entries its leader has compacted away (it
//! was down long, or its data directory was wiped) gets the state instead. raft-rs's `Snapshot`
//! carries only the metadata (index, term, membership) and, in `data`, the index and term that
//! name a file: the state itself (every key of the `messages` and `meta` column families as of
//! that applied index) goes in a file, streamed over a connection of its own so that it never
//! delays heartbeats, and installed in an order a crash at any point cannot break.
//!
//! - `format`: the file's and the transfer's bytes (pure);
//! - `generate`: the leader makes a file from a RocksDB snapshot, off the raft thread;
//! - `send`, `receive`: one connection per transfer, `SNAPSHOT_MARKER` first; the receiver
//!   fsyncs the file before raft-rs sees the `MsgSnapshot`, and the leader reports the
//!   outcome to raft-rs (`report_snapshot`);
//! - `install`: the follower replaces its state with the file's, raft state first, state
//!   machine beside the raft thread (`super::installing`).
//!
//! Files live in `DATA_DIR/raft-snap/` (RocksDB ignores a directory it did not make).

pub mod format;
pub mod generate;
pub mod install;
pub mod receive;
pub mod send;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod transfer_tests;

use std::path::{Path, PathBuf};

use rocksdb::DB;

use super::keys::{decode_position, encode_position};
pub use generate::{Generated, Snapshots};

/// The first four bytes of a snapshot transfer's connection: as a frame length it would be over
/// `frame::MAX_FRAME`, as `FORWARD_MARKER` is, and differs from it.
pub const SNAPSHOT_MARKER: [u8; 4] = [0xff, 0xff, 0xff, 0xfe];

/// Where a node keeps its snapshot files.
pub fn dir(db: &DB) -> PathBuf {
    db.path().join("raft-snap")
}

/// A file this node made, of the state at `index` (of `term`).
pub fn generated_path(dir: &Path, index: u64, term: u64) -> PathBuf {
    dir.join(format!("{index}-{term}.snap"))
}

/// A file received from the leader, to install.
pub fn received_path(dir: &Path, index: u64, term: u64) -> PathBuf {
    dir.join(format!("received-{index}-{term}.snap"))
}

/// Removes every received file in `dir`: at a start, once any install it had to redo is done,
/// none is needed (a file received but not yet installed is sent again by the leader).
pub fn remove_received(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("received-") && name.ends_with(".snap") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// `Snapshot.data`: the index and term naming the file.
pub fn snapshot_data(index: u64, term: u64) -> [u8; 16] {
    encode_position(index, term)
}

pub fn decode_snapshot_data(data: &[u8]) -> Option<(u64, u64)> {
    decode_position(data)
}

/// Makes a rename or a new file in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
