//! Deadlines of blocked reads, per event loop. A min-heap with lazy cancellation: an entry whose
//! read was already answered is simply ignored when it comes due.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64, u64)>>,
}

impl Timers {
    /// Schedules `(conn, wait_id)` to come due at `at`.
    pub fn add(&mut self, at: Instant, conn: u64, wait_id: u64) {
        self.heap.push(Reverse((at, conn, wait_id)));
    }

    /// How long the loop may sleep before the next deadline.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        self.heap
            .peek()
            .map(|Reverse((at, _, _))| at.saturating_duration_since(now))
    }

    /// Removes and returns the next entry due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(u64, u64)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => {
                self.heap.pop().map(|Reverse((_, conn, wait))| (conn, wait))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_order() {
        let now = Instant::now();
        let mut timers = Timers::default();
        timers.add(now + Duration::from_millis(20), 1, 1);
        timers.add(now + Duration::from_millis(10), 2, 2);
        assert_eq!(timers.timeout(now), Some(Duration::from_millis(10)));
        assert_eq!(timers.pop_due(now), None);
        let later = now + Duration::from_millis(30);
        assert_eq!(timers.pop_due(later), Some((2, 2)));
        assert_eq!(timers.pop_due(later), Some((1, 1)));
        assert_eq!(timers.pop_due(later), None);
    }
}
