//! The meta commands on arbitrary bytes (through the memcache text codec, which frames them): no
//! panic; a request uses at least one byte and no more than it was given; a request still
//! incomplete fits in a connection's input buffer; every reply a meta request can get is whole
//! lines (a `VA` line announcing its data block exactly); and base64 round-trips.
#![no_main]

mod walk;

use libfuzzer_sys::fuzz_target;
use mqd_protocol::{base64, encode, memcache, Command, ErrorKind, Limits, Reply, ReplyStyle};

const LIMITS: Limits = Limits {
    max_message_size: 64,
};

/// `out` is lines, each ending in `\r\n`, a `VA <n>` line followed by exactly `n` bytes and
/// `\r\n`.
fn check_lines(out: &[u8]) {
    let mut rest = out;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a whole line");
        let line = &rest[..end];
        rest = &rest[end + 2..];
        if let Some(size) = line.strip_prefix(b"VA ") {
            let digits = size.split(|&b| b == b' ').next().unwrap();
            let n: usize = std::str::from_utf8(digits).unwrap().parse().unwrap();
            assert_eq!(&rest[n..n + 2], b"\r\n");
            rest = &rest[n + 2..];
        }
    }
}

fn replies(command: &Command) -> Vec<Reply> {
    let mut replies = vec![
        Reply::Stored,
        Reply::Deleted,
        Reply::NotFound,
        Reply::End,
        Reply::Noop,
        Reply::Closing,
        Reply::Values(Default::default()),
        Reply::Error(ErrorKind::QueueFull),
        Reply::Error(ErrorKind::NotStored),
        Reply::Error(ErrorKind::Exists),
    ];
    if let Command::Get(reads) = command {
        // Echo what was read, as a reply would.
        replies.push(Reply::Values(walk::echoed(reads)));
    }
    replies
}

fuzz_target!(|data: &[u8]| {
    walk::walk(
        data,
        &LIMITS,
        1,
        memcache::parse,
        |command, style| {
            if let ReplyStyle::Meta(_) = style {
                for reply in replies(command) {
                    let mut out = Vec::new();
                    encode(&reply, style, &mut out);
                    check_lines(&out);
                }
            }
        },
        |reply, style| {
            let mut out = Vec::new();
            encode(reply, style, &mut out);
            assert!(out.ends_with(b"\r\n"));
            check_lines(&out);
        },
    );
    // Base64: whatever decodes re-encodes to text that decodes the same; anything encodes and
    // decodes back.
    let mut decoded = Vec::new();
    if base64::decode(data, &mut decoded).is_some() {
        let mut text = Vec::new();
        base64::encode(&decoded, &mut text);
        let mut again = Vec::new();
        assert!(base64::decode(&text, &mut again).is_some());
        assert_eq!(again, decoded);
    }
    let mut text = Vec::new();
    base64::encode(data, &mut text);
    let mut back = Vec::new();
    assert!(base64::decode(&text, &mut back).is_some());
    assert_eq!(back, data);
});
