//! Byte-level rules of the memcache binary codec: every request it reads, every response it
//! writes, and what it does with malformed, oversized and unsupported requests.

use super::*;
use crate::{Read, Values};

const LIMITS: Limits = Limits {
    max_message_size: 64,
};
const OPAQUE: u32 = 0xdead_beef;

/// A request with opaque [`OPAQUE`].
fn request(opcode: u8, extras: &[u8], key: &[u8], value: &[u8], cas: u64) -> Vec<u8> {
    let mut out = vec![REQUEST_MAGIC, opcode];
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.push(extras.len() as u8);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&((extras.len() + key.len() + value.len()) as u32).to_be_bytes());
    out.extend_from_slice(&OPAQUE.to_be_bytes());
    out.extend_from_slice(&cas.to_be_bytes());
    out.extend_from_slice(extras);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out
}

fn get(opcode: u8, key: &[u8]) -> Vec<u8> {
    request(opcode, &[], key, &[], 0)
}

fn set(opcode: u8, key: &[u8], flags: u32, exptime: u32, value: &[u8]) -> Vec<u8> {
    let mut extras = flags.to_be_bytes().to_vec();
    extras.extend_from_slice(&exptime.to_be_bytes());
    request(opcode, &extras, key, value, 0)
}

/// The response mqd must write: opaque [`OPAQUE`], cas 0.
fn response(opcode: u8, status: u16, extras: &[u8], key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![RESPONSE_MAGIC, opcode];
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.push(extras.len() as u8);
    out.push(0);
    out.extend_from_slice(&status.to_be_bytes());
    out.extend_from_slice(&((extras.len() + key.len() + value.len()) as u32).to_be_bytes());
    out.extend_from_slice(&OPAQUE.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(extras);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out
}

fn parsed(input: &[u8]) -> (Command, BinaryStyle) {
    match parse(input, &LIMITS) {
        Parsed::Command {
            consumed,
            command,
            style: ReplyStyle::Binary(style),
        } => {
            assert_eq!(consumed, input.len(), "{input:?}");
            (command, style)
        }
        other => panic!("expected a command from {input:?}, got {other:?}"),
    }
}

/// `(consumed, skip, reply, close)` of a refused request, and its response.
fn refused(input: &[u8]) -> (usize, usize, bool, Vec<u8>) {
    match parse(input, &LIMITS) {
        Parsed::Invalid {
            consumed,
            skip,
            reply,
            close,
            style: ReplyStyle::Binary(style),
        } => (consumed, skip, close, encoded(&reply, &style)),
        other => panic!("expected a refusal from {input:?}, got {other:?}"),
    }
}

fn encoded(reply: &Reply, style: &BinaryStyle) -> Vec<u8> {
    let mut out = Vec::new();
    encode(reply, style, &mut out);
    out
}

fn values(key: &[u8], flags: u32, body: &[u8]) -> Reply {
    Reply::Values(smallvec::smallvec![Value {
        key: Key::from_slice(key),
        flags,
        body: body.to_vec(),
        cas: None,
    }])
}

#[test]
fn get_hit_byte_for_byte() {
    let input = [
        0x80, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, // magic GET keylen=1 extlen=0
        0x00, 0x00, 0x00, 0x01, 0x01, 0x02, 0x03, 0x04, // bodylen=1 opaque
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // cas
        b'q',
    ];
    let Parsed::Command {
        consumed: 25,
        command,
        style: ReplyStyle::Binary(style),
    } = parse(&input, &LIMITS)
    else {
        panic!("GET q parses");
    };
    assert_eq!(command, Command::Get(smallvec::smallvec![Read::take(b"q")]));
    let expected = [
        0x81, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, // magic GET keylen=0 extlen=4 OK
        0x00, 0x00, 0x00, 0x09, 0x01, 0x02, 0x03, 0x04, // bodylen=9 opaque
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // cas 0
        0x00, 0x00, 0x00, 0x07, b'h', b'e', b'l', b'l', b'o', // flags=7, value
    ];
    assert_eq!(encoded(&values(b"q", 7, b"hello"), &style), expected);
}

#[test]
fn gets_and_their_misses() {
    let hit = values(b"q", 3, b"v");
    let miss = Reply::Values(Values::new());
    let (_, style) = parsed(&get(opcode::GET, b"q"));
    assert_eq!(
        encoded(&hit, &style),
        response(0x00, 0, &[0, 0, 0, 3], b"", b"v")
    );
    assert_eq!(
        encoded(&miss, &style),
        response(0x00, 1, &[], b"", b"Not found")
    );
    let (_, style) = parsed(&get(opcode::GETQ, b"q"));
    assert_eq!(
        encoded(&hit, &style),
        response(0x09, 0, &[0, 0, 0, 3], b"", b"v")
    );
    assert_eq!(encoded(&miss, &style), b"", "a quiet miss says nothing");
    let (_, style) = parsed(&get(opcode::GETK, b"q/t=5"));
    assert_eq!(
        encoded(&hit, &style),
        response(0x0c, 0, &[0, 0, 0, 3], b"q/t=5", b"v")
    );
    assert_eq!(
        encoded(&miss, &style),
        response(0x0c, 1, &[], b"q/t=5", b""),
        "GETK's miss carries the key"
    );
    let (_, style) = parsed(&get(opcode::GETKQ, b"q"));
    assert_eq!(
        encoded(&hit, &style),
        response(0x0d, 0, &[0, 0, 0, 3], b"q", b"v")
    );
    assert_eq!(encoded(&miss, &style), b"");
    let storage = Reply::Error(ErrorKind::Storage);
    assert_eq!(
        encoded(&storage, &style),
        response(0x0d, 0x82, &[], b"", b"storage failure"),
        "errors are never quiet"
    );
}

#[test]
fn a_multi_get_is_quiet_gets_then_noop() {
    let mut stream = get(opcode::GETKQ, b"a");
    stream.extend(get(opcode::GETKQ, b"b"));
    stream.extend(request(opcode::NOOP, &[], &[], &[], 0));
    let mut rest = &stream[..];
    let mut out = Vec::new();
    let replies = [
        values(b"a", 0, b"1"),
        Reply::Values(Values::new()),
        Reply::Noop,
    ];
    for reply in &replies {
        let Parsed::Command {
            consumed,
            style: ReplyStyle::Binary(style),
            ..
        } = parse(rest, &LIMITS)
        else {
            panic!("parses");
        };
        encode(reply, &style, &mut out);
        rest = &rest[consumed..];
    }
    let mut expected = response(0x0d, 0, &[0, 0, 0, 0], b"a", b"1");
    expected.extend(response(0x0a, 0, &[], &[], &[]));
    assert_eq!(out, expected);
}

#[test]
fn get_keys_carry_the_read_options_and_any_bytes() {
    let (command, _) = parsed(&get(opcode::GET, b"q/t=500/open"));
    let Command::Get(reads) = command else {
        panic!("a get");
    };
    assert_eq!(reads[0].queue(), b"q");
    assert_eq!(reads[0].wait_ms, Some(500));
    assert!(reads[0].open && !reads[0].cas);
    let (command, _) = parsed(&get(opcode::GET, b"a b\x00\r\n\xff"));
    assert_eq!(
        command,
        Command::Get(smallvec::smallvec![Read::take(b"a b\x00\r\n\xff")])
    );
    let input = get(opcode::GET, b"q/peek/open");
    assert_eq!(
        refused(&input),
        (
            input.len(),
            0,
            false,
            response(0x00, 4, &[], b"", b"bad option combination")
        )
    );
    let input = get(opcode::GET, b"/open");
    assert_eq!(
        refused(&input).3,
        response(0x00, 4, &[], b"", b"bad command line format")
    );
}

#[test]
fn sets_enqueue_with_flags_and_exptime() {
    let (command, style) = parsed(&set(opcode::SET, b"q", 7, 60, b"hello"));
    assert_eq!(
        command,
        Command::Set(Set {
            queue: Key::from_slice(b"q"),
            flags: 7,
            exptime: 60,
            body: b"hello".to_vec(),
            noreply: false,
        })
    );
    assert_eq!(
        encoded(&Reply::Stored, &style),
        response(0x01, 0, &[], &[], &[])
    );
    let (command, style) = parsed(&set(opcode::SETQ, b"a b", 0, u32::MAX, b""));
    assert!(matches!(
        command,
        Command::Set(Set {
            noreply: true,
            exptime: 4_294_967_295,
            ..
        })
    ));
    assert_eq!(encoded(&Reply::Stored, &style), b"");
    assert_eq!(
        encoded(&Reply::Error(ErrorKind::QueueFull), &style),
        response(0x11, 0x82, &[], &[], b"queue full")
    );
    for opcode in [opcode::REPLACE, opcode::REPLACEQ] {
        let (command, style) = parsed(&set(opcode, b"q", 0, 0, b"x"));
        assert!(matches!(command, Command::Set(_)), "replace enqueues");
        assert_eq!(encoded(&Reply::Stored, &style).is_empty(), style.quiet());
    }
}

#[test]
fn a_too_large_value_is_refused_from_its_header_and_skipped() {
    let input = set(opcode::SET, b"q", 0, 0, &[b'x'; 65]);
    let (consumed, skip, close, out) = refused(&input[..HEADER_LEN]);
    assert_eq!((consumed, skip, close), (24, 8 + 1 + 65, false));
    assert_eq!(out, response(0x01, 3, &[], &[], b"Too large."));
    let (_, style) = parsed(&set(opcode::SET, b"q", 0, 0, &[b'x'; 64]));
    assert_eq!(style.opcode(), opcode::SET);
}

#[test]
fn deletes_and_their_quiet_form() {
    let (command, style) = parsed(&get(opcode::DELETE, b"q"));
    assert_eq!(
        command,
        Command::Delete {
            queue: b"q".to_vec(),
            noreply: false
        }
    );
    assert_eq!(
        encoded(&Reply::Deleted, &style),
        response(0x04, 0, &[], &[], &[])
    );
    assert_eq!(
        encoded(&Reply::NotFound, &style),
        response(0x04, 1, &[], &[], b"Not found")
    );
    let (command, style) = parsed(&get(opcode::DELETEQ, b"q"));
    assert!(matches!(command, Command::Delete { noreply: false, .. }));
    assert_eq!(encoded(&Reply::Deleted, &style), b"");
    assert_eq!(
        encoded(&Reply::NotFound, &style),
        response(0x14, 1, &[], &[], b"Not found"),
        "DELETEQ still answers a miss"
    );
}

#[test]
fn compare_and_swap_never_matches() {
    for opcode in [opcode::SET, opcode::SETQ, opcode::DELETE, opcode::DELETEQ] {
        let input = match opcode {
            opcode::SET | opcode::SETQ => request(opcode, &[0; 8], b"q", b"v", 42),
            _ => request(opcode, &[], b"q", &[], 42),
        };
        let (consumed, skip, close, out) = refused(&input);
        assert_eq!((consumed, skip, close), (24, input.len() - 24, false));
        assert_eq!(out, response(opcode, 2, &[], &[], b"Data exists for key."));
    }
}

#[test]
fn noop_version_quit_flush() {
    let empty = |opcode| request(opcode, &[], &[], &[], 0);
    let (command, style) = parsed(&empty(opcode::NOOP));
    assert_eq!(command, Command::Noop);
    assert_eq!(
        encoded(&Reply::Noop, &style),
        response(0x0a, 0, &[], &[], &[])
    );
    let (command, style) = parsed(&empty(opcode::VERSION));
    assert_eq!(command, Command::Version);
    assert_eq!(
        encoded(&Reply::Version("0.1.0"), &style),
        response(0x0b, 0, &[], &[], b"0.1.0")
    );
    let (command, style) = parsed(&empty(opcode::QUIT));
    assert_eq!(command, Command::Quit);
    assert_eq!(
        encoded(&Reply::Closing, &style),
        response(0x07, 0, &[], &[], &[])
    );
    let (command, style) = parsed(&empty(opcode::QUITQ));
    assert_eq!(command, Command::Quit);
    assert_eq!(encoded(&Reply::Closing, &style), b"");
    let (command, style) = parsed(&empty(opcode::FLUSH));
    assert_eq!(command, Command::FlushAll { noreply: false });
    assert_eq!(
        encoded(&Reply::Ok, &style),
        response(0x08, 0, &[], &[], &[])
    );
    let (command, style) = parsed(&request(opcode::FLUSHQ, &[0, 0, 0, 9], &[], &[], 0));
    assert_eq!(command, Command::FlushAll { noreply: true });
    assert_eq!(encoded(&Reply::Ok, &style), b"");
}

#[test]
fn stats_one_response_per_stat_then_an_empty_one() {
    let stat = |key: &[u8]| request(opcode::STAT, &[], key, &[], 0);
    assert_eq!(parsed(&stat(b"")).0, Command::Stats(StatsKind::General));
    assert_eq!(parsed(&stat(b"queue")).0, Command::Stats(StatsKind::Queue));
    let (command, style) = parsed(&stat(b"reset"));
    assert_eq!(command, Command::Stats(StatsKind::Reset));
    assert_eq!(
        encoded(&Reply::Reset, &style),
        response(0x10, 0, &[], &[], &[])
    );
    let stats = Reply::Stats(vec![
        ("pid".into(), "12".into()),
        ("q4".into(), "2/0".into()),
    ]);
    let mut expected = response(0x10, 0, &[], b"pid", b"12");
    expected.extend(response(0x10, 0, &[], b"q4", b"2/0"));
    expected.extend(response(0x10, 0, &[], &[], &[]));
    assert_eq!(encoded(&stats, &style), expected);
    let input = stat(b"items");
    assert_eq!(
        refused(&input),
        (
            input.len(),
            0,
            false,
            response(0x10, 1, &[], &[], b"Not found")
        )
    );
}

#[test]
fn unsupported_opcodes_answer_and_skip_their_body() {
    let cases: [(u8, u16, &[u8]); 16] = [
        (opcode::ADD, 2, b"Data exists for key."),
        (opcode::ADDQ, 2, b"Data exists for key."),
        (opcode::APPEND, 5, b"Not stored."),
        (opcode::APPENDQ, 5, b"Not stored."),
        (opcode::PREPEND, 5, b"Not stored."),
        (opcode::PREPENDQ, 5, b"Not stored."),
        (
            opcode::INCREMENT,
            6,
            b"Non-numeric server-side value for incr or decr",
        ),
        (
            opcode::DECREMENTQ,
            6,
            b"Non-numeric server-side value for incr or decr",
        ),
        (opcode::TOUCH, 0x81, b"Unknown command"),
        (opcode::GAT, 0x81, b"Unknown command"),
        (opcode::GATKQ, 0x81, b"Unknown command"),
        (0x1b, 0x81, b"Unknown command"),
        (0x55, 0x81, b"Unknown command"),
        (opcode::SASL_LIST_MECHS, 0x20, b"Auth failure."),
        (opcode::SASL_AUTH, 0x20, b"Auth failure."),
        (opcode::SASL_STEP, 0x20, b"Auth failure."),
    ];
    for (opcode, status, message) in cases {
        let input = request(opcode, &[0; 8], b"PLAIN", b"\x00user\x00pass", 0);
        let (consumed, skip, close, out) = refused(&input[..HEADER_LEN]);
        assert_eq!(
            (consumed, skip, close),
            (24, 8 + 5 + 10, false),
            "{opcode:#x}"
        );
        assert_eq!(
            out,
            response(opcode, status, &[], &[], message),
            "{opcode:#x}"
        );
    }
}

#[test]
fn misshapen_requests_are_refused_and_skipped() {
    let cases = [
        request(opcode::GET, &[0; 4], b"q", &[], 0),
        request(opcode::GET, &[], b"", &[], 0),
        request(opcode::GET, &[], b"q", b"v", 0),
        request(opcode::GET, &[], &[b'k'; 251], &[], 0),
        request(opcode::SET, &[0; 4], b"q", b"v", 0),
        request(opcode::SET, &[0; 8], b"", b"v", 0),
        request(opcode::DELETE, &[], b"q", b"v", 0),
        request(opcode::NOOP, &[], b"q", &[], 0),
        request(opcode::VERSION, &[], &[], b"v", 0),
        request(opcode::QUIT, &[0; 4], &[], &[], 0),
        request(opcode::FLUSH, &[0; 8], &[], &[], 0),
        request(opcode::FLUSH, &[0; 4], &[], b"v", 0),
        request(opcode::STAT, &[0; 4], &[], &[], 0),
    ];
    for input in cases {
        let (consumed, skip, close, out) = refused(&input[..HEADER_LEN]);
        assert_eq!(
            (consumed, skip, close),
            (24, input.len() - 24, false),
            "{input:?}"
        );
        assert_eq!(out, response(input[1], 4, &[], &[], b"Invalid arguments"));
    }
}

#[test]
fn a_lost_stream_closes_the_connection() {
    // A bad magic byte: nothing says where the next request starts.
    for first in [0x81, 0x00, b'g'] {
        let mut input = get(opcode::GET, b"q");
        input[0] = first;
        let (consumed, skip, close, out) = refused(&input);
        assert_eq!((consumed, skip, close), (1, 0, true));
        let mut expected = response(0, 4, &[], &[], b"Invalid arguments");
        expected[12..16].copy_from_slice(&[0; 4]);
        assert_eq!(out, expected, "opcode and opaque unknown: zero");
    }
    // Key and extras longer than the body.
    let mut input = get(opcode::GET, b"q");
    input[11] = 0;
    let (consumed, skip, close, out) = refused(&input);
    assert_eq!((consumed, skip, close), (24, 0, true));
    assert_eq!(out, response(0x00, 4, &[], &[], b"Invalid arguments"));
    // A body no client sends: never buffered, never skipped.
    for body_len in [MAX_SKIP as u32 + 1, u32::MAX] {
        let mut input = request(opcode::SET, &[0; 8], b"q", &[], 0);
        input[8..12].copy_from_slice(&body_len.to_be_bytes());
        let (consumed, skip, close, _) = refused(&input);
        assert_eq!((consumed, skip, close), (24, 0, true));
    }
    let mut input = request(0x55, &[], &[], &[], 0);
    input[8..12].copy_from_slice(&(MAX_SKIP as u32).to_be_bytes());
    let (consumed, skip, close, _) = refused(&input);
    assert_eq!((consumed, skip, close), (24, MAX_SKIP, false));
}

#[test]
fn split_requests_wait_for_every_byte() {
    for input in [
        set(opcode::SET, b"q", 1, 2, b"hello"),
        get(opcode::GETK, b"q/open"),
        request(opcode::STAT, &[], b"queue", &[], 0),
    ] {
        for cut in 0..input.len() {
            assert_eq!(parse(&input[..cut], &LIMITS), Parsed::NeedMore, "cut {cut}");
        }
        parsed(&input);
    }
}

#[test]
fn every_error_has_a_status() {
    let cases = [
        (ErrorKind::UnknownCommand, 0x81, "Unknown command"),
        (
            ErrorKind::BadFormat("bad option combination"),
            4,
            "bad option combination",
        ),
        (ErrorKind::BadQueueName, 4, "bad command line format"),
        (ErrorKind::MessageTooLarge, 3, "Too large."),
        (ErrorKind::QueueFull, 0x82, "queue full"),
        (ErrorKind::DiskFull, 0x82, "out of disk space"),
        (ErrorKind::Storage, 0x82, "storage failure"),
        (ErrorKind::ShuttingDown, 0x82, "shutting down"),
        (ErrorKind::FanoutLimit, 0x82, "too many fan-out queues"),
        (
            ErrorKind::OpenReadPending,
            4,
            "an open message is held on this queue",
        ),
        (ErrorKind::TooManyOpenReads, 4, "too many open messages"),
        (ErrorKind::NotStored, 5, "Not stored."),
        (ErrorKind::Exists, 2, "Data exists for key."),
        (ErrorKind::AuthUnsupported, 0x20, "Auth failure."),
    ];
    for (kind, status, message) in cases {
        assert_eq!(
            error_status(kind),
            (status, message.to_string()),
            "{kind:?}"
        );
    }
}
