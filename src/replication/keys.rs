//! Where the replication state lives in RocksDB, and how its small records are encoded.
//!
//! `raft_log` column family (written by the raft thread when it persists a `Ready`):
//! - `L` + index (big-endian u64, so RocksDB's order is the log's) -> an encoded `Entry`;
//! - `H` -> the `HardState` (term, vote, commit);
//! - `T` -> the last entry compacted away: index and term (big-endian u64s); the log starts
//!   after it;
//! - `I` -> this data directory's node id, so a directory is never started as another node;
//! - `S` -> while a snapshot is installed: its index and term (the state column families are
//!   then being replaced; a start-up finds it and installs the file again).
//!
//! `meta` column family (the engine's; its own keys are `Q…`, `E…`, `N`, `W`), written with the
//! state-machine writes of each applied batch, so a crash never separates them:
//! - `A` -> the last applied entry: index and term;
//! - `C` -> the `ConfState` as of `A`;
//! - `M` -> every member's replication address as of `A` (`members::encode`), written with the
//!   first membership change (before it, `--cluster` is the map);
//! - `R` -> the members removed, each with the index of the change that removed it
//!   (`members::encode_removals`), written with `C` from the first removal on;
//! - `G` -> the group's number (u64 big-endian, `group`), written when a founder bootstraps;
//!   a joiner's comes with its snapshot.

/// Column family of the raft log (opened by the engine, after its own two).
pub use crate::engine::RAFT_LOG_CF;
/// Column family of the applied index and the membership (the engine's `meta`).
pub const STATE_CF: &str = "meta";

const ENTRY_PREFIX: u8 = b'L';
pub const HARD_STATE_KEY: &[u8] = b"H";
pub const TRUNCATED_KEY: &[u8] = b"T";
pub const NODE_ID_KEY: &[u8] = b"I";
pub const INSTALLING_KEY: &[u8] = b"S";
pub const APPLIED_KEY: &[u8] = b"A";
pub const CONF_STATE_KEY: &[u8] = b"C";
pub const ADDRESSES_KEY: &[u8] = b"M";
pub const GROUP_KEY: &[u8] = b"G";
pub const REMOVALS_KEY: &[u8] = b"R";

/// The key of log entry `index`.
pub fn entry_key(index: u64) -> [u8; 9] {
    let mut key = [0; 9];
    key[0] = ENTRY_PREFIX;
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The index of an entry key, `None` for any other key.
pub fn entry_index(key: &[u8]) -> Option<u64> {
    match key {
        [ENTRY_PREFIX, rest @ ..] => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// An (index, term) pair: `T` and `A`.
pub fn encode_position(index: u64, term: u64) -> [u8; 16] {
    let mut value = [0; 16];
    value[..8].copy_from_slice(&index.to_be_bytes());
    value[8..].copy_from_slice(&term.to_be_bytes());
    value
}

pub fn decode_position(value: &[u8]) -> Option<(u64, u64)> {
    let value: &[u8; 16] = value.try_into().ok()?;
    let (index, term) = value.split_at(8);
    Some((
        u64::from_be_bytes(index.try_into().ok()?),
        u64::from_be_bytes(term.try_into().ok()?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_keys_sort_as_their_indexes() {
        let mut indexes = [0, 1, 255, 256, 65_536, u64::MAX - 1, 2];
        let mut keys: Vec<[u8; 9]> = indexes.iter().map(|&i| entry_key(i)).collect();
        keys.sort();
        indexes.sort();
        let back: Vec<u64> = keys.iter().map(|k| entry_index(k).unwrap()).collect();
        assert_eq!(back, indexes);
        assert_eq!(entry_index(HARD_STATE_KEY), None);
        assert_eq!(entry_index(b"L123"), None);
    }

    #[test]
    fn positions_round_trip_and_reject_other_lengths() {
        assert_eq!(decode_position(&encode_position(7, 3)), Some((7, 3)));
        assert_eq!(decode_position(&[0; 15]), None);
    }
}
