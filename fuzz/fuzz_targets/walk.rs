//! The walk every codec's fuzz target makes over its arbitrary bytes, checked the same way for
//! each: request by request, nothing panics, each request uses at least one byte and no more
//! than it was given, a request still incomplete fits in a connection's input buffer, and a
//! refusal that closes the connection ends the walk. What a target checks of each request and
//! each refusal (its replies encode) is its own.

use mqd_protocol::{input_limit, Command, Limits, Parsed, Read, Reply, ReplyStyle, Value, Values};

/// Walks `data` with `parse`, handing each request to `on_command` and each refusal to
/// `on_refusal`. A request uses at least `min_request` bytes.
pub fn walk(
    data: &[u8],
    limits: &Limits,
    min_request: usize,
    parse: impl Fn(&[u8], &Limits) -> Parsed,
    mut on_command: impl FnMut(&Command, &ReplyStyle),
    mut on_refusal: impl FnMut(&Reply, &ReplyStyle),
) {
    let mut rest = data;
    while !rest.is_empty() {
        match parse(rest, limits) {
            Parsed::NeedMore => {
                assert!(rest.len() < input_limit(limits));
                break;
            }
            Parsed::Command {
                consumed,
                command,
                style,
            } => {
                assert!(consumed >= min_request.max(1) && consumed <= rest.len());
                on_command(&command, &style);
                rest = &rest[consumed..];
            }
            Parsed::Invalid {
                consumed,
                skip,
                reply,
                close,
                style,
            } => {
                assert!(consumed > 0 && consumed <= rest.len());
                on_refusal(&reply, &style);
                if close {
                    break;
                }
                rest = &rest[consumed..];
                rest = &rest[skip.min(rest.len())..];
            }
        }
    }
}

/// What a reply to `reads` would carry: each read's own queue name as its message, flags from
/// its key's length, and a CAS value (the queue name's length) where the read asked for one.
#[allow(dead_code)] // each target builds with its own copy of this module, and uses what it needs
pub fn echoed(reads: &[Read]) -> Values {
    reads
        .iter()
        .map(|r| Value {
            key: r.key.clone(),
            flags: r.key.len() as u32,
            body: r.queue().to_vec(),
            cas: r.cas.then_some(r.queue().len() as u64),
        })
        .collect()
}
