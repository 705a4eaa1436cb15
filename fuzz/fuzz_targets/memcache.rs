//! The memcache codec on arbitrary bytes: no panic; a request uses at least one byte and no more
//! than it was given; a request still incomplete fits in a connection's input buffer; and every
//! reply it can produce encodes.
#![no_main]

mod walk;

use libfuzzer_sys::fuzz_target;
use mqd_protocol::{memcache, Limits, Reply};

const LIMITS: Limits = Limits {
    max_message_size: 64,
};

fuzz_target!(|data: &[u8]| {
    walk::walk(
        data,
        &LIMITS,
        1,
        memcache::parse,
        |command, _| {
            if let mqd_protocol::Command::Get(reads) = command {
                let mut out = Vec::new();
                memcache::encode(&Reply::Values(walk::echoed(reads)), &mut out);
                assert!(out.ends_with(b"END\r\n"));
            }
        },
        |reply, _| {
            let mut out = Vec::new();
            memcache::encode(reply, &mut out);
            assert!(out.ends_with(b"\r\n"));
        },
    );
    let _ = memcache::printable_name(data);
});
