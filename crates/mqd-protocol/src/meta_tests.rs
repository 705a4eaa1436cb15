//! Byte-level rules of the meta commands: every request form, every reply code with its returned
//! flags, quiet mode, base64 keys, and the refusals.

use super::*;
use crate::{memcache, Values};

const LIMITS: Limits = Limits {
    max_message_size: 64,
};

fn parsed(input: &[u8]) -> (Command, MetaStyle) {
    match memcache::parse(input, &LIMITS) {
        Parsed::Command {
            consumed,
            command,
            style: ReplyStyle::Meta(style),
        } => {
            assert_eq!(consumed, input.len(), "{input:?}");
            (command, style)
        }
        other => panic!("expected a meta command from {input:?}, got {other:?}"),
    }
}

/// `(consumed, skip, close, reply)` of a refused request, its reply spelled out.
fn refused(input: &[u8]) -> (usize, usize, bool, String) {
    match memcache::parse(input, &LIMITS) {
        Parsed::Invalid {
            consumed,
            skip,
            reply,
            close,
            style,
        } => {
            let mut out = Vec::new();
            crate::encode(&reply, &style, &mut out);
            (consumed, skip, close, String::from_utf8(out).unwrap())
        }
        other => panic!("expected a refusal from {input:?}, got {other:?}"),
    }
}

fn reply(input: &[u8]) -> String {
    refused(input).3
}

fn spelled(reply: &Reply, style: &MetaStyle) -> String {
    let mut out = Vec::new();
    encode(reply, style, &mut out);
    String::from_utf8(out).unwrap()
}

fn hit(key: &[u8], flags: u32, body: &[u8], cas: Option<u64>) -> Reply {
    Reply::Values(smallvec::smallvec![Value {
        key: Key::from_slice(key),
        flags,
        body: body.to_vec(),
        cas,
    }])
}

fn miss() -> Reply {
    Reply::Values(Values::new())
}

fn read(command: &Command) -> &Read {
    match command {
        Command::Get(reads) if reads.len() == 1 => &reads[0],
        other => panic!("expected a one-key get, got {other:?}"),
    }
}

#[test]
fn mg_with_v_takes_a_message() {
    let (command, style) = parsed(b"mg q v\r\n");
    assert_eq!(command, Command::Get(smallvec::smallvec![Read::take(b"q")]));
    assert_eq!(
        spelled(&hit(b"q", 7, b"hello", None), &style),
        "VA 5\r\nhello\r\n"
    );
    assert_eq!(spelled(&miss(), &style), "EN\r\n");
    let (_, style) = parsed(b"mg q v q\r\n");
    assert_eq!(spelled(&hit(b"q", 0, b"x", None), &style), "VA 1\r\nx\r\n");
    assert_eq!(spelled(&miss(), &style), "", "q hides EN");
}

#[test]
fn mg_without_v_peeks() {
    let (command, style) = parsed(b"mg q\r\n");
    let mut peek = Read::take(b"q");
    peek.peek = true;
    assert_eq!(command, Command::Get(smallvec::smallvec![peek]));
    assert_eq!(spelled(&hit(b"q", 0, b"x", None), &style), "HD\r\n");
    assert_eq!(spelled(&miss(), &style), "EN\r\n");
    let (command, style) = parsed(b"mg q s f k\r\n");
    assert!(read(&command).peek);
    assert_eq!(
        spelled(&hit(b"q", 3, b"abc", None), &style),
        "HD s3 f3 kq\r\n"
    );
    // A key that only closes or aborts is run as is: it returns no message.
    let (command, _) = parsed(b"mg q/close\r\n");
    assert!(read(&command).close && !read(&command).peek);
    let (command, _) = parsed(b"mg q/t=100\r\n");
    assert!(read(&command).peek && read(&command).wait_ms == Some(100));
    assert_eq!(
        reply(b"mg q/open\r\n"),
        "CLIENT_ERROR bad option combination\r\n"
    );
}

#[test]
fn mg_returns_flags_in_request_order() {
    let (command, style) = parsed(b"mg q s v t c f k O123 l h\r\n");
    assert!(read(&command).cas, "c asks for the sequence number");
    assert_eq!(
        spelled(&hit(b"q", 7, b"hello", Some(9)), &style),
        "VA 5 s5 t-1 c9 f7 kq O123 l0 h0\r\nhello\r\n"
    );
    assert_eq!(spelled(&miss(), &style), "EN kq O123\r\n");
    let (_, style) = parsed(b"mg q O1 k q\r\n");
    assert_eq!(spelled(&miss(), &style), "");
    assert_eq!(spelled(&hit(b"q", 0, b"", None), &style), "HD O1 kq\r\n");
}

#[test]
fn mg_keys_carry_the_read_options() {
    let (command, _) = parsed(b"mg q/t=500/open v\r\n");
    let read = read(&command);
    assert_eq!(read.queue(), b"q");
    assert_eq!(read.wait_ms, Some(500));
    assert!(read.open);
    assert_eq!(
        reply(b"mg q/peek/open v\r\n"),
        "CLIENT_ERROR bad option combination\r\n"
    );
    assert_eq!(
        reply(b"mg /open v\r\n"),
        "CLIENT_ERROR bad command line format\r\n"
    );
    // The key from the line is echoed with its options, as `VALUE` does.
    let (_, style) = parsed(b"mg q/t=5 v k\r\n");
    assert_eq!(
        spelled(&hit(b"q/t=5", 0, b"x", None), &style),
        "VA 1 kq/t=5\r\nx\r\n"
    );
}

#[test]
fn base64_keys_may_hold_any_byte() {
    let (command, style) = parsed(b"mg YSBiAA== b v k\r\n");
    assert_eq!(read(&command).queue(), b"a b\x00");
    assert_eq!(
        spelled(&hit(b"a b\x00", 0, b"x", None), &style),
        "VA 1 kYSBiAA== b\r\nx\r\n"
    );
    let (command, style) = parsed(b"mg cXVldWU= b k v\r\n");
    assert_eq!(read(&command).queue(), b"queue");
    assert_eq!(spelled(&miss(), &style), "EN kcXVldWU= b\r\n");
    let (command, _) = parsed(b"mg cS90PTUwMA== b v\r\n");
    assert_eq!(read(&command).queue(), b"q");
    assert_eq!(read(&command).wait_ms, Some(500), "q/t=500, decoded");
    let (command, _) = parsed(b"ms YSBi 1 b\r\nx\r\n");
    assert!(matches!(command, Command::Set(Set { ref queue, .. }) if &queue[..] == b"a b"));
    let (command, _) = parsed(b"md AAE= b\r\n");
    assert!(matches!(command, Command::Delete { ref queue, .. } if queue == &[0, 1]));
    for bad in [
        &b"mg cXVldWU b v\r\n"[..],
        b"mg c*Vl b v\r\n",
        b"mg ==== b\r\n",
    ] {
        assert_eq!(reply(bad), "CLIENT_ERROR error decoding key\r\n", "{bad:?}");
    }
    // Without b, a key is a plain text queue name.
    assert_eq!(
        reply(b"mg a\x01b v\r\n"),
        "CLIENT_ERROR bad command line format\r\n"
    );
}

#[test]
fn mg_flags_without_meaning_on_a_queue() {
    // Accepted and ignored: T (touch), u (no LRU bump), E, C, P, L.
    let (command, _) = parsed(b"mg q v T30 u E5 C7 Pp Ll\r\n");
    assert_eq!(command, Command::Get(smallvec::smallvec![Read::take(b"q")]));
    // Leases cannot be honoured: refused.
    for line in [&b"mg q v N30\r\n"[..], b"mg q v R30\r\n"] {
        assert_eq!(
            reply(line),
            "CLIENT_ERROR flag not supported on a queue\r\n"
        );
    }
}

#[test]
fn flag_errors() {
    let cases: [(&[u8], &str); 10] = [
        (b"mg q v v\r\n", "CLIENT_ERROR duplicate flag"),
        (b"mg q v z\r\n", "CLIENT_ERROR invalid flag"),
        (b"mg q v \xff\r\n", "CLIENT_ERROR duplicate flag"),
        (
            b"mg q v O123456789012345678901234567890123\r\n",
            "CLIENT_ERROR opaque token too long",
        ),
        (
            b"mg q v Tx\r\n",
            "CLIENT_ERROR bad token in command line format",
        ),
        (
            b"mg q v T2147483648\r\n",
            "CLIENT_ERROR bad token in command line format",
        ),
        (b"mg q v Fx\r\n", "CLIENT_ERROR bad command line format"),
        (b"mg\r\n", "CLIENT_ERROR bad command line format"),
        (
            b"mg q a b c d e f g h i j k l m n o p q r s\r\n",
            "CLIENT_ERROR options flags are too long",
        ),
        (
            b"ma q\r\n",
            "CLIENT_ERROR cannot increment or decrement non-numeric value",
        ),
    ];
    for (line, error) in cases {
        let (consumed, skip, close, out) = refused(line);
        assert_eq!((consumed, skip, close), (line.len(), 0, false), "{line:?}");
        assert_eq!(out, format!("{error}\r\n"), "{line:?}");
    }
    let long_key = [&b"mg "[..], &[b'k'; 251], b" v\r\n"].concat();
    assert_eq!(reply(&long_key), "CLIENT_ERROR bad command line format\r\n");
    let opaque = [&b"mg q O"[..], &[b'o'; 31], b"\r\n"].concat();
    assert!(
        parsed(&opaque).0
            == Command::Get(smallvec::smallvec![{
                let mut peek = Read::take(b"q");
                peek.peek = true;
                peek
            }])
    );
}

#[test]
fn ms_enqueues() {
    let (command, style) = parsed(b"ms q 5\r\nhello\r\n");
    assert_eq!(
        command,
        Command::Set(Set {
            queue: Key::from_slice(b"q"),
            flags: 0,
            exptime: 0,
            body: b"hello".to_vec(),
            noreply: false,
        })
    );
    assert_eq!(spelled(&Reply::Stored, &style), "HD\r\n");
    // meta-memcache's set: T then F.
    let (command, style) = parsed(b"ms q 2 T60 F7 q\r\nhi\r\n");
    assert!(matches!(
        command,
        Command::Set(Set {
            flags: 7,
            exptime: 60,
            noreply: true,
            ..
        })
    ));
    assert_eq!(spelled(&Reply::Stored, &style), "");
    assert_eq!(
        spelled(&Reply::Error(ErrorKind::QueueFull), &style),
        "SERVER_ERROR queue full\r\n",
        "errors are never quiet"
    );
    let (_, style) = parsed(b"ms q 5 k O1 c s\r\nhello\r\n");
    assert_eq!(spelled(&Reply::Stored, &style), "HD kq O1 c0 s5\r\n");
    for mode in [&b"MS"[..], b"MR"] {
        let line = [&b"ms q 1 "[..], mode, b"\r\nx\r\n"].concat();
        assert!(matches!(parsed(&line).0, Command::Set(_)));
    }
}

#[test]
fn ms_refusals_discard_the_data_block() {
    let cases: [(&[u8], &str); 7] = [
        (b"ms q 5 ME O1\r\n", "NS O1\r\n"),
        (b"ms q 5 MA k\r\n", "NS kq\r\n"),
        (b"ms q 5 MP\r\n", "NS\r\n"),
        (b"ms q 5 C12 q\r\n", "EX\r\n"),
        (
            b"ms q 5 MX\r\n",
            "CLIENT_ERROR invalid mode for ms M token\r\n",
        ),
        (b"ms q 5 v v\r\n", "CLIENT_ERROR duplicate flag\r\n"),
        (
            b"ms a\x01 5\r\n",
            "CLIENT_ERROR bad command line format\r\n",
        ),
    ];
    for (line, expected) in cases {
        assert_eq!(
            refused(line),
            (line.len(), 7, false, expected.into()),
            "{line:?}"
        );
    }
    let (consumed, skip, close, out) = refused(b"ms q 65\r\n");
    assert_eq!((consumed, skip, close), (9, 67, false));
    assert_eq!(out, "SERVER_ERROR object too large for cache\r\n");
    assert_eq!(
        refused(b"ms q 2\r\nhiXX"),
        (12, 0, false, "CLIENT_ERROR bad data chunk\r\n".into())
    );
    // No length to read: only the line goes.
    for line in [&b"ms q\r\n"[..], b"ms q x\r\n", b"ms q -1\r\n"] {
        assert_eq!(
            refused(line),
            (
                line.len(),
                0,
                false,
                "CLIENT_ERROR bad command line format\r\n".into()
            )
        );
    }
    // A length no client sends: the connection closes.
    let (_, _, close, _) = refused(b"ms q 1073741825\r\n");
    assert!(close);
}

#[test]
fn ms_waits_for_its_data_block() {
    let input = b"ms q 5 F1\r\nhello\r\n";
    for cut in 0..input.len() {
        assert_eq!(memcache::parse(&input[..cut], &LIMITS), Parsed::NeedMore);
    }
}

#[test]
fn md_deletes_or_flushes_a_queue() {
    let (command, style) = parsed(b"md q\r\n");
    assert_eq!(
        command,
        Command::Delete {
            queue: b"q".to_vec(),
            noreply: false
        }
    );
    assert_eq!(spelled(&Reply::Deleted, &style), "HD\r\n");
    assert_eq!(spelled(&Reply::NotFound, &style), "NF\r\n");
    let (_, style) = parsed(b"md q q O9 k\r\n");
    assert_eq!(spelled(&Reply::Deleted, &style), "");
    assert_eq!(
        spelled(&Reply::NotFound, &style),
        "NF O9 kq\r\n",
        "q hides HD only, as memcached"
    );
    let (command, style) = parsed(b"md q x\r\n");
    assert_eq!(
        command,
        Command::Flush {
            queue: b"q".to_vec(),
            noreply: false
        }
    );
    assert_eq!(spelled(&Reply::End, &style), "HD\r\n");
    assert_eq!(reply(b"md q C5 O2\r\n"), "EX O2\r\n");
    assert_eq!(
        reply(b"md q I T30\r\n"),
        "CLIENT_ERROR flag not supported on a queue\r\n"
    );
}

#[test]
fn mn_and_me() {
    let (command, style) = parsed(b"mn\r\n");
    assert_eq!(command, Command::Noop);
    assert_eq!(spelled(&Reply::Noop, &style), "MN\r\n");
    let (command, style) = parsed(b"me q\r\n");
    let read = read(&command);
    assert!(read.peek && read.cas && read.wait_ms.is_none());
    assert_eq!(
        spelled(&hit(b"q", 0, b"hello", Some(3)), &style),
        "ME q exp=-1 la=0 cas=3 fetch=no cls=1 size=5\r\n"
    );
    assert_eq!(spelled(&miss(), &style), "EN\r\n");
    let (_, style) = parsed(b"me AAE= b\r\n");
    assert_eq!(
        spelled(&hit(&[0, 1], 0, b"", Some(1)), &style),
        "ME AAE= exp=-1 la=0 cas=1 fetch=no cls=1 size=0\r\n"
    );
}

#[test]
fn meta_memcache_requests_work() {
    // What meta-memcache 4.x sends for get, set and a no-reply delete.
    let (_, style) = parsed(b"mg jobs f v t l h\r\n");
    assert_eq!(
        spelled(&hit(b"jobs", 2, b"{}", None), &style),
        "VA 2 f2 t-1 l0 h0\r\n{}\r\n"
    );
    let (command, style) = parsed(b"ms jobs 2 T0 F2\r\n{}\r\n");
    assert!(matches!(command, Command::Set(Set { flags: 2, .. })));
    assert_eq!(spelled(&Reply::Stored, &style), "HD\r\n");
    let input = b"md jobs q\r\nmn\r\n";
    let Parsed::Command { consumed, .. } = memcache::parse(input, &LIMITS) else {
        panic!("md parses");
    };
    assert_eq!(parsed(&input[consumed..]).0, Command::Noop);
}
