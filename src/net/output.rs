//! A connection's replies on their way out, and which of them must wait for a sync. A reply
//! that depends on a write (`STORED`, a message that may not be on disk yet) is appended at once
//! but held back, with everything after it, until the syncer reports its `SyncPoint` on disk: so
//! replies keep their order, commands never wait for a disk, and no client is told of a write
//! that a power cut could undo.

use std::collections::VecDeque;

use crate::engine::SyncPoint;

/// An empty buffer with more capacity than this is freed rather than kept; a buffer whose sent
/// bytes are more than this and more than what is left moves what is left to its front.
const SHRINK_ABOVE: usize = 64 << 10;

#[derive(Default)]
pub struct Output {
    buf: Vec<u8>,
    /// `buf[start..]` is not sent yet.
    start: usize,
    /// Where held bytes begin (an offset in `buf`) and the point they wait for. Points strictly
    /// increase: a later reply that waits for less is released with the one before it anyway.
    holds: VecDeque<(usize, SyncPoint)>,
    /// Every point up to this one was seen synced.
    released: SyncPoint,
    /// Bytes sent since the connection opened.
    sent_total: u64,
}

impl Output {
    /// Bytes not sent yet, held ones included.
    pub fn unsent(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Bytes of memory the buffer holds (what the output budget is charged).
    pub fn memory(&self) -> usize {
        self.buf.capacity()
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.buf.len()
    }

    /// Whether some bytes wait for a sync.
    pub fn held(&self) -> bool {
        !self.holds.is_empty()
    }

    /// Bytes of replies produced since the connection opened, sent or not.
    pub fn produced(&self) -> u64 {
        self.sent_total + self.unsent() as u64
    }

    /// Where the next reply is encoded; everything appended from now on waits for `point`.
    pub fn append_after(&mut self, point: SyncPoint) -> &mut Vec<u8> {
        let last = self.holds.back().map_or(self.released, |&(_, p)| p);
        if point > last {
            self.holds.push_back((self.buf.len(), point));
        }
        &mut self.buf
    }

    /// What may be written to the socket now that every point up to `synced` is on disk.
    pub fn sendable(&mut self, synced: SyncPoint) -> &[u8] {
        while let Some(&(_, point)) = self.holds.front() {
            if point > synced {
                break;
            }
            self.holds.pop_front();
        }
        self.released = self.released.max(synced);
        let end = self.holds.front().map_or(self.buf.len(), |&(at, _)| at);
        &self.buf[self.start..end]
    }

    /// `n` bytes of `sendable` were written. The memory of what was sent is given back as it
    /// goes, not only once everything is: a client reading a long backlog of replies slowly
    /// must not keep all of them in memory.
    pub fn sent(&mut self, n: usize) {
        self.start += n;
        self.sent_total += n as u64;
        if self.start == self.buf.len() && self.holds.is_empty() {
            self.start = 0;
            if self.buf.capacity() > SHRINK_ABOVE {
                self.buf = Vec::new();
            } else {
                self.buf.clear();
            }
        } else if self.start > SHRINK_ABOVE && self.start >= self.unsent() {
            self.buf.drain(..self.start);
            for (at, _) in &mut self.holds {
                *at -= self.start;
            }
            self.start = 0;
            if self.buf.capacity() > 2 * self.buf.len() + SHRINK_ABOVE {
                self.buf.shrink_to(self.buf.len() + SHRINK_ABOVE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_replies_wait_in_order_for_their_point() {
        let mut out = Output::default();
        out.append_after(SyncPoint::NONE).extend_from_slice(b"a");
        out.append_after(SyncPoint(2)).extend_from_slice(b"b");
        // Waits for less than the reply before it: released with it.
        out.append_after(SyncPoint(1)).extend_from_slice(b"c");
        out.append_after(SyncPoint(3)).extend_from_slice(b"d");
        assert_eq!(out.sendable(SyncPoint(1)), b"a");
        out.sent(1);
        assert_eq!(out.sendable(SyncPoint(1)), b"");
        assert!(out.held());
        assert_eq!(out.sendable(SyncPoint(2)), b"bc");
        out.sent(2);
        assert_eq!(out.sendable(SyncPoint(5)), b"d");
        out.sent(1);
        assert!(out.is_empty() && !out.held());
        // Points already seen synced hold nothing.
        out.append_after(SyncPoint(4)).extend_from_slice(b"e");
        assert!(!out.held());
    }

    #[test]
    fn sent_bytes_give_their_memory_back_before_the_rest_is_sent() {
        let mut out = Output::default();
        out.append_after(SyncPoint::NONE)
            .extend_from_slice(&[1; 1 << 20]);
        out.append_after(SyncPoint(1)).extend_from_slice(&[2; 10]);
        let first = out.sendable(SyncPoint::NONE).len();
        assert_eq!(first, 1 << 20);
        out.sent(first - 100);
        assert!(out.memory() < 1 << 18, "sent bytes freed: {}", out.memory());
        assert_eq!(out.sendable(SyncPoint::NONE), &[1; 100][..]);
        out.sent(100);
        assert_eq!(
            out.sendable(SyncPoint(1)),
            &[2; 10][..],
            "the hold moved with it"
        );
    }
}
