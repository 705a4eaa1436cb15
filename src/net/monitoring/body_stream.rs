//! A monitoring body rendered while its client reads it. With a million queues `/metrics` is
//! hundreds of megabytes: rendered whole, then copied into the output buffer, it held twice
//! that at once. A `BodyStream` keeps the snapshot (its numbers, a few dozen bytes per queue)
//! and renders the next [`PIECE`] only when the connection's replies have drained, so the text
//! in memory stays one piece whatever the number of queues. A body that fits in the first
//! piece is never streamed: it goes out whole with its `Content-Length`, as before.

use super::snapshot::Snapshot;
use super::{prometheus, stats_json};
use crate::protocol::http::{self, BodyLength};

/// Bytes rendered at a time: the first piece decides whether a body is streamed at all.
pub const PIECE: usize = 64 << 10;

/// Which body, and where its rendering stopped.
enum Position {
    Metrics(prometheus::Cursor),
    StatsJson(stats_json::Cursor),
}

/// One of the two endpoints whose size grows with the queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    Metrics,
    StatsJson,
}

pub struct BodyStream {
    snapshot: Snapshot,
    position: Position,
    /// `Transfer-Encoding: chunked` (HTTP/1.1); otherwise the body ends at the close.
    chunked: bool,
    /// Close the connection after the body (asked for, or the body ends at the close).
    close: bool,
    /// Where pieces are rendered before being framed (reused, one piece long): `/stats.json`
    /// renders bytes, `/metrics` text (Prometheus' renderer formats into a `String`).
    scratch: Vec<u8>,
    text: String,
}

impl BodyStream {
    /// Starts rendering `body` from `snapshot`.
    pub fn new(body: Body, snapshot: Snapshot) -> Box<BodyStream> {
        Box::new(BodyStream {
            snapshot,
            position: match body {
                Body::Metrics => Position::Metrics(prometheus::Cursor::default()),
                Body::StatsJson => Position::StatsJson(stats_json::Cursor::default()),
            },
            chunked: false,
            close: false,
            scratch: Vec::new(),
            text: String::new(),
        })
    }

    /// Renders the next piece, unframed (`piece`); true when the body ended.
    fn render_piece(&mut self) -> bool {
        match &mut self.position {
            Position::Metrics(at) => {
                self.text.clear();
                prometheus::render_more(&self.snapshot, at, &mut self.text, PIECE)
            }
            Position::StatsJson(at) => {
                self.scratch.clear();
                stats_json::render_more(&self.snapshot, at, &mut self.scratch, PIECE)
            }
        }
    }

    /// The piece rendered last.
    fn piece(&self) -> &[u8] {
        match self.position {
            Position::Metrics(_) => self.text.as_bytes(),
            Position::StatsJson(_) => &self.scratch,
        }
    }

    /// Renders the first piece. `Ok(body)`: that was all of it, to send with its length.
    /// `Err(stream)`: more follows; the caller sends [`BodyStream::start`]'s head.
    pub fn first_piece(mut self: Box<Self>) -> Result<Vec<u8>, Box<BodyStream>> {
        if self.render_piece() {
            return Ok(match self.position {
                Position::Metrics(_) => std::mem::take(&mut self.text).into_bytes(),
                Position::StatsJson(_) => std::mem::take(&mut self.scratch),
            });
        }
        Err(self)
    }

    /// Appends the head of a streamed response (and, unless `head_only`, its first piece).
    /// Returns the stream if the body goes on after that.
    pub fn start(
        mut self: Box<Self>,
        content_type: &str,
        head_only: bool,
        close: bool,
        http11: bool,
        out: &mut Vec<u8>,
    ) -> Option<Box<BodyStream>> {
        self.chunked = http11;
        self.close = close || !http11;
        let length = if self.chunked {
            BodyLength::Chunked
        } else {
            BodyLength::UntilClose
        };
        http::encode_head(http::Status::Ok, content_type, length, close, http11, out);
        if head_only {
            return None;
        }
        self.frame(out);
        Some(self)
    }

    /// Appends the next piece to `out`, framed; true when the body ended with it.
    pub fn next(&mut self, out: &mut Vec<u8>) -> bool {
        let done = self.render_piece();
        self.frame(out);
        if done && self.chunked {
            out.extend_from_slice(http::LAST_CHUNK);
        }
        done
    }

    fn frame(&self, out: &mut Vec<u8>) {
        if self.chunked {
            http::encode_chunk(self.piece(), out);
        } else {
            out.extend_from_slice(self.piece());
        }
    }

    /// Whether the connection closes once the body is sent.
    pub fn closes(&self) -> bool {
        self.close
    }

    /// Bytes of memory the stream holds (charged to the output budget while it lasts).
    pub fn memory(&self) -> usize {
        self.snapshot.memory() + self.scratch.capacity() + self.text.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineSnapshot, HistogramSnapshot, QueueStats};
    use crate::net::Totals;

    fn snapshot(queues: usize) -> Snapshot {
        let histogram = HistogramSnapshot {
            buckets: vec![(1, 1)],
            count: 1,
            sum: 1,
        };
        Snapshot {
            time_ms: 1,
            uptime_secs: 2,
            curr_connections: 3,
            total_connections: 4,
            connections: Vec::new(),
            totals: Totals::default(),
            queues: (0..queues)
                .map(|i| QueueStats {
                    name: format!("queue-{i:06}").into_bytes().into(),
                    items: i as u64,
                    bytes: 3,
                    enqueued: 4,
                    removed: 5,
                    expired: 6,
                    discarded: 7,
                    flushes: 8,
                    waiters: 9,
                    open: 10,
                    age_ms: 1500,
                })
                .collect(),
            engine: EngineSnapshot {
                commit_batches: 1,
                batch_size: histogram.clone(),
                sync_micros: histogram,
                below_reserve: false,
                storage_errors: 0,
                reserve_bytes: 0,
                free_bytes: None,
                rocksdb_memory: Vec::new(),
                message_memory: [("recent", 0), ("read_ahead", 0)],
                queues_loaded: 0,
            },
            budgets: [("input", 0, 1), ("output", 0, 1), ("write", 0, 1)],
            forwarded: None,
            cluster: None,
        }
    }

    /// Every byte after the head of a streamed response, with its chunks joined.
    fn streamed(body: Body, queues: usize, http11: bool) -> Vec<u8> {
        let stream = BodyStream::new(body, snapshot(queues))
            .first_piece()
            .expect_err("larger than a piece");
        let mut out = Vec::new();
        let mut stream = stream
            .start("t", false, false, http11, &mut out)
            .expect("more follows");
        assert!(
            stream.closes() != http11,
            "only HTTP/1.0 ends the body at the close"
        );
        while !stream.next(&mut out) {
            assert!(stream.memory() < snapshot(queues).memory() + 4 * PIECE);
        }
        let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut rest = &out[head_end..];
        if !http11 {
            return rest.to_vec();
        }
        let mut body = Vec::new();
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16);
            let size = size.unwrap();
            rest = &rest[line_end + 2..];
            assert!(size <= 2 * PIECE, "pieces stay small: {size}");
            if size == 0 {
                assert_eq!(rest, b"\r\n");
                return body;
            }
            body.extend_from_slice(&rest[..size]);
            assert_eq!(&rest[size..size + 2], b"\r\n");
            rest = &rest[size + 2..];
        }
    }

    #[test]
    fn a_streamed_body_is_the_body_rendered_whole() {
        for http11 in [true, false] {
            let whole = prometheus::render(&snapshot(5000));
            assert_eq!(streamed(Body::Metrics, 5000, http11), whole.as_bytes());
            let whole = stats_json::render(&snapshot(5000));
            assert_eq!(streamed(Body::StatsJson, 5000, http11), whole);
        }
    }

    #[test]
    fn a_small_body_is_not_streamed() {
        let body = BodyStream::new(Body::Metrics, snapshot(3)).first_piece();
        let body = body.ok().expect("fits in one piece");
        assert_eq!(body, prometheus::render(&snapshot(3)).into_bytes());
    }
}
