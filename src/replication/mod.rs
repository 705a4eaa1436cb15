//! Replication (issue 22): a group of mqd nodes keeps one log with Raft, through tikv's raft-rs,
//! which does the consensus; this module supplies what raft-rs leaves to its user. So far: the
//! log's storage on RocksDB (`storage`, laid out as `keys` says, in the database `db` opens)
//! and raft-rs's logging, bridged to ours. Nothing here runs unless `mqd serve` is given
//! `--cluster`.

pub mod db;
pub mod keys;
pub mod slog_bridge;
pub mod storage;
#[cfg(test)]
mod test_support;
