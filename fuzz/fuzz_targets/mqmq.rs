//! The mqmq codec on arbitrary bytes: no panic; a frame uses at least one byte and no more than it
//! was given; a frame still incomplete fits in a connection's input buffer; every reply encodes
//! into a frame that says its own length; and the `Info` JSON reader survives anything.
#![no_main]

mod walk;

use libfuzzer_sys::fuzz_target;
use mqd_protocol::{mqmq, Info, Limits, Reply};

const LIMITS: Limits = Limits {
    max_message_size: 64,
};

fn check_frame(out: &[u8]) {
    let len = u32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
    assert_eq!(len + 4, out.len());
}

fuzz_target!(|data: &[u8]| {
    walk::walk(
        data,
        &LIMITS,
        1,
        mqmq::parse,
        |command, _| {
            if let mqd_protocol::Command::Get(reads) = command {
                let mut out = Vec::new();
                mqmq::encode(&Reply::Values(walk::echoed(reads)), &mut out);
                check_frame(&out);
                let names = reads.iter().map(|r| (r.queue().to_vec(), 1)).collect();
                let mut out = Vec::new();
                mqmq::encode(
                    &Reply::Info(Info {
                        connections: 1,
                        queues: names,
                    }),
                    &mut out,
                );
                check_frame(&out);
            }
        },
        |reply, _| {
            let mut out = Vec::new();
            mqmq::encode(reply, &mut out);
            check_frame(&out);
        },
    );
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = mqmq::parse_info_json(text);
    }
});
