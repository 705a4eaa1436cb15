//! An event loop's periodic chores that no socket event triggers, and when each is due: retrying
//! connections parked on an exhausted server-wide budget, closing connections past
//! `--request-timeout` or `--idle-timeout` (`Chores`), and returning the write budget of closed
//! connections as the committer answers their last writes (`Orphans`). The loop does the
//! chores on its connections when these say they are due.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::budget::WriteBudget;
use crate::id_hash::IdMap;

/// How often parked connections are retried; those waiting for their client to read, every
/// `RETRY_READER_ROUNDS` times that.
const RETRY_PARKED_EVERY: Duration = Duration::from_millis(5);
const RETRY_READER_ROUNDS: u32 = 10;
/// How often connections are checked against the timeouts.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// When the chores are due.
pub(super) struct Chores {
    /// When to look for connections past their request or idle timeout next.
    next_sweep: Instant,
    /// Rounds of parked retries, some of whose retries are less frequent.
    retry_round: u32,
}

impl Chores {
    pub(super) fn new() -> Chores {
        Chores {
            next_sweep: Instant::now(),
            retry_round: 0,
        }
    }

    /// The longest the loop may sleep before its next chore. `parked`: connections wait to be
    /// retried; `timed`: the server has a request or idle timeout.
    pub(super) fn timeout(&self, parked: bool, timed: bool, now: Instant) -> Option<Duration> {
        if parked {
            return Some(RETRY_PARKED_EVERY);
        }
        timed.then(|| self.next_sweep.saturating_duration_since(now))
    }

    /// Starts a round of retrying parked connections: whether those waiting for their client
    /// to read are retried in this one.
    pub(super) fn retry_round(&mut self) -> bool {
        self.retry_round = self.retry_round.wrapping_add(1);
        self.retry_round.is_multiple_of(RETRY_READER_ROUNDS)
    }

    /// Whether connections are due to be checked against the timeouts now (then not again for
    /// `SWEEP_EVERY`).
    pub(super) fn sweep_due(&mut self, now: Instant) -> bool {
        if now < self.next_sweep {
            return false;
        }
        self.next_sweep = now + SWEEP_EVERY;
        true
    }
}

/// Write weights of closed connections whose writes the committer has not answered yet, by
/// connection id: each answer gives one back to the write budget.
#[derive(Default)]
pub(super) struct Orphans(IdMap<VecDeque<usize>>);

impl Orphans {
    /// A connection closed with these writes still with the committer.
    pub(super) fn insert(&mut self, conn: u64, weights: VecDeque<usize>) {
        if !weights.is_empty() {
            self.0.insert(conn, weights);
        }
    }

    /// The committer answered a write of a connection that is gone: its budget comes back.
    pub(super) fn answered(&mut self, conn: u64, writes: &WriteBudget) {
        let Some(weights) = self.0.get_mut(&conn) else {
            return;
        };
        if let Some(bytes) = weights.pop_front() {
            writes.release(bytes);
        }
        if weights.is_empty() {
            self.0.remove(&conn);
        }
    }
}
