//! The codecs (memcache with its meta commands, memcache binary, mqmq, the HTTP request head)
//! against hostile input: random bytes and random mutations of valid requests must only ever
//! produce a command, an error or a request for more bytes, never a panic, and never claim more
//! bytes than they were given; and every reply a parsed request can get must encode.

use super::{binary, encode, http, memcache, mqmq, Limits, Parsed, Reply, ReplyStyle};

const LIMITS: Limits = Limits {
    max_message_size: 4096,
};

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    for values in [
        &[&b"Put"[..], b"q", b"body"][..],
        &[b"Get", b"q", b"100"],
        &[b"Get", b"q"],
        &[b"Info"],
        &[b"Quit"],
    ] {
        let mut frame = Vec::new();
        mqmq::frame(&mut frame, values);
        frames.push(frame);
    }
    for (opcode, extras, key, value) in [
        (0x00u8, &[][..], &b"q/t=10"[..], &[][..]),
        (0x0d, &[], b"q", &[]),
        (0x01, &[0, 0, 0, 1, 0, 0, 0, 0][..], b"q", b"body"),
        (0x11, &[0; 8], b"q", b""),
        (0x04, &[], b"q", &[]),
        (0x08, &[0, 0, 0, 5], &[], &[]),
        (0x10, &[], b"queue", &[]),
        (0x0a, &[], &[], &[]),
        (0x21, &[], b"PLAIN", b"\0u\0p"),
    ] {
        let mut request = vec![
            0x80,
            opcode,
            0,
            key.len() as u8,
            extras.len() as u8,
            0,
            0,
            0,
        ];
        let body = extras.len() + key.len() + value.len();
        request.extend_from_slice(&(body as u32).to_be_bytes());
        request.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0]);
        request.extend_from_slice(extras);
        request.extend_from_slice(key);
        request.extend_from_slice(value);
        frames.push(request);
    }
    let text: [&[u8]; 19] = [
        b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"POST / HTTP/1.0\r\nContent-Length: 12\r\n\r\n",
        b"set q 0 0 5\r\nhello\r\n",
        b"set q 4294967295 -1 0 noreply\r\n\r\n",
        b"get a b/t=10/open c/close/open\r\n",
        b"gets q/peek\r\n",
        b"delete q 0 noreply\r\n",
        b"flush_all 10 noreply\r\n",
        b"stats queue\r\n",
        b"verbosity 3\r\n",
        b"get q/abort\r\n",
        b"mg q v k f s t c O1 q\r\n",
        b"mg cS90PTUwMA== b v k\r\n",
        b"ms q 5 F3 T60 k c s\r\nhello\r\n",
        b"ms q 5 ME q\r\nhello\r\n",
        b"md q x q O2 k\r\n",
        b"mn\r\n",
        b"me q b\r\n",
        b"ma q D5\r\n",
    ];
    frames.extend(text.iter().map(|t| t.to_vec()));
    frames
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 if !input.is_empty() => {
                let at = rng.below(input.len());
                input[at] = rng.next() as u8;
            }
            1 if !input.is_empty() => {
                let at = rng.below(input.len());
                input.truncate(at);
            }
            2 => {
                let at = rng.below(input.len() + 1);
                let interesting = [0u8, 0xff, b' ', b'\r', b'\n', b'/', b'9', 0x7f];
                input.insert(at, interesting[rng.below(interesting.len())]);
            }
            3 if input.len() >= 4 => {
                // Lengths are where codecs get hurt.
                let at = rng.below(input.len() - 3);
                input[at..at + 4].copy_from_slice(&(rng.next() as u32).to_be_bytes());
            }
            _ => input.extend((0..rng.below(8)).map(|_| rng.next() as u8)),
        }
    }
}

/// Every reply a command could get, spelled in `style`.
fn replies_encode(style: &ReplyStyle) {
    let value = crate::Value {
        key: crate::Key::from_slice(b"q"),
        flags: 1,
        body: b"v".to_vec(),
        cas: Some(2),
    };
    let mut out = Vec::new();
    for reply in [
        Reply::Stored,
        Reply::Values(smallvec::smallvec![value]),
        Reply::Values(smallvec::smallvec![]),
        Reply::Deleted,
        Reply::NotFound,
        Reply::End,
        Reply::Ok,
        Reply::Noop,
        Reply::Closing,
        Reply::Stats(vec![("a".into(), "b".into())]),
        Reply::Error(crate::ErrorKind::QueueFull),
    ] {
        encode(&reply, style, &mut out);
    }
}

fn check(input: &[u8]) {
    for parse in [memcache::parse, binary::parse, mqmq::parse] {
        match parse(input, &LIMITS) {
            Parsed::NeedMore => {}
            Parsed::Command {
                consumed, style, ..
            } => {
                assert!(consumed > 0 && consumed <= input.len());
                replies_encode(&style);
            }
            Parsed::Invalid {
                consumed,
                reply,
                style,
                ..
            } => {
                assert!(consumed > 0 && consumed <= input.len());
                encode(&reply, &style, &mut Vec::new());
            }
        }
    }
    if let http::ParsedHead::Request { consumed, .. } = http::parse(input) {
        assert!(consumed > 0 && consumed <= input.len());
    }
}

#[test]
fn hostile_input_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let seeds = seeds();
    for round in 0..200_000 {
        let mut input = if round % 4 == 0 {
            (0..rng.below(64)).map(|_| rng.next() as u8).collect()
        } else {
            seeds[rng.below(seeds.len())].clone()
        };
        mutate(&mut rng, &mut input);
        check(&input);
    }
}
