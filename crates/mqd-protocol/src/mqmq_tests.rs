//! Byte-level rules of the mqmq codec.

use super::*;
use crate::{Key, Value};

const LIMITS: Limits = Limits {
    max_message_size: 1024,
};

fn framed(values: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    frame(&mut out, values);
    out
}

fn command(values: &[&[u8]]) -> Command {
    let input = framed(values);
    match parse(&input, &LIMITS) {
        Parsed::Command {
            consumed,
            command,
            style: ReplyStyle::Mqmq,
        } => {
            assert_eq!(consumed, input.len());
            command
        }
        other => panic!("expected a command, got {other:?}"),
    }
}

fn error(input: &[u8]) -> (ErrorKind, bool) {
    match parse(input, &LIMITS) {
        Parsed::Invalid {
            reply: Reply::Error(kind),
            close,
            ..
        } => (kind, close),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn put_get_info_quit() {
    assert_eq!(
        command(&[b"Put", b"q", b"body"]),
        Command::Set(Set {
            queue: Key::from_slice(b"q"),
            flags: 0,
            exptime: 0,
            body: b"body".to_vec(),
            noreply: false
        })
    );
    let Command::Get(reads) = command(&[b"Get", b"q", b"250"]) else {
        panic!()
    };
    assert_eq!(reads[0].wait_ms, Some(250));
    let Command::Get(reads) = command(&[b"Get", b"q"]) else {
        panic!()
    };
    assert_eq!(reads[0].wait_ms, Some(1));
    assert_eq!(command(&[b"Info"]), Command::Info);
    assert_eq!(command(&[b"Quit", b"extra"]), Command::Quit);
    assert_eq!(
        command(&[b"Put", b"", b""]),
        Command::Set(Set {
            queue: Key::new(),
            flags: 0,
            exptime: 0,
            body: vec![],
            noreply: false
        })
    );
}

#[test]
fn timeouts_follow_go_atoi() {
    for (text, ms) in [
        (&b"0"[..], 1),
        (b"-5", 1),
        (b"+7", 7),
        (b"3600000", 3_600_000),
    ] {
        let Command::Get(reads) = command(&[b"Get", b"q", text]) else {
            panic!()
        };
        assert_eq!(reads[0].wait_ms, Some(ms), "{text:?}");
    }
    for bad in [
        &b"3600001"[..],
        b"1.5",
        b"",
        b" 1",
        b"ten",
        b"99999999999999999999",
    ] {
        assert_eq!(
            error(&framed(&[b"Get", b"q", bad])),
            (ErrorKind::BadTimeout, false)
        );
    }
}

#[test]
fn waits_for_whole_frames() {
    let input = framed(&[b"Put", b"q", b"body"]);
    for cut in 0..input.len() {
        assert_eq!(parse(&input[..cut], &LIMITS), Parsed::NeedMore);
    }
}

#[test]
fn errors() {
    assert_eq!(error(&[0, 0, 0, 0]), (ErrorKind::BadParams, false));
    assert_eq!(
        error(&framed(&[b"Put", b"q"])),
        (ErrorKind::BadParams, false)
    );
    assert_eq!(error(&framed(&[b"Get"])), (ErrorKind::BadParams, false));
    let long = vec![b'q'; 1025];
    assert_eq!(
        error(&framed(&[b"Get", &long])),
        (ErrorKind::BadQueueName, false)
    );
    assert_eq!(
        error(&framed(&[b"put", b"q", b"x"])),
        (ErrorKind::UnknownCommand, true)
    );
    assert_eq!(
        error(&framed(&[b"Put", b"q", &[0u8; 1025]])),
        (ErrorKind::MessageTooLarge, false)
    );
    // A value whose length runs past the frame.
    assert_eq!(
        error(&[0, 0, 0, 5, 0, 0, 0, 9, b'x']),
        (ErrorKind::BadFrame, true)
    );
}

#[test]
fn oversized_frames_are_refused_before_reading() {
    let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
    assert_eq!(
        parse(&huge, &LIMITS),
        Parsed::Invalid {
            consumed: 4,
            skip: 0,
            reply: Reply::Error(ErrorKind::FrameTooLarge),
            close: true,
            style: ReplyStyle::Mqmq,
        }
    );
    let big = 100_000u32.to_be_bytes();
    assert_eq!(
        parse(&big, &LIMITS),
        Parsed::Invalid {
            consumed: 4,
            skip: 100_000,
            reply: Reply::Error(ErrorKind::MessageTooLarge),
            close: false,
            style: ReplyStyle::Mqmq,
        }
    );
}

#[test]
fn encodes_replies() {
    let mut out = Vec::new();
    encode(&Reply::Stored, &mut out);
    assert_eq!(out, framed(&[b"OK"]));
    out.clear();
    let value = Value {
        key: Key::from_slice(b"q"),
        flags: 0,
        body: b"hi".to_vec(),
        cas: None,
    };
    encode(&Reply::Values(smallvec::smallvec![value]), &mut out);
    assert_eq!(out, framed(&[b"OK", b"hi"]));
    out.clear();
    encode(&Reply::Values(smallvec::smallvec![]), &mut out);
    assert_eq!(out, b"\0\0\0\x0b\0\0\0\x07Timeout");
    out.clear();
    encode(&Reply::Error(ErrorKind::BadTimeout), &mut out);
    assert_eq!(out, framed(&[b"Error", b"REQUEST_BAD_TIMEOUT"]));
}

#[test]
fn info_json_matches_go() {
    let info = Info {
        connections: 1,
        queues: vec![(b"q".to_vec(), 10)],
    };
    assert_eq!(
        String::from_utf8(info_json(&info)).unwrap(),
        r#"{"NumConnections":1,"NumQueues":1,"NumMessages":10,"Queues":{"q":{"NumMessages":10}}}"#
    );
    let empty = Info {
        connections: 0,
        queues: vec![],
    };
    assert_eq!(
        String::from_utf8(info_json(&empty)).unwrap(),
        r#"{"NumConnections":0,"NumQueues":0,"NumMessages":0,"Queues":{}}"#
    );
    assert_eq!(
        parse_info_json(std::str::from_utf8(&info_json(&info)).unwrap()),
        Some(info)
    );
}
