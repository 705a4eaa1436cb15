//! When a node drops the head of its raft log, and up to where: the policy, as a pure function
//! of the log's size, the applied index and (on the leader) what each follower still needs.
//! The raft thread asks after every pass and compacts its own log (`RaftStorage::compact`: the
//! deletes and the new compaction point in one RocksDB write).
//!
//! etcd's way, not TiKV's: each node compacts its own log once it holds more than
//! `max_entries` entries or `max_bytes` bytes, down to `keep` entries behind the applied index
//! (a follower a little behind catches up from the log, not from a snapshot). TiKV proposes a
//! compact-log entry so that every node cuts at the same index; that costs a log entry and an
//! apply step for what each node can decide alone, since the log is not the state.
//!
//! Never past the applied index (the entries there are what the state machine still needs). The
//! leader also keeps what a follower has not received yet (from its `matched` + 1), so a
//! follower that is merely slow, or down for a while, catches up from the log; only past
//! `hard_factor` times the limits does the leader cut anyway, and such a follower is sent a
//! snapshot when it comes back (and only if snapshots can be sent).

/// How large a log may grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLimits {
    /// Compact once the log holds more entries than this...
    pub max_entries: u64,
    /// ...or more bytes (entries as stored).
    pub max_bytes: u64,
    /// Entries kept behind the applied index after a compaction.
    pub keep: u64,
}

/// The leader cuts past a follower's needs only when the log is this many times over a limit.
pub const HARD_FACTOR: u64 = 4;

impl LogLimits {
    /// Limits for `max_entries` (`--raft-log-entries`): a quarter of them is kept.
    pub fn entries(max_entries: u64) -> LogLimits {
        LogLimits {
            max_entries,
            max_bytes: 256 << 20,
            keep: max_entries / 4,
        }
    }
}

impl Default for LogLimits {
    fn default() -> LogLimits {
        LogLimits::entries(10_000)
    }
}

/// What the policy looks at.
#[derive(Clone, Copy, Debug)]
pub struct LogState {
    /// The last index compacted away (the log starts after it).
    pub truncated: u64,
    pub applied: u64,
    /// Entries and bytes the log holds.
    pub entries: u64,
    pub bytes: u64,
    /// On the leader: the smallest `matched` among the followers (what they all have).
    pub followers_have: Option<u64>,
    /// Whether a follower that needs a compacted entry can be sent a snapshot.
    pub can_snapshot: bool,
}

/// The index to compact up to (inclusive), or `None` to leave the log as it is.
pub fn compact_to(state: &LogState, limits: &LogLimits) -> Option<u64> {
    let over = |factor: u64| {
        state.entries > limits.max_entries.saturating_mul(factor)
            || state.bytes > limits.max_bytes.saturating_mul(factor)
    };
    if !over(1) {
        return None;
    }
    let mut to = state.applied.saturating_sub(limits.keep);
    if let Some(have) = state.followers_have {
        if !(state.can_snapshot && over(HARD_FACTOR)) {
            to = to.min(have);
        }
    }
    (to > state.truncated).then_some(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(entries: u64, applied: u64, followers_have: Option<u64>) -> LogState {
        LogState {
            truncated: 100,
            applied,
            entries,
            bytes: entries * 10,
            followers_have,
            can_snapshot: true,
        }
    }

    const LIMITS: LogLimits = LogLimits {
        max_entries: 1000,
        max_bytes: 1 << 20,
        keep: 250,
    };

    #[test]
    fn a_log_under_its_limits_is_left_alone() {
        assert_eq!(compact_to(&state(1000, 1100, None), &LIMITS), None);
    }

    #[test]
    fn a_log_over_a_limit_keeps_entries_behind_the_applied_index_and_never_passes_it() {
        assert_eq!(compact_to(&state(1001, 1101, None), &LIMITS), Some(851));
        // Applied far behind the last entry: compaction stops short of it.
        assert_eq!(compact_to(&state(1001, 300, None), &LIMITS), None);
        assert_eq!(compact_to(&state(1001, 400, None), &LIMITS), Some(150));
        let mut bytes = state(10, 1100, None);
        bytes.bytes = (1 << 20) + 1;
        assert_eq!(compact_to(&bytes, &LIMITS), Some(850));
    }

    #[test]
    fn the_leader_keeps_what_a_follower_lacks_until_the_log_is_far_over_its_limits() {
        assert_eq!(
            compact_to(&state(1001, 1101, Some(500)), &LIMITS),
            Some(500)
        );
        assert_eq!(compact_to(&state(1001, 1101, Some(50)), &LIMITS), None);
        assert_eq!(
            compact_to(&state(4001, 4101, Some(50)), &LIMITS),
            Some(3851)
        );
        let mut no_snapshots = state(4001, 4101, Some(50));
        no_snapshots.can_snapshot = false;
        assert_eq!(compact_to(&no_snapshots, &LIMITS), None);
    }
}
