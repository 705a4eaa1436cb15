//! Wire protocols: the command vocabulary every protocol shares, the pure codecs (memcache text
//! with its meta commands, memcache binary, mqmq frames), and the HTTP request-head codec of the
//! monitoring endpoints.
//!
//! A codec turns bytes into a [`Command`] and a [`Reply`] into bytes. Codecs do no I/O, keep no
//! clocks and never see the engine, so every byte-level rule is unit-testable and fuzzable.
//! The connection layer picks a codec from a connection's first byte with [`sniff`]. Each parsed
//! request comes with its [`ReplyStyle`]: the connection keeps it with the request and hands it
//! to [`encode`] with the reply, so it needs to know nothing of the dialects.

pub mod base64;
pub mod binary;
pub mod command;
pub mod framing;
pub mod http;
pub mod json;
pub mod memcache;
pub mod meta;
pub mod mqmq;
pub mod style;
mod text;

pub use command::{
    Command, ErrorKind, Info, Key, Read, Reads, Reply, Set, StatsKind, Value, Values,
};
pub use framing::{input_limit, Framer};
pub use style::{encode, ReplyStyle};

/// Which wire protocol a connection speaks, fixed for its whole life by its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// memcache ASCII text (MemcacheQ, Kestrel clients), with memcached's meta commands.
    Memcache,
    /// memcache binary protocol (dalli, memjs, ...): 24-byte headers, request magic 0x80.
    MemcacheBinary,
    /// mqmq length-prefixed binary frames.
    Mqmq,
    /// HTTP/1.1 monitoring requests (`GET /metrics`, ...).
    Http,
}

/// Decides the protocol from a connection's first byte: a lowercase ASCII letter starts every
/// memcache command (classic and meta), an uppercase one an HTTP method (`GET`, `HEAD`); 0x80 is
/// the memcache binary request magic; an mqmq frame starts with the high byte of a big-endian
/// length, below 0x20 for any frame under 512 MiB (one starting with 0x80 would be at least
/// 2 GiB, which mqmq never allows). Anything else is none of them, and the connection is closed.
pub fn sniff(first: u8) -> Option<Protocol> {
    if first.is_ascii_lowercase() {
        Some(Protocol::Memcache)
    } else if first.is_ascii_uppercase() {
        Some(Protocol::Http)
    } else if first < 0x20 {
        Some(Protocol::Mqmq)
    } else if first == binary::REQUEST_MAGIC {
        Some(Protocol::MemcacheBinary)
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
    /// A complete request occupying the first `consumed` bytes. Its reply is spelled as
    /// `style` says: keep it with the request until the reply is encoded with [`encode`].
    Command {
        consumed: usize,
        command: Command,
        style: ReplyStyle,
    },
    /// A bad request occupying the first `consumed` bytes. `skip` more bytes that have not
    /// necessarily arrived yet belong to it and must be discarded unread (an oversized body).
    /// `reply` is sent, spelled as `style` says; if `close`, the connection is closed after it.
    Invalid {
        consumed: usize,
        skip: usize,
        reply: Reply,
        close: bool,
        style: ReplyStyle,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_letters_are_memcache_or_http_low_bytes_are_mqmq_0x80_is_binary() {
        assert_eq!(sniff(b's'), Some(Protocol::Memcache));
        assert_eq!(sniff(b'm'), Some(Protocol::Memcache));
        assert_eq!(sniff(0x80), Some(Protocol::MemcacheBinary));
        assert_eq!(sniff(0x81), None, "a response magic is no request");
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
