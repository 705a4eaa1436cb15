//! An event loop's periodic chores that no socket event triggers: retrying connections parked on
//! an exhausted server-wide budget, closing connections past `--request-timeout` or
//! `--idle-timeout`, and returning the write budget of closed connections as the committer
//! answers their last writes.

use std::time::{Duration, Instant};

use super::event_loop::EventLoop;

/// How often parked connections are retried; those waiting for their client to read, every
/// `RETRY_READER_ROUNDS` times that.
const RETRY_PARKED_EVERY: Duration = Duration::from_millis(5);
const RETRY_READER_ROUNDS: u32 = 10;
/// How often connections are checked against the timeouts.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl EventLoop {
    /// The longest the loop may sleep before its next chore.
    pub(super) fn housekeeping_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.parked.is_empty() {
            return Some(RETRY_PARKED_EVERY);
        }
        let timed = self.shared.request_timeout.is_some() || self.shared.idle_timeout.is_some();
        timed.then(|| self.next_sweep.saturating_duration_since(now))
    }

    /// Drives every parked connection once; those still refused park again. Those waiting
    /// only for output room wait, undriven, while the output budget has none.
    pub(super) fn retry_parked(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let output_full = self.shared.output.bytes.remaining() == 0;
        self.retry_round = self.retry_round.wrapping_add(1);
        let readers_due = self.retry_round.is_multiple_of(RETRY_READER_ROUNDS);
        for id in std::mem::take(&mut self.parked) {
            let Some(slot) = self.slot_of(id) else {
                continue;
            };
            let Some(conn) = self.conns[slot].as_ref() else {
                continue;
            };
            let not_yet = (output_full && conn.parked_on_output_only())
                || (!readers_due && conn.parked_on_reader_only());
            if not_yet {
                self.parked.insert(id);
            } else {
                self.drive(slot);
            }
        }
    }

    /// Closes connections past their request or idle timeout.
    pub(super) fn sweep(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_EVERY;
        for slot in 0..self.conns.len() {
            let overdue = self.with_conn(slot, |c, ctx| c.overdue(now, ctx)).flatten();
            if let Some(reason) = overdue {
                log::info!("closing a connection: {reason}");
                self.close(slot);
            }
        }
    }

    /// The committer answered a write of a connection that is gone: its budget comes back.
    pub(super) fn orphan_answered(&mut self, conn: u64) {
        let Some(weights) = self.orphans.get_mut(&conn) else {
            return;
        };
        if let Some(bytes) = weights.pop_front() {
            self.shared.writes.release(bytes);
        }
        if weights.is_empty() {
            self.orphans.remove(&conn);
        }
    }
}
