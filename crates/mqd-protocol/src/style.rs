//! How one request's reply is spelled, and the one entry that spells any reply.
//!
//! A connection's protocol is not enough to encode a reply: a binary response echoes its
//! request's opcode and opaque and is dropped for quiet opcodes, a meta reply returns the flags
//! its request asked for, and classic and meta commands mix on one text connection. So every
//! parsed request carries a [`ReplyStyle`]; the connection keeps it with the request until the
//! reply is ready and hands both to [`encode`], which alone decides what goes on the wire
//! (including nothing, for quiet successes and quiet misses).

use super::binary::{self, BinaryStyle};
use super::meta::{self, MetaStyle};
use super::{memcache, mqmq, Reply};

/// The spelling of one request's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyStyle {
    /// Classic memcache text (`STORED`, `VALUE ... END`).
    Text,
    /// A meta command (`mg`, `ms`, `md`, `mn`, `me`): its code and the flags it returns.
    Meta(MetaStyle),
    /// A memcache binary request: its opcode, opaque and, for GETK, key.
    Binary(BinaryStyle),
    /// An mqmq frame.
    Mqmq,
}

/// Appends the wire form of `reply` to a request parsed with `style`: possibly nothing (a quiet
/// request's success, a quiet get's miss, the text answer to `quit`).
pub fn encode(reply: &Reply, style: &ReplyStyle, out: &mut Vec<u8>) {
    match style {
        ReplyStyle::Text => memcache::encode(reply, out),
        ReplyStyle::Meta(style) => meta::encode(reply, style, out),
        ReplyStyle::Binary(style) => binary::encode(reply, style, out),
        ReplyStyle::Mqmq => mqmq::encode(reply, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{memcache, Limits, Parsed};

    const LIMITS: Limits = Limits {
        max_message_size: 64,
    };

    fn styled(input: &[u8]) -> ReplyStyle {
        match memcache::parse(input, &LIMITS) {
            Parsed::Command { style, .. } | Parsed::Invalid { style, .. } => style,
            Parsed::NeedMore => panic!("incomplete {input:?}"),
        }
    }

    fn spelled(reply: &Reply, style: &ReplyStyle) -> Vec<u8> {
        let mut out = Vec::new();
        encode(reply, style, &mut out);
        out
    }

    #[test]
    fn one_entry_spells_every_dialect() {
        assert_eq!(spelled(&Reply::Stored, &ReplyStyle::Text), b"STORED\r\n");
        assert_eq!(
            spelled(&Reply::Stored, &styled(b"ms q 1\r\nx\r\n")),
            b"HD\r\n"
        );
        assert_eq!(spelled(&Reply::Stored, &styled(b"ms q 1 q\r\nx\r\n")), b"");
        assert_eq!(spelled(&Reply::Closing, &ReplyStyle::Text), b"");
        let mut frame = Vec::new();
        mqmq::frame(&mut frame, &[b"OK"]);
        assert_eq!(spelled(&Reply::Stored, &ReplyStyle::Mqmq), frame);
        let quit = [
            0x80, 0x07, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0, 0, 0,
            0,
        ];
        let Parsed::Command { style, .. } = binary::parse(&quit, &LIMITS) else {
            panic!("QUIT parses");
        };
        let out = spelled(&Reply::Closing, &style);
        assert_eq!(out.len(), 24);
        assert_eq!(&out[..2], [0x81, 0x07]);
        assert_eq!(&out[12..16], [0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn classic_and_meta_mix_on_one_text_stream() {
        let stream = b"set q 0 0 1\r\nA\r\nms q 1 T0 F5\r\nB\r\nget q\r\nmg q v f k\r\nmn\r\n";
        let mut rest = &stream[..];
        let mut styles = Vec::new();
        while !rest.is_empty() {
            let Parsed::Command {
                consumed, style, ..
            } = memcache::parse(rest, &LIMITS)
            else {
                panic!("all parse: {rest:?}");
            };
            styles.push(style);
            rest = &rest[consumed..];
        }
        assert_eq!(styles.len(), 5);
        assert_eq!(styles[0], ReplyStyle::Text);
        assert!(matches!(styles[1], ReplyStyle::Meta(_)));
        assert_eq!(styles[2], ReplyStyle::Text);
        let value = crate::Value {
            key: crate::Key::from_slice(b"q"),
            flags: 5,
            body: b"B".to_vec(),
            cas: None,
        };
        let values = Reply::Values(smallvec::smallvec![value]);
        assert_eq!(spelled(&values, &styles[2]), b"VALUE q 5 1\r\nB\r\nEND\r\n");
        assert_eq!(spelled(&values, &styles[3]), b"VA 1 f5 kq\r\nB\r\n");
        assert_eq!(spelled(&Reply::Noop, &styles[4]), b"MN\r\n");
    }
}
