//! The mqmq frame codec.
//!
//! A frame is a big-endian `u32` length of the rest, then values, each a big-endian `u32` length
//! and that many bytes. The first value is the command. Every rule here is in
//! `protocol-spec/mqmq.md`.

use super::command::{Command, ErrorKind, Info, Key, Read, Reply, Set};
use super::json;
use super::{Limits, Parsed, ReplyStyle};

/// Longest queue name, as in the original.
pub const MAX_QUEUE_NAME: usize = 1024;
/// The original's absolute frame limit. A longer frame is refused and the connection closed
/// without reading it.
pub const MAX_FRAME: usize = 33_555_471;
/// Longest Get timeout in milliseconds: one hour.
pub const MAX_TIMEOUT_MS: i64 = 3_600_000;
/// Room in a frame beyond the body: the command, the queue name and the length fields.
const FRAME_OVERHEAD: usize = MAX_QUEUE_NAME + 64;

/// Parses the frame at the front of `buf`.
/// How many bytes the frame at the front of `buf` takes in all, once its length has arrived.
pub fn request_len(buf: &[u8]) -> Option<usize> {
    read_u32(buf).map(|len| 4 + len as usize)
}

pub fn parse(buf: &[u8], limits: &Limits) -> Parsed {
    let Some(len) = read_u32(buf) else {
        return Parsed::NeedMore;
    };
    let len = len as usize;
    if len > MAX_FRAME {
        return Parsed::Invalid {
            consumed: 4,
            skip: 0,
            reply: Reply::Error(ErrorKind::FrameTooLarge),
            close: true,
            style: ReplyStyle::Mqmq,
        };
    }
    if len > limits.max_message_size + FRAME_OVERHEAD {
        // Larger than any request we accept, but within what the protocol allows: discard it
        // as it streams in, without buffering it, and go on with the next frame.
        return Parsed::Invalid {
            consumed: 4,
            skip: len,
            reply: Reply::Error(ErrorKind::MessageTooLarge),
            close: false,
            style: ReplyStyle::Mqmq,
        };
    }
    if buf.len() < 4 + len {
        return Parsed::NeedMore;
    }
    let consumed = 4 + len;
    let Some(values) = split_values(&buf[4..consumed]) else {
        return Parsed::Invalid {
            consumed,
            skip: 0,
            reply: Reply::Error(ErrorKind::BadFrame),
            close: true,
            style: ReplyStyle::Mqmq,
        };
    };
    match decode(&values, limits) {
        Ok(command) => Parsed::Command {
            consumed,
            command,
            style: ReplyStyle::Mqmq,
        },
        Err(kind) => Parsed::Invalid {
            consumed,
            skip: 0,
            reply: Reply::Error(kind),
            close: kind == ErrorKind::UnknownCommand,
            style: ReplyStyle::Mqmq,
        },
    }
}

fn read_u32(buf: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(buf.get(..4)?.try_into().ok()?))
}

/// Splits a frame body into its values; `None` if a length runs past the end.
fn split_values(mut body: &[u8]) -> Option<Vec<&[u8]>> {
    let mut values = Vec::with_capacity(3);
    while !body.is_empty() {
        let len = read_u32(body)? as usize;
        let value = body.get(4..4 + len)?;
        values.push(value);
        body = &body[4 + len..];
    }
    Some(values)
}

fn decode(values: &[&[u8]], limits: &Limits) -> Result<Command, ErrorKind> {
    let Some(&command) = values.first() else {
        return Err(ErrorKind::BadParams);
    };
    match command {
        b"Put" => {
            let [_, queue, body, ..] = values else {
                return Err(ErrorKind::BadParams);
            };
            check_queue_name(queue)?;
            if body.len() > limits.max_message_size {
                return Err(ErrorKind::MessageTooLarge);
            }
            Ok(Command::Set(Set {
                queue: Key::from_slice(queue),
                flags: 0,
                exptime: 0,
                body: body.to_vec(),
                noreply: false,
            }))
        }
        b"Get" => {
            let [_, queue, rest @ ..] = values else {
                return Err(ErrorKind::BadParams);
            };
            check_queue_name(queue)?;
            let wait_ms = match rest.first() {
                Some(timeout) => parse_timeout(timeout)?,
                None => 1,
            };
            let mut read = Read::take(queue);
            read.wait_ms = Some(wait_ms);
            Ok(Command::Get(smallvec::smallvec![read]))
        }
        b"Info" => Ok(Command::Info),
        b"Quit" => Ok(Command::Quit),
        _ => Err(ErrorKind::UnknownCommand),
    }
}

fn check_queue_name(queue: &[u8]) -> Result<(), ErrorKind> {
    if queue.len() > MAX_QUEUE_NAME {
        return Err(ErrorKind::BadQueueName);
    }
    Ok(())
}

/// Decimal milliseconds with an optional sign, as Go's `strconv.Atoi` reads them; values below 1
/// mean 1 ms.
fn parse_timeout(text: &[u8]) -> Result<u64, ErrorKind> {
    let ms: i64 = std::str::from_utf8(text)
        .ok()
        .filter(|s| !s.starts_with("+-") && !s.starts_with("-+"))
        .and_then(|s| s.parse().ok())
        .ok_or(ErrorKind::BadTimeout)?;
    if ms > MAX_TIMEOUT_MS {
        return Err(ErrorKind::BadTimeout);
    }
    Ok(ms.max(1) as u64)
}

/// Appends the frame for `reply`.
pub fn encode(reply: &Reply, out: &mut Vec<u8>) {
    match reply {
        Reply::Values(values) => match values.first() {
            Some(value) => frame(out, &[b"OK", &value.body]),
            None => frame(out, &[b"Timeout"]),
        },
        Reply::Info(info) => frame(out, &[b"OK", &info_json(info)]),
        Reply::Error(kind) => frame(out, &[b"Error", error_code(*kind).as_bytes()]),
        Reply::Stored
        | Reply::Deleted
        | Reply::NotFound
        | Reply::End
        | Reply::Ok
        | Reply::Reset
        | Reply::Version(_)
        | Reply::Stats(_)
        | Reply::Noop => frame(out, &[b"OK"]),
        // `Quit` closes without a reply.
        Reply::Closing => {}
    }
}

/// The mqmq error code for each error.
pub fn error_code(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::UnknownCommand => "REQUEST_UNKNOWN_COMMAND",
        ErrorKind::BadParams | ErrorKind::BadFormat(_) | ErrorKind::BadDataChunk => {
            "REQUEST_BAD_PARAMS"
        }
        ErrorKind::LineTooLong | ErrorKind::BadFrame => "REQUEST_BAD_FRAME",
        ErrorKind::BadQueueName => "REQUEST_BAD_QUEUE_NAME",
        ErrorKind::BadTimeout => "REQUEST_BAD_TIMEOUT",
        ErrorKind::MessageTooLarge => "REQUEST_MESSAGE_TOO_LARGE",
        ErrorKind::FrameTooLarge => "REQUEST_FRAME_TOO_LARGE",
        ErrorKind::QueueFull => "REQUEST_QUEUE_FULL",
        ErrorKind::Storage => "SERVER_STORAGE_FAILURE",
        ErrorKind::ShuttingDown => "SERVER_SHUTTING_DOWN",
        ErrorKind::NoLeader => "SERVER_NO_LEADER",
        ErrorKind::DiskFull => "SERVER_DISK_FULL",
        ErrorKind::FanoutLimit => "REQUEST_FANOUT_LIMIT",
        ErrorKind::TooManyQueues => "REQUEST_TOO_MANY_QUEUES",
        ErrorKind::OpenReadPending
        | ErrorKind::TooManyOpenReads
        | ErrorKind::NotStored
        | ErrorKind::Exists
        | ErrorKind::NonNumeric => "REQUEST_BAD_PARAMS",
        ErrorKind::AuthUnsupported => "REQUEST_UNKNOWN_COMMAND",
    }
}

/// `Info`'s JSON, as the original's Go encoder writes it:
/// `{"NumConnections":1,"NumQueues":1,"NumMessages":10,"Queues":{"q":{"NumMessages":10}}}`.
pub fn info_json(info: &Info) -> Vec<u8> {
    let total: u64 = info.queues.iter().map(|(_, n)| n).sum();
    let mut out = format!(
        "{{\"NumConnections\":{},\"NumQueues\":{},\"NumMessages\":{},\"Queues\":{{",
        info.connections,
        info.queues.len(),
        total
    )
    .into_bytes();
    for (i, (name, messages)) in info.queues.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::push_string(&mut out, name);
        out.extend_from_slice(format!(":{{\"NumMessages\":{messages}}}").as_bytes());
    }
    out.extend_from_slice(b"}}");
    out
}

/// Reads an `Info` JSON document back (for `mqd info`).
pub fn parse_info_json(text: &str) -> Option<Info> {
    let doc = json::parse(text)?;
    let connections = doc.get("NumConnections")?.as_u64()?;
    let json::Json::Object(queues) = doc.get("Queues")? else {
        return None;
    };
    let queues = queues
        .iter()
        .map(|(name, q)| Some((name.clone(), q.get("NumMessages")?.as_u64()?)))
        .collect::<Option<Vec<_>>>()?;
    Some(Info {
        connections,
        queues,
    })
}

/// Appends one frame holding `values`.
pub fn frame(out: &mut Vec<u8>, values: &[&[u8]]) {
    let len: usize = values.iter().map(|v| 4 + v.len()).sum();
    out.extend_from_slice(&(len as u32).to_be_bytes());
    for value in values {
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
    }
}

/// Splits a complete frame (length prefix included) into its values: for clients and tests.
pub fn decode_frame(buf: &[u8]) -> Option<(usize, Vec<Vec<u8>>)> {
    let len = read_u32(buf)? as usize;
    let body = buf.get(4..4 + len)?;
    let values = split_values(body)?;
    Some((4 + len, values.into_iter().map(<[u8]>::to_vec).collect()))
}

#[cfg(test)]
#[path = "mqmq_tests.rs"]
mod tests;
