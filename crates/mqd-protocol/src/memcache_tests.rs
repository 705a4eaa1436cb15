//! Byte-level rules of the memcache codec.

use super::*;
use crate::{Key, Value};

const LIMITS: Limits = Limits {
    max_message_size: 1024,
};

fn command(input: &[u8]) -> (usize, Command) {
    match parse(input, &LIMITS) {
        Parsed::Command {
            consumed,
            command,
            style: ReplyStyle::Text,
        } => (consumed, command),
        other => panic!("expected a command from {input:?}, got {other:?}"),
    }
}

fn error(input: &[u8]) -> (usize, usize, ErrorKind, bool) {
    match parse(input, &LIMITS) {
        Parsed::Invalid {
            consumed,
            skip,
            reply: Reply::Error(kind),
            close,
            style: ReplyStyle::Text,
        } => (consumed, skip, kind, close),
        other => panic!("expected an error from {input:?}, got {other:?}"),
    }
}

fn encoded(reply: &Reply) -> String {
    let mut out = Vec::new();
    encode(reply, &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn set_with_data_block() {
    let input = b"set q4 7 0 5\r\nhello\r\nget q4\r\n";
    let (consumed, cmd) = command(input);
    assert_eq!(consumed, 21);
    assert_eq!(
        cmd,
        Command::Set(Set {
            queue: Key::from_slice(b"q4"),
            flags: 7,
            exptime: 0,
            body: b"hello".to_vec(),
            noreply: false,
        })
    );
}

#[test]
fn set_waits_for_the_whole_block() {
    for cut in 0..20 {
        assert_eq!(
            parse(&b"set q 0 0 5\r\nhello\r\n"[..cut], &LIMITS),
            Parsed::NeedMore
        );
    }
}

#[test]
fn set_accepts_bare_newlines_and_noreply() {
    let (_, cmd) = command(b"set q 0 0 2 noreply\nhi\r\n");
    assert!(matches!(cmd, Command::Set(Set { noreply: true, .. })));
}

#[test]
fn set_errors() {
    assert_eq!(error(b"set q 0 0 5\r\nhelloXX").2, ErrorKind::BadDataChunk);
    assert_eq!(error(b"set q 0 0 5\r\nhelloXX").0, 20);
    assert_eq!(error(b"set q 0 0\r\n").2, ErrorKind::UnknownCommand);
    assert_eq!(
        error(b"set q x 0 5\r\n").2,
        ErrorKind::BadFormat("bad command line format")
    );
    assert_eq!(
        error(b"set q 0 0 -1\r\n").2,
        ErrorKind::BadFormat("bad command line format")
    );
    assert_eq!(
        error(b"set q 4294967296 0 1\r\n").2,
        ErrorKind::BadFormat("bad command line format")
    );
    assert_eq!(
        error(b"set q 0 0 1 maybe\r\n").2,
        ErrorKind::BadFormat("bad command line format")
    );
    let long = format!("set {} 0 0 1\r\nx\r\n", "q".repeat(251));
    assert_eq!(error(long.as_bytes()).2, ErrorKind::BadQueueName);
}

#[test]
fn a_malformed_set_with_a_readable_length_has_its_body_discarded() {
    // The body must never be run as commands.
    assert_eq!(
        error(b"set q x 0 9\r\nflush_all\r\n"),
        (
            13,
            11,
            ErrorKind::BadFormat("bad command line format"),
            false
        )
    );
    let (_, skip, kind, close) = error(b"set q 0 0 9 noreply extra\r\n");
    assert_eq!((skip, kind, close), (11, ErrorKind::UnknownCommand, false));
    let (_, skip, kind, _) = error(b"set bad\x01name 0 0 3\r\n");
    assert_eq!((skip, kind), (5, ErrorKind::BadQueueName));
    // No length to read: nothing to discard.
    assert_eq!(error(b"set q 0 0\r\n").1, 0);
    assert_eq!(error(b"set q 0 0 x\r\n").1, 0);
    // A length no client would send: the stream cannot be trusted, close.
    assert!(error(b"set q x 0 99999999999\r\n").3);
}

#[test]
fn oversized_body_is_skipped_not_buffered() {
    let (consumed, skip, kind, close) = error(b"set q 0 0 5000\r\n");
    assert_eq!(
        (consumed, skip, kind, close),
        (16, 5002, ErrorKind::MessageTooLarge, false)
    );
    let (_, skip, _, close) = error(b"set q 0 0 18446744073709551615\r\n");
    assert_eq!((skip, close), (0, true));
}

#[test]
fn get_keys_and_options() {
    let (_, cmd) = command(b"get a b/t=50/open a\r\n");
    let Command::Get(reads) = cmd else { panic!() };
    assert_eq!(reads.len(), 3);
    assert_eq!(reads[0].queue(), b"a");
    assert_eq!(reads[1].queue(), b"b");
    assert_eq!(&reads[1].key[..], b"b/t=50/open");
    assert_eq!(reads[1].wait_ms, Some(50));
    assert!(reads[1].open && !reads[1].close);
    let (_, cmd) = command(b"gets q/close/open\r\n");
    let Command::Get(reads) = cmd else { panic!() };
    assert!(reads[0].cas && reads[0].open && reads[0].close);
}

#[test]
fn get_option_errors() {
    for bad in [
        &b"get q/peek/open\r\n"[..],
        b"get q/abort/close\r\n",
        b"get q/peek/abort\r\n",
    ] {
        assert_eq!(error(bad).2, ErrorKind::BadFormat("bad option combination"));
    }
    assert_eq!(error(b"get /open\r\n").2, ErrorKind::BadQueueName);
    assert_eq!(error(b"get\r\n").2, ErrorKind::UnknownCommand);
}

#[test]
fn slashes_without_options_are_part_of_the_name() {
    for key in [&b"jobs/daily"[..], b"q/t=x", b"q/open/later", b"a/b/c"] {
        let mut line = b"get ".to_vec();
        line.extend_from_slice(key);
        line.extend_from_slice(b"\r\n");
        let Command::Get(reads) = command(&line).1 else {
            panic!()
        };
        assert_eq!(reads[0].queue(), key);
        assert_eq!(&reads[0].key[..], key);
        assert!(!reads[0].open && reads[0].wait_ms.is_none());
    }
}

#[test]
fn a_bad_key_anywhere_refuses_the_whole_get() {
    let line = format!("get good {}\r\n", "x".repeat(251));
    assert_eq!(error(line.as_bytes()).2, ErrorKind::BadQueueName);
}

#[test]
fn other_commands() {
    assert_eq!(
        command(b"delete q\r\n").1,
        Command::Delete {
            queue: b"q".to_vec(),
            noreply: false
        }
    );
    assert_eq!(
        command(b"delete q 0 noreply\r\n").1,
        Command::Delete {
            queue: b"q".to_vec(),
            noreply: true
        }
    );
    assert_eq!(
        command(b"flush q\r\n").1,
        Command::Flush {
            queue: b"q".to_vec(),
            noreply: false
        }
    );
    assert_eq!(
        command(b"flush_all\r\n").1,
        Command::FlushAll { noreply: false }
    );
    assert_eq!(
        command(b"flush_all 0 noreply\r\n").1,
        Command::FlushAll { noreply: true }
    );
    assert_eq!(command(b"stats\r\n").1, Command::Stats(StatsKind::General));
    assert_eq!(
        command(b"stats queue\r\n").1,
        Command::Stats(StatsKind::Queue)
    );
    assert_eq!(
        command(b"stats reset\r\n").1,
        Command::Stats(StatsKind::Reset)
    );
    assert_eq!(command(b"version\r\n").1, Command::Version);
    assert_eq!(
        command(b"verbosity 1\r\n").1,
        Command::Verbosity {
            level: 1,
            noreply: false
        }
    );
    assert_eq!(command(b"quit\r\n").1, Command::Quit);
    // Its words are the admin side's to read (protocol-spec/cluster.md 7).
    assert_eq!(command(b"cluster status\r\n").1, Command::Cluster);
    assert_eq!(command(b"cluster add 4 h:1\r\n").1, Command::Cluster);
    assert_eq!(command(b"cluster\r\n").1, Command::Cluster);
    for unknown in [
        &b"stats items\r\n"[..],
        b"flush_all now\r\n",
        b"incr q 1\r\n",
        b"\r\n",
        b"SET q 0 0 1\r\n",
    ] {
        let kind = error(unknown).2;
        assert!(
            matches!(kind, ErrorKind::UnknownCommand | ErrorKind::BadFormat(_)),
            "{unknown:?} gave {kind:?}"
        );
    }
}

#[test]
fn long_lines_close_the_connection() {
    let mut line = vec![b'x'; MAX_LINE + 1];
    assert_eq!(error(&line).2, ErrorKind::LineTooLong);
    assert!(error(&line).3);
    line.truncate(MAX_LINE);
    assert_eq!(parse(&line, &LIMITS), Parsed::NeedMore);
    // A get may name many keys.
    let mut get = b"get ".to_vec();
    get.extend(b"q ".repeat(2000));
    assert_eq!(parse(&get, &LIMITS), Parsed::NeedMore);
    get.extend_from_slice(b"\r\n");
    assert!(matches!(parse(&get, &LIMITS), Parsed::Command { .. }));
}

#[test]
fn encodes_replies() {
    assert_eq!(encoded(&Reply::Stored), "STORED\r\n");
    let value = Value {
        key: Key::from_slice(b"q4"),
        flags: 0,
        body: b"hello".to_vec(),
        cas: None,
    };
    assert_eq!(
        encoded(&Reply::Values(smallvec::smallvec![value.clone()])),
        "VALUE q4 0 5\r\nhello\r\nEND\r\n"
    );
    assert_eq!(
        encoded(&Reply::Values(smallvec::smallvec![Value {
            cas: Some(9),
            ..value
        }])),
        "VALUE q4 0 5 9\r\nhello\r\nEND\r\n"
    );
    assert_eq!(encoded(&Reply::Values(smallvec::smallvec![])), "END\r\n");
}

#[test]
fn encodes_the_widest_value_lines_and_several_values() {
    let widest = Value {
        key: Key::from_slice(b"q/t=1/open"),
        flags: u32::MAX,
        body: b"".to_vec(),
        cas: Some(u64::MAX),
    };
    let plain = Value {
        key: Key::from_slice(b"r"),
        flags: 10,
        body: vec![b'x'; 100],
        cas: None,
    };
    let mut out = b"before ".to_vec();
    encode(&Reply::Values(smallvec::smallvec![widest, plain]), &mut out);
    let expected = format!(
        "before VALUE q/t=1/open 4294967295 0 18446744073709551615\r\n\r\nVALUE r 10 100\r\n{}\r\nEND\r\n",
        "x".repeat(100)
    );
    assert_eq!(String::from_utf8(out).unwrap(), expected);
}

#[test]
fn encodes_other_replies() {
    assert_eq!(
        encoded(&Reply::Stats(vec![("q4".into(), "2/0".into())])),
        "STAT q4 2/0\r\nEND\r\n"
    );
    assert_eq!(
        encoded(&Reply::Error(ErrorKind::UnknownCommand)),
        "ERROR\r\n"
    );
    assert_eq!(
        encoded(&Reply::Error(ErrorKind::MessageTooLarge)),
        "SERVER_ERROR object too large for cache\r\n"
    );
}

#[test]
fn names_in_stats_cannot_break_lines() {
    assert_eq!(printable_name(b"q4"), "q4");
    assert_eq!(printable_name("队列".as_bytes()), "队列");
    assert_eq!(
        printable_name(b"a\r\nEND b\\\xff"),
        "a\\x0d\\x0aEND\\x20b\\x5c\\xff"
    );
}
