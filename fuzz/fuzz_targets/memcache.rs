//! The memcache codec on arbitrary bytes: no panic; a request uses at least one byte and no more
//! than it was given; a request still incomplete fits in a connection's input buffer; and every
//! reply it can produce encodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqd_protocol::{input_limit, memcache, Limits, Parsed, Reply, Value};

const LIMITS: Limits = Limits {
    max_message_size: 64,
};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while !rest.is_empty() {
        match memcache::parse(rest, &LIMITS) {
            Parsed::NeedMore => {
                assert!(rest.len() < input_limit(&LIMITS));
                break;
            }
            Parsed::Command {
                consumed, command, ..
            } => {
                assert!(consumed > 0 && consumed <= rest.len());
                if let mqd_protocol::Command::Get(reads) = &command {
                    // Echo what was read, as a reply would.
                    let values = reads
                        .iter()
                        .map(|r| Value {
                            key: r.key.clone(),
                            flags: 0,
                            body: r.queue().to_vec(),
                            cas: r.cas.then_some(1),
                        })
                        .collect();
                    let mut out = Vec::new();
                    memcache::encode(&Reply::Values(values), &mut out);
                    assert!(out.ends_with(b"END\r\n"));
                }
                rest = &rest[consumed..];
            }
            Parsed::Invalid {
                consumed,
                skip,
                reply,
                close,
                ..
            } => {
                assert!(consumed > 0 && consumed <= rest.len());
                let mut out = Vec::new();
                memcache::encode(&reply, &mut out);
                assert!(out.ends_with(b"\r\n"));
                if close {
                    break;
                }
                rest = &rest[consumed..];
                rest = &rest[skip.min(rest.len())..];
            }
        }
    }
    let _ = memcache::printable_name(data);
});
