//! The memcache binary codec on arbitrary bytes: no panic; a request uses at least one byte and
//! no more than it was given; a request still incomplete fits in a connection's input buffer;
//! and every response it can produce for a request is a sequence of well-formed response
//! headers that echo the request's opcode and say their own length.
#![no_main]

mod walk;

use libfuzzer_sys::fuzz_target;
use mqd_protocol::{binary, encode, Command, ErrorKind, Info, Limits, Reply, ReplyStyle};

const LIMITS: Limits = Limits {
    max_message_size: 64,
};

/// Every response in `out` is a 24-byte header with magic 0x81, `opcode`, and the body it
/// announces, extras and key included.
fn check_responses(out: &[u8], opcode: u8) {
    let mut rest = out;
    while !rest.is_empty() {
        assert!(rest.len() >= binary::HEADER_LEN, "a cut response: {out:?}");
        assert_eq!(rest[0], binary::RESPONSE_MAGIC);
        assert_eq!(rest[1], opcode);
        let key_len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let extras_len = usize::from(rest[4]);
        let body_len = u32::from_be_bytes(rest[8..12].try_into().unwrap()) as usize;
        assert!(key_len + extras_len <= body_len);
        assert_eq!(&rest[16..24], &[0; 8], "cas is always 0");
        rest = &rest[binary::HEADER_LEN + body_len..];
    }
}

fn replies(command: &Command) -> Vec<Reply> {
    let mut replies = vec![
        Reply::Stored,
        Reply::Deleted,
        Reply::NotFound,
        Reply::Ok,
        Reply::Reset,
        Reply::Noop,
        Reply::Closing,
        Reply::Version("0.1.0"),
        Reply::Stats(vec![("name".into(), "value".into())]),
        Reply::Info(Info {
            connections: 1,
            queues: Vec::new(),
        }),
        Reply::Values(Default::default()),
        Reply::Error(ErrorKind::QueueFull),
        Reply::Error(ErrorKind::BadFormat("bad option combination")),
    ];
    if let Command::Get(reads) = command {
        // Echo what was read, as a reply would.
        replies.push(Reply::Values(walk::echoed(reads)));
    }
    replies
}

fn opcode(style: &ReplyStyle) -> u8 {
    match style {
        ReplyStyle::Binary(style) => style.opcode(),
        other => panic!("a binary request styled {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    walk::walk(
        data,
        &LIMITS,
        binary::HEADER_LEN,
        binary::parse,
        |command, style| {
            for reply in replies(command) {
                let mut out = Vec::new();
                encode(&reply, style, &mut out);
                check_responses(&out, opcode(style));
            }
        },
        |reply, style| {
            let mut out = Vec::new();
            encode(reply, style, &mut out);
            assert!(!out.is_empty(), "a refusal is always answered");
            check_responses(&out, opcode(style));
        },
    );
});
