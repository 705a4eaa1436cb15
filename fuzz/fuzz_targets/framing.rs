//! A connection's request framing fed an arbitrary byte stream, whole and then cut at arbitrary
//! points (the first bytes of the input choose the cuts): the same requests and refusals, with the
//! same reply styles, must come out in the same order either way, nothing may panic, and a request
//! still incomplete must fit in a connection's input buffer (else the connection would stall, full
//! and unable to parse). Every protocol the first byte can choose is reached: memcache text and
//! meta, memcache binary (0x80), mqmq.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqd_protocol::{input_limit, Command, Framer, Limits, Parsed, Reply, ReplyStyle};

/// Small, so that oversized bodies (discarded unread) are common.
const LIMITS: Limits = Limits {
    max_message_size: 48,
};

/// What the framer made of a request.
#[derive(Debug, PartialEq)]
enum Out {
    Command(Command, ReplyStyle),
    Refused(Reply, bool, ReplyStyle),
    Neither(u8),
}

/// Feeds `stream` in pieces ending at `cuts` (then the rest), as reads would deliver it, and
/// lists what the framer made of it.
fn frame(stream: &[u8], cuts: &[usize]) -> Vec<Out> {
    let mut framer = Framer::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut fed = 0;
    for &end in cuts.iter().chain(std::iter::once(&stream.len())) {
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        let mut start = 0;
        loop {
            start += framer.discard(buf.len() - start);
            if framer.skipping() || start == buf.len() {
                break;
            }
            let parsed = match framer.parse(&buf[start..], &LIMITS) {
                Ok(parsed) => parsed,
                Err(first) => {
                    out.push(Out::Neither(first));
                    return out;
                }
            };
            framer.used(&parsed);
            match parsed {
                Parsed::NeedMore => {
                    let held = buf.len() - start;
                    assert!(
                        held < input_limit(&LIMITS),
                        "{held} bytes buffered and still incomplete"
                    );
                    break;
                }
                Parsed::Command {
                    consumed,
                    command,
                    style,
                } => {
                    assert!(consumed > 0 && consumed <= buf.len() - start);
                    start += consumed;
                    out.push(Out::Command(command, style));
                }
                Parsed::Invalid {
                    consumed,
                    reply,
                    close,
                    style,
                    ..
                } => {
                    assert!(consumed > 0 && consumed <= buf.len() - start);
                    start += consumed;
                    out.push(Out::Refused(reply, close, style));
                    if close {
                        return out;
                    }
                }
            }
        }
        buf.drain(..start);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = (count % 16) as usize;
    if rest.len() < count {
        return;
    }
    let (steps, stream) = rest.split_at(count);
    let mut cuts = Vec::with_capacity(count);
    let mut at = 0;
    for &step in steps {
        at = (at + step as usize).min(stream.len());
        cuts.push(at);
    }
    let whole = frame(stream, &[]);
    let byte_by_byte: Vec<usize> = (1..stream.len().min(64)).collect();
    assert_eq!(whole, frame(stream, &cuts), "cut at {cuts:?}");
    assert_eq!(whole, frame(stream, &byte_by_byte), "fed byte by byte");
});
