//! Replication (issue 22): a group of mqd nodes keeps one log with Raft, through tikv's raft-rs,
//! which does the consensus; this module supplies what raft-rs leaves to its user. So far: its
//! logging, bridged to ours. Nothing here runs unless `mqd serve` is given `--cluster`.

pub mod slog_bridge;
