//! The memcache binary protocol codec, with MemcacheQ's queue meaning.
//!
//! A request is a 24-byte header (magic 0x80, opcode, key length, extras length, body length,
//! opaque, cas) and a body of extras, key and value; a response has the same header with magic
//! 0x81, echoing the request's opcode and opaque, and a status. `parse` reads one request from
//! the front of a buffer and returns, with its command, the [`BinaryStyle`] its response needs;
//! `encode` appends that response, or nothing for a quiet opcode's success (and a quiet get's
//! miss). Every rule here is in `protocol-spec/memcache-binary.md`.

use smallvec::smallvec;

use super::command::{Command, ErrorKind, Key, Reply, Set, StatsKind, Value};
use super::memcache::{self, MAX_KEY_LEN, MAX_SKIP};
use super::{Limits, Parsed, ReplyStyle};

/// A request header's first byte.
pub const REQUEST_MAGIC: u8 = 0x80;
/// A response header's first byte.
pub const RESPONSE_MAGIC: u8 = 0x81;
/// Every request and response starts with a header this long.
pub const HEADER_LEN: usize = 24;

/// The opcodes mqd answers (memcached's `protocol_binary.h`).
pub mod opcode {
    pub const GET: u8 = 0x00;
    pub const SET: u8 = 0x01;
    pub const ADD: u8 = 0x02;
    pub const REPLACE: u8 = 0x03;
    pub const DELETE: u8 = 0x04;
    pub const INCREMENT: u8 = 0x05;
    pub const DECREMENT: u8 = 0x06;
    pub const QUIT: u8 = 0x07;
    pub const FLUSH: u8 = 0x08;
    pub const GETQ: u8 = 0x09;
    pub const NOOP: u8 = 0x0a;
    pub const VERSION: u8 = 0x0b;
    pub const GETK: u8 = 0x0c;
    pub const GETKQ: u8 = 0x0d;
    pub const APPEND: u8 = 0x0e;
    pub const PREPEND: u8 = 0x0f;
    pub const STAT: u8 = 0x10;
    pub const SETQ: u8 = 0x11;
    pub const ADDQ: u8 = 0x12;
    pub const REPLACEQ: u8 = 0x13;
    pub const DELETEQ: u8 = 0x14;
    pub const INCREMENTQ: u8 = 0x15;
    pub const DECREMENTQ: u8 = 0x16;
    pub const QUITQ: u8 = 0x17;
    pub const FLUSHQ: u8 = 0x18;
    pub const APPENDQ: u8 = 0x19;
    pub const PREPENDQ: u8 = 0x1a;
    pub const TOUCH: u8 = 0x1c;
    pub const GAT: u8 = 0x1d;
    pub const GATQ: u8 = 0x1e;
    pub const SASL_LIST_MECHS: u8 = 0x20;
    pub const SASL_AUTH: u8 = 0x21;
    pub const SASL_STEP: u8 = 0x22;
    pub const GATK: u8 = 0x23;
    pub const GATKQ: u8 = 0x24;
}

/// Response statuses.
pub mod status {
    pub const OK: u16 = 0x0000;
    pub const KEY_NOT_FOUND: u16 = 0x0001;
    pub const KEY_EXISTS: u16 = 0x0002;
    pub const VALUE_TOO_LARGE: u16 = 0x0003;
    pub const INVALID_ARGUMENTS: u16 = 0x0004;
    pub const NOT_STORED: u16 = 0x0005;
    pub const NON_NUMERIC: u16 = 0x0006;
    pub const AUTH_ERROR: u16 = 0x0020;
    pub const UNKNOWN_COMMAND: u16 = 0x0081;
    pub const OUT_OF_MEMORY: u16 = 0x0082;
}

/// What a response echoes of its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryStyle {
    opcode: u8,
    opaque: u32,
    /// GETK and GETKQ return the key, hit or miss.
    key: Key,
}

impl BinaryStyle {
    fn new(opcode: u8, opaque: u32) -> BinaryStyle {
        BinaryStyle {
            opcode,
            opaque,
            key: Key::new(),
        }
    }

    /// The request's opcode, echoed in its response.
    pub fn opcode(&self) -> u8 {
        self.opcode
    }

    /// A quiet opcode: no response on success (nor on a miss, for GETQ and GETKQ).
    pub fn quiet(&self) -> bool {
        use opcode::*;
        matches!(
            self.opcode,
            GETQ | GETKQ
                | SETQ
                | ADDQ
                | REPLACEQ
                | DELETEQ
                | INCREMENTQ
                | DECREMENTQ
                | QUITQ
                | FLUSHQ
                | APPENDQ
                | PREPENDQ
                | GATQ
                | GATKQ
        )
    }
}

/// A request header, in host order.
struct Header {
    opcode: u8,
    key_len: usize,
    extras_len: usize,
    body_len: usize,
    opaque: u32,
    cas: u64,
}

impl Header {
    fn read(buf: &[u8; HEADER_LEN]) -> Header {
        let u16_at = |at: usize| u16::from_be_bytes([buf[at], buf[at + 1]]);
        let u32_at = |at: usize| u32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
        Header {
            opcode: buf[1],
            key_len: usize::from(u16_at(2)),
            extras_len: usize::from(buf[4]),
            body_len: u32_at(8) as usize,
            opaque: u32_at(12),
            cas: u64::from_be_bytes(buf[16..24].try_into().expect("8 bytes")),
        }
    }

    /// Extras, key and value lengths are as `(extras, key)` say, with a key of at most 250
    /// bytes (0 if `key` is `None`, at least 1 if `Some(true)`), and a value only if `value`.
    fn shaped(&self, extras: usize, key: Option<bool>, value: bool) -> bool {
        let key_ok = match key {
            None => self.key_len == 0,
            Some(required) => self.key_len <= MAX_KEY_LEN && (self.key_len > 0 || !required),
        };
        let fixed = extras + self.key_len;
        self.extras_len == extras && key_ok && (self.body_len == fixed || value)
    }
}

const INVALID: ErrorKind = ErrorKind::BadFormat("Invalid arguments");

/// How many bytes the request at the front of `buf` takes in all, once its header has arrived:
/// the header and the body length it declares. None before that, and for a header that
/// [`parse`] refuses and closes on (its declared length is not to be trusted).
pub fn request_len(buf: &[u8]) -> Option<usize> {
    let header = Header::read(buf.first_chunk::<HEADER_LEN>()?);
    let lengths_agree = header.key_len + header.extras_len <= header.body_len;
    (buf[0] == REQUEST_MAGIC && lengths_agree && header.body_len <= MAX_SKIP)
        .then_some(HEADER_LEN + header.body_len)
}

/// Parses the request at the front of `buf`.
pub fn parse(buf: &[u8], limits: &Limits) -> Parsed {
    let Some(&magic) = buf.first() else {
        return Parsed::NeedMore;
    };
    if magic != REQUEST_MAGIC {
        // The stream is lost: nothing says where the next request starts.
        return refuse(1, 0, INVALID, BinaryStyle::new(0, 0), true);
    }
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Parsed::NeedMore;
    };
    let header = Header::read(head);
    let style = BinaryStyle::new(header.opcode, header.opaque);
    if header.key_len + header.extras_len > header.body_len || header.body_len > MAX_SKIP {
        // Lengths that contradict each other, or a body no client sends: no trust left in
        // where the next request starts.
        return refuse(HEADER_LEN, 0, INVALID, style, true);
    }
    // Refused from the header alone: the body is discarded as it arrives, never buffered.
    let skip_body = |kind| refuse(HEADER_LEN, header.body_len, kind, style.clone(), false);
    use opcode::*;
    let (extras, key, value) = match header.opcode {
        GET | GETQ | GETK | GETKQ | DELETE | DELETEQ => (0, Some(true), false),
        SET | SETQ | REPLACE | REPLACEQ => (8, Some(true), true),
        NOOP | VERSION | QUIT | QUITQ => (0, None, false),
        FLUSH | FLUSHQ if header.extras_len == 4 => (4, None, false),
        FLUSH | FLUSHQ => (0, None, false),
        STAT => (0, Some(false), false),
        ADD | ADDQ => return skip_body(ErrorKind::Exists),
        APPEND | APPENDQ | PREPEND | PREPENDQ => return skip_body(ErrorKind::NotStored),
        INCREMENT | INCREMENTQ | DECREMENT | DECREMENTQ => return skip_body(ErrorKind::NonNumeric),
        SASL_LIST_MECHS | SASL_AUTH | SASL_STEP => return skip_body(ErrorKind::AuthUnsupported),
        // TOUCH, GAT*, and every opcode memcached does not know either.
        _ => return skip_body(ErrorKind::UnknownCommand),
    };
    if !header.shaped(extras, key, value) {
        return skip_body(INVALID);
    }
    if header.cas != 0
        && matches!(
            header.opcode,
            SET | SETQ | REPLACE | REPLACEQ | DELETE | DELETEQ
        )
    {
        // A compare-and-swap: no message's sequence number is a cas it could match.
        return skip_body(ErrorKind::Exists);
    }
    let value_len = header.body_len - header.extras_len - header.key_len;
    if value_len > limits.max_message_size {
        return skip_body(ErrorKind::MessageTooLarge);
    }
    let consumed = HEADER_LEN + header.body_len;
    let Some(body) = buf.get(HEADER_LEN..consumed) else {
        return Parsed::NeedMore;
    };
    let (extras, rest) = body.split_at(header.extras_len);
    let (key, value) = rest.split_at(header.key_len);
    match decode(&header, extras, key, value) {
        Ok((command, style)) => Parsed::Command {
            consumed,
            command,
            style: ReplyStyle::Binary(style),
        },
        Err(reply) => Parsed::Invalid {
            consumed,
            skip: 0,
            reply,
            close: false,
            style: ReplyStyle::Binary(style),
        },
    }
}

fn refuse(
    consumed: usize,
    skip: usize,
    kind: ErrorKind,
    style: BinaryStyle,
    close: bool,
) -> Parsed {
    Parsed::Invalid {
        consumed,
        skip,
        reply: Reply::Error(kind),
        close,
        style: ReplyStyle::Binary(style),
    }
}

/// The command of a well-shaped request whose body is all here.
fn decode(
    header: &Header,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) -> Result<(Command, BinaryStyle), Reply> {
    use opcode::*;
    let mut style = BinaryStyle::new(header.opcode, header.opaque);
    let quiet = style.quiet();
    let u32_at = |at: usize| u32::from_be_bytes(extras[at..at + 4].try_into().expect("4 bytes"));
    let command = match header.opcode {
        GET | GETQ | GETK | GETKQ => {
            if matches!(header.opcode, GETK | GETKQ) {
                style.key = Key::from_slice(key);
            }
            let read = memcache::parse_binary_read(key, false).map_err(Reply::Error)?;
            Command::Get(smallvec![read])
        }
        SET | SETQ | REPLACE | REPLACEQ => Command::Set(Set {
            queue: Key::from_slice(key),
            flags: u32_at(0),
            exptime: i64::from(u32_at(4)),
            body: value.to_vec(),
            noreply: quiet,
        }),
        DELETE | DELETEQ => Command::Delete {
            queue: key.to_vec(),
            // DELETEQ still answers a miss.
            noreply: false,
        },
        NOOP => Command::Noop,
        VERSION => Command::Version,
        QUIT | QUITQ => Command::Quit,
        FLUSH | FLUSHQ => Command::FlushAll { noreply: quiet },
        _ => match key {
            b"" => Command::Stats(StatsKind::General),
            b"queue" => Command::Stats(StatsKind::Queue),
            b"reset" => Command::Stats(StatsKind::Reset),
            _ => return Err(Reply::NotFound),
        },
    };
    Ok((command, style))
}

/// Appends the response to a request parsed with `style`: nothing for a quiet opcode's success
/// or a quiet get's miss.
pub fn encode(reply: &Reply, style: &BinaryStyle, out: &mut Vec<u8>) {
    let quiet = style.quiet();
    match reply {
        Reply::Values(values) => match values.first() {
            Some(value) => get_hit(out, style, value),
            None if quiet => {}
            None if style.opcode == opcode::GETK => {
                response(out, style, status::KEY_NOT_FOUND, &[], &style.key, &[]);
            }
            None => error(out, style, status::KEY_NOT_FOUND, b"Not found"),
        },
        Reply::NotFound => error(out, style, status::KEY_NOT_FOUND, b"Not found"),
        Reply::Stats(stats) => {
            for (name, value) in stats {
                response(
                    out,
                    style,
                    status::OK,
                    &[],
                    name.as_bytes(),
                    value.as_bytes(),
                );
            }
            response(out, style, status::OK, &[], &[], &[]);
        }
        Reply::Version(version) => {
            response(out, style, status::OK, &[], &[], version.as_bytes());
        }
        Reply::Info(_) => error(out, style, status::UNKNOWN_COMMAND, b"Unknown command"),
        Reply::Error(kind) => {
            let (code, message) = error_status(*kind);
            error(out, style, code, message.as_bytes());
        }
        Reply::Stored
        | Reply::Deleted
        | Reply::End
        | Reply::Ok
        | Reply::Reset
        | Reply::Noop
        | Reply::Closing => {
            if !quiet {
                response(out, style, status::OK, &[], &[], &[]);
            }
        }
    }
}

/// A GET family hit: the flags as extras, the key for GETK/GETKQ, the body. CAS is 0: a
/// queue's message has no cas a client could use.
fn get_hit(out: &mut Vec<u8>, style: &BinaryStyle, value: &Value) {
    let key: &[u8] = if matches!(style.opcode, opcode::GETK | opcode::GETKQ) {
        &style.key
    } else {
        &[]
    };
    response(
        out,
        style,
        status::OK,
        &value.flags.to_be_bytes(),
        key,
        &value.body,
    );
}

fn error(out: &mut Vec<u8>, style: &BinaryStyle, code: u16, message: &[u8]) {
    response(out, style, code, &[], &[], message);
}

/// Appends one response: header, extras, key, value.
fn response(
    out: &mut Vec<u8>,
    style: &BinaryStyle,
    code: u16,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) {
    let body_len = extras.len() + key.len() + value.len();
    out.reserve(HEADER_LEN + body_len);
    out.push(RESPONSE_MAGIC);
    out.push(style.opcode);
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.push(extras.len() as u8);
    out.push(0); // data type: raw bytes
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&(body_len as u32).to_be_bytes());
    out.extend_from_slice(&style.opaque.to_be_bytes());
    out.extend_from_slice(&0u64.to_be_bytes()); // cas
    out.extend_from_slice(extras);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

/// The status and message of each error: memcached's status and default message where it has
/// one, else the memcache text error without its `CLIENT_ERROR `/`SERVER_ERROR ` prefix (as
/// memcached sends its `SERVER_ERROR` strings over binary).
pub fn error_status(kind: ErrorKind) -> (u16, String) {
    let text = || {
        let line = memcache::error_line(kind);
        match line.split_once(' ') {
            Some(("CLIENT_ERROR" | "SERVER_ERROR", message)) => message.to_string(),
            _ => line,
        }
    };
    match kind {
        ErrorKind::UnknownCommand => (status::UNKNOWN_COMMAND, "Unknown command".into()),
        ErrorKind::MessageTooLarge => (status::VALUE_TOO_LARGE, "Too large.".into()),
        ErrorKind::NotStored => (status::NOT_STORED, "Not stored.".into()),
        ErrorKind::Exists => (status::KEY_EXISTS, "Data exists for key.".into()),
        ErrorKind::NonNumeric => (
            status::NON_NUMERIC,
            "Non-numeric server-side value for incr or decr".into(),
        ),
        ErrorKind::AuthUnsupported => (status::AUTH_ERROR, "Auth failure.".into()),
        ErrorKind::OpenReadPending => (
            status::INVALID_ARGUMENTS,
            "an open message is held on this queue".into(),
        ),
        ErrorKind::TooManyOpenReads => (status::INVALID_ARGUMENTS, "too many open messages".into()),
        ErrorKind::BadFormat(_)
        | ErrorKind::BadParams
        | ErrorKind::BadQueueName
        | ErrorKind::BadTimeout
        | ErrorKind::BadDataChunk
        | ErrorKind::LineTooLong
        | ErrorKind::FrameTooLarge
        | ErrorKind::BadFrame => (status::INVALID_ARGUMENTS, text()),
        ErrorKind::QueueFull
        | ErrorKind::Storage
        | ErrorKind::ShuttingDown
        | ErrorKind::NoLeader
        | ErrorKind::DiskFull
        | ErrorKind::FanoutLimit
        | ErrorKind::TooManyQueues => (status::OUT_OF_MEMORY, text()),
    }
}

#[cfg(test)]
#[path = "binary_tests.rs"]
mod tests;
