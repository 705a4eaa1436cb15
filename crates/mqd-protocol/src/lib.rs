//! Wire protocols: the command vocabulary both protocols share, the two pure codecs, and the
//! HTTP request-head codec of the monitoring endpoints.
//!
//! A codec turns bytes into a [`Command`] and a [`Reply`] into bytes. Codecs do no I/O, keep no
//! clocks and never see the engine, so every byte-level rule is unit-testable and fuzzable.
//! The connection layer picks a codec from a connection's first byte with [`sniff`].

pub mod command;
pub mod framing;
pub mod http;
pub mod json;
pub mod memcache;
pub mod mqmq;
mod text;

pub use command::{
    Command, ErrorKind, Info, Key, Read, Reads, Reply, Set, StatsKind, Value, Values,
};
pub use framing::{input_limit, Framer};

/// Which wire protocol a connection speaks, fixed for its whole life by its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// memcache ASCII text (MemcacheQ, Kestrel clients).
    Memcache,
    /// mqmq length-prefixed binary frames.
    Mqmq,
    /// HTTP/1.1 monitoring requests (`GET /metrics`, ...).
    Http,
}

/// Decides the protocol from a connection's first byte: a lowercase ASCII letter starts every
/// memcache command, an uppercase one an HTTP method (`GET`, `HEAD`); an mqmq frame starts with
/// the high byte of a big-endian length, below 0x20 for any frame under 512 MiB. Anything else is neither, and the connection is closed.
pub fn sniff(first: u8) -> Option<Protocol> {
    if first.is_ascii_lowercase() {
        Some(Protocol::Memcache)
    } else if first.is_ascii_uppercase() {
        Some(Protocol::Http)
    } else if first < 0x20 {
        Some(Protocol::Mqmq)
    } else {
        None
    }
}

/// Limits a codec enforces before it buffers or allocates anything a peer announced.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest message body accepted, in bytes.
    pub max_message_size: usize,
}

/// The outcome of parsing the front of a connection's input buffer.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// The buffer holds no complete request yet; read more and try again.
    NeedMore,
    /// A complete request occupying the first `consumed` bytes.
    Command { consumed: usize, command: Command },
    /// A bad request occupying the first `consumed` bytes. `skip` more bytes that have not
    /// necessarily arrived yet belong to it and must be discarded unread (an oversized body).
    /// `reply` is sent; if `close`, the connection is closed after it.
    Invalid {
        consumed: usize,
        skip: usize,
        reply: Reply,
        close: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_letters_are_memcache_or_http_low_bytes_are_mqmq() {
        assert_eq!(sniff(b's'), Some(Protocol::Memcache));
        assert_eq!(sniff(b'G'), Some(Protocol::Http));
        assert_eq!(sniff(b'H'), Some(Protocol::Http));
        assert_eq!(sniff(0x00), Some(Protocol::Mqmq));
        assert_eq!(sniff(0x1f), Some(Protocol::Mqmq));
        assert_eq!(sniff(b' '), None);
        assert_eq!(sniff(b'1'), None);
        assert_eq!(sniff(0xff), None);
    }
}

#[cfg(test)]
#[path = "noise_tests.rs"]
mod noise_tests;
