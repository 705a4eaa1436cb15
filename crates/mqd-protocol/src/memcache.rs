//! The memcache ASCII codec, with MemcacheQ's queue meaning and Kestrel's read options.
//!
//! `parse` reads one request from the front of a buffer; `encode` appends one reply. Lines end at
//! `\n` with an optional `\r` before it; tokens are separated by spaces. Every rule here is in
//! `protocol-spec/memcache.md`. The meta commands (`mg`, `ms`, `md`, `mn`, `me`, `ma`) share the
//! line framing and are handed to [`super::meta`] once their name is read.

use super::command::{Command, ErrorKind, Key, Read, Reads, Reply, Set, StatsKind};
use super::text::{Args, Decimal, Tokens};
use super::{meta, Limits, Parsed, ReplyStyle};

/// Longest queue name, as in memcached and MemcacheQ.
pub const MAX_KEY_LEN: usize = 250;
/// Longest command line; a longer one without a newline is an error and closes the connection.
pub const MAX_LINE: usize = 2048;
/// Largest body length an oversized `set` may announce and still have its body skipped; a larger
/// one is a malformed request and closes the connection.
pub const MAX_SKIP: usize = 1 << 30;
/// `get`/`gets` lines may name many keys, so they may be longer (as in memcached).
pub const MAX_GET_LINE: usize = 64 * 1024;

/// Parses the request at the front of `buf`.
pub fn parse(buf: &[u8], limits: &Limits) -> Parsed {
    let window = &buf[..buf.len().min(MAX_GET_LINE + 1)];
    let Some(newline) = window.iter().position(|&b| b == b'\n') else {
        let limit = if is_get_line(buf) {
            MAX_GET_LINE
        } else {
            MAX_LINE
        };
        if buf.len() > limit {
            return invalid(buf.len(), ErrorKind::LineTooLong, true);
        }
        return Parsed::NeedMore;
    };
    if newline > MAX_LINE && !is_get_line(buf) {
        return invalid(newline + 1, ErrorKind::LineTooLong, true);
    }
    let line_len = newline + 1;
    let line = buf[..newline]
        .strip_suffix(b"\r")
        .unwrap_or(&buf[..newline]);
    let mut tokens = Tokens::new(line);
    let Some(name) = tokens.next() else {
        return invalid(line_len, ErrorKind::UnknownCommand, false);
    };
    let command = match name {
        b"get" => parse_get(tokens, false),
        b"gets" => parse_get(tokens, true),
        [b'm', _] if meta::is_meta(name) => {
            return meta::parse(name, tokens, buf, line_len, limits)
        }
        _ => {
            let args = Args::new(tokens);
            let args = args.as_slice();
            match name {
                b"set" => return parse_set(buf, line_len, args, limits),
                b"delete" => parse_delete(args),
                b"flush" => parse_flush(args),
                b"flush_all" => parse_flush_all(args),
                b"stats" => parse_stats(args),
                b"version" if args.is_empty() => Ok(Command::Version),
                b"verbosity" => parse_verbosity(args),
                b"quit" if args.is_empty() => Ok(Command::Quit),
                b"cluster" => Ok(Command::Cluster),
                _ => Err(ErrorKind::UnknownCommand),
            }
        }
    };
    match command {
        Ok(command) => Parsed::Command {
            consumed: line_len,
            command,
            style: ReplyStyle::Text,
        },
        Err(kind) => invalid(line_len, kind, false),
    }
}

/// How many bytes the request at the front of `buf` takes in all, once its command line has
/// arrived and announces a data block (`set`, meta `ms`): what a connection must buffer for it.
/// None when that is not known yet, or the line announces no body (every other command fits in
/// a line).
pub fn request_len(buf: &[u8]) -> Option<usize> {
    // `set <queue> <flags> <exptime> <bytes>`, `ms <key> <datalen>`.
    let length_token = if buf.starts_with(b"set ") {
        4
    } else if buf.starts_with(b"ms ") {
        2
    } else {
        return None;
    };
    let newline = buf[..buf.len().min(MAX_LINE + 1)]
        .iter()
        .position(|&b| b == b'\n')?;
    let bytes = Tokens::new(&buf[..newline]).nth(length_token)?;
    let bytes = usize::from_decimal(bytes.strip_suffix(b"\r").unwrap_or(bytes))?;
    (newline + 1).checked_add(bytes)?.checked_add(2)
}

fn invalid(consumed: usize, kind: ErrorKind, close: bool) -> Parsed {
    Parsed::Invalid {
        consumed,
        skip: 0,
        reply: Reply::Error(kind),
        close,
        style: ReplyStyle::Text,
    }
}

fn is_get_line(buf: &[u8]) -> bool {
    buf.starts_with(b"get ") || buf.starts_with(b"gets ")
}

pub(crate) const BAD_FORMAT: ErrorKind = ErrorKind::BadFormat("bad command line format");

/// `set <queue> <flags> <exptime> <bytes> [noreply]` followed by a data block.
fn parse_set(buf: &[u8], line_len: usize, args: &[&[u8]], limits: &Limits) -> Parsed {
    // A malformed line whose length can be read still announces a body: discard it unread, so
    // the body is never run as commands (a body of `flush_all` must not flush).
    let discard_body = |kind: ErrorKind| match args.get(3).map(|len| parse_number::<usize>(len)) {
        Some(Ok(bytes)) if bytes <= MAX_SKIP => Parsed::Invalid {
            consumed: line_len,
            skip: bytes + 2,
            reply: Reply::Error(kind),
            close: false,
            style: ReplyStyle::Text,
        },
        Some(Ok(_)) => invalid(line_len, BAD_FORMAT, true),
        _ => invalid(line_len, kind, false),
    };
    if args.len() != 4 && args.len() != 5 {
        return discard_body(ErrorKind::UnknownCommand);
    }
    let header = (|| {
        let queue = queue_name(args[0])?;
        let flags = parse_number::<u32>(args[1])?;
        let exptime = parse_number::<i64>(args[2])?;
        let bytes = parse_number::<usize>(args[3])?;
        let noreply = parse_noreply(args.get(4))?;
        Ok((queue, flags, exptime, bytes, noreply))
    })();
    let (queue, flags, exptime, bytes, noreply) = match header {
        Ok(header) => header,
        Err(kind) => return discard_body(kind),
    };
    if bytes > MAX_SKIP {
        // No client sends this much in one set: the stream cannot be trusted to resync.
        return invalid(line_len, BAD_FORMAT, true);
    }
    if bytes > limits.max_message_size {
        return Parsed::Invalid {
            consumed: line_len,
            skip: bytes.saturating_add(2),
            reply: Reply::Error(ErrorKind::MessageTooLarge),
            close: false,
            style: ReplyStyle::Text,
        };
    }
    let end = line_len + bytes + 2;
    if buf.len() < end {
        return Parsed::NeedMore;
    }
    if &buf[end - 2..end] != b"\r\n" {
        return invalid(end, ErrorKind::BadDataChunk, false);
    }
    Parsed::Command {
        consumed: end,
        command: Command::Set(Set {
            queue: Key::from_slice(queue),
            flags,
            exptime,
            body: buf[line_len..end - 2].to_vec(),
            noreply,
        }),
        style: ReplyStyle::Text,
    }
}

/// `get <key> [<key> ...]`; every key is checked before any is acted on.
fn parse_get(keys: Tokens, cas: bool) -> Result<Command, ErrorKind> {
    // One key is the common case: kept inline, on the heap only for multi-key gets.
    let mut reads = Reads::new();
    for key in keys {
        reads.push(parse_read(key, cas)?);
    }
    if reads.is_empty() {
        return Err(ErrorKind::UnknownCommand);
    }
    Ok(Command::Get(reads))
}

/// A get key: `<queue>[/t=<ms>][/open][/close][/abort][/peek]`, options in any order. A key
/// with a `/` whose parts are not all options is a plain queue name, as in MemcacheQ, so queues
/// named like `jobs/daily` keep working.
pub fn parse_read(key: &[u8], cas: bool) -> Result<Read, ErrorKind> {
    parse_read_named(key, cas, queue_name)
}

/// [`parse_read`] for keys that may hold any byte (binary protocol keys, base64 meta keys):
/// the queue part is only checked to be 1 to 250 bytes long.
pub fn parse_binary_read(key: &[u8], cas: bool) -> Result<Read, ErrorKind> {
    parse_read_named(key, cas, binary_queue_name)
}

fn parse_read_named(
    key: &[u8],
    cas: bool,
    queue_name: fn(&[u8]) -> Result<&[u8], ErrorKind>,
) -> Result<Read, ErrorKind> {
    let plain = ReadOptions::default();
    let (queue, options) = match key.iter().position(|&b| b == b'/') {
        Some(slash) => match read_options(&key[slash + 1..]) {
            Some(options) => (&key[..slash], options),
            None => (key, plain),
        },
        None => (key, plain),
    };
    queue_name(queue)?;
    let ReadOptions {
        wait_ms,
        open,
        close,
        abort,
        peek,
    } = options;
    if (peek || abort) && (open || close) || (peek && abort) {
        return Err(ErrorKind::BadFormat("bad option combination"));
    }
    Ok(Read {
        key: Key::from_slice(key),
        queue_len: queue.len(),
        wait_ms,
        open,
        close,
        abort,
        peek,
        cas,
    })
}

/// The `/`-separated options after a get key's queue name, or `None` if any part is not one.
#[derive(Default)]
struct ReadOptions {
    wait_ms: Option<u64>,
    open: bool,
    close: bool,
    abort: bool,
    peek: bool,
}

fn read_options(parts: &[u8]) -> Option<ReadOptions> {
    let mut options = ReadOptions::default();
    for option in parts.split(|&b| b == b'/') {
        match option {
            b"open" => options.open = true,
            b"close" => options.close = true,
            b"abort" => options.abort = true,
            b"peek" => options.peek = true,
            _ => options.wait_ms = Some(u64::from_decimal(option.strip_prefix(b"t=")?)?),
        }
    }
    Some(options)
}

fn parse_delete(args: &[&[u8]]) -> Result<Command, ErrorKind> {
    // `delete <q> [0] [noreply]`: memcached still accepts the legacy hold time of 0.
    let (queue, rest) = args.split_first().ok_or(ErrorKind::UnknownCommand)?;
    let rest = match rest {
        [b"0", rest @ ..] => rest,
        rest => rest,
    };
    if rest.len() > 1 {
        return Err(ErrorKind::UnknownCommand);
    }
    Ok(Command::Delete {
        queue: queue_name(queue)?.to_vec(),
        noreply: parse_noreply(rest.first())?,
    })
}

fn parse_flush(args: &[&[u8]]) -> Result<Command, ErrorKind> {
    match args {
        [queue] | [queue, _] => Ok(Command::Flush {
            queue: queue_name(queue)?.to_vec(),
            noreply: parse_noreply(args.get(1))?,
        }),
        _ => Err(ErrorKind::UnknownCommand),
    }
}

fn parse_flush_all(args: &[&[u8]]) -> Result<Command, ErrorKind> {
    // `flush_all [delay] [noreply]`: the delay is accepted and ignored (queues flush at once).
    let rest = match args {
        [delay, rest @ ..] if *delay != b"noreply" => {
            parse_number::<u64>(delay)?;
            rest
        }
        rest => rest,
    };
    if rest.len() > 1 {
        return Err(ErrorKind::UnknownCommand);
    }
    Ok(Command::FlushAll {
        noreply: parse_noreply(rest.first())?,
    })
}

fn parse_stats(args: &[&[u8]]) -> Result<Command, ErrorKind> {
    match args {
        [] => Ok(Command::Stats(StatsKind::General)),
        [b"queue"] => Ok(Command::Stats(StatsKind::Queue)),
        [b"reset"] => Ok(Command::Stats(StatsKind::Reset)),
        _ => Err(ErrorKind::UnknownCommand),
    }
}

fn parse_verbosity(args: &[&[u8]]) -> Result<Command, ErrorKind> {
    match args {
        [level] | [level, _] => Ok(Command::Verbosity {
            level: parse_number(level)?,
            noreply: parse_noreply(args.get(1))?,
        }),
        _ => Err(ErrorKind::UnknownCommand),
    }
}

/// A queue name: 1 to 250 bytes, none of them a control character or space.
pub(crate) fn queue_name(name: &[u8]) -> Result<&[u8], ErrorKind> {
    if name.is_empty() || name.len() > MAX_KEY_LEN || name.iter().any(|&b| b < 0x21 || b == 0x7f) {
        return Err(ErrorKind::BadQueueName);
    }
    Ok(name)
}

/// A queue name from a protocol whose keys are length-prefixed or encoded: 1 to 250 bytes of
/// anything. `stats` prints such names with [`printable_name`].
pub(crate) fn binary_queue_name(name: &[u8]) -> Result<&[u8], ErrorKind> {
    if name.is_empty() || name.len() > MAX_KEY_LEN {
        return Err(ErrorKind::BadQueueName);
    }
    Ok(name)
}

fn parse_noreply(token: Option<&&[u8]>) -> Result<bool, ErrorKind> {
    match token {
        None => Ok(false),
        Some(&b"noreply") => Ok(true),
        Some(_) => Err(BAD_FORMAT),
    }
}

/// Strict decimal: digits only (a leading `-` for signed types), no overflow.
pub(crate) fn parse_number<T: Decimal>(token: &[u8]) -> Result<T, ErrorKind> {
    T::from_decimal(token).ok_or(BAD_FORMAT)
}

/// Appends the wire form of `reply`.
pub fn encode(reply: &Reply, out: &mut Vec<u8>) {
    match reply {
        Reply::Stored => out.extend_from_slice(b"STORED\r\n"),
        Reply::Values(values) => {
            let size = values
                .iter()
                .map(|value| {
                    b"VALUE ".len() + value.key.len() + VALUE_LINE_END + value.body.len() + 2
                })
                .sum::<usize>();
            out.reserve(size + b"END\r\n".len());
            for value in values {
                out.extend_from_slice(b"VALUE ");
                out.extend_from_slice(&value.key);
                let mut end = [0; VALUE_LINE_END];
                out.extend_from_slice(value_line_end(
                    &mut end,
                    value.flags,
                    value.body.len(),
                    value.cas,
                ));
                out.extend_from_slice(&value.body);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"END\r\n");
        }
        Reply::Deleted => out.extend_from_slice(b"DELETED\r\n"),
        Reply::NotFound => out.extend_from_slice(b"NOT_FOUND\r\n"),
        Reply::End => out.extend_from_slice(b"END\r\n"),
        Reply::Ok => out.extend_from_slice(b"OK\r\n"),
        Reply::Reset => out.extend_from_slice(b"RESET\r\n"),
        Reply::Version(version) => {
            out.extend_from_slice(b"VERSION ");
            out.extend_from_slice(version.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Reply::Stats(stats) => {
            for (name, value) in stats {
                out.extend_from_slice(b"STAT ");
                out.extend_from_slice(name.as_bytes());
                out.push(b' ');
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"END\r\n");
        }
        // Info is mqmq's; a memcache client cannot ask for it.
        Reply::Info(_) => out.extend_from_slice(b"ERROR\r\n"),
        // Only meta `mn` asks for it, and `MN` is its text spelling.
        Reply::Noop => out.extend_from_slice(b"MN\r\n"),
        // `quit` closes without a reply.
        Reply::Closing => {}
        Reply::Error(kind) => {
            out.extend_from_slice(error_line(*kind).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// A queue name as one token of a text reply (`stats`): printable characters stay, anything
/// that could break the line (control bytes, spaces, invalid UTF-8, `\\`) becomes `\\xNN`.
/// Names a memcache client can create are printed unchanged.
pub fn printable_name(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c.is_whitespace() || c == '\\' {
                let mut utf8 = [0u8; 4];
                for byte in c.encode_utf8(&mut utf8).bytes() {
                    out.push_str(&format!("\\x{byte:02x}"));
                }
            } else {
                out.push(c);
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// The memcache spelling of each error.
pub fn error_line(kind: ErrorKind) -> String {
    match kind {
        ErrorKind::UnknownCommand
        | ErrorKind::OpenReadPending
        | ErrorKind::TooManyOpenReads
        | ErrorKind::AuthUnsupported => "ERROR".into(),
        ErrorKind::BadFormat(reason) => format!("CLIENT_ERROR {reason}"),
        ErrorKind::BadQueueName
        | ErrorKind::BadParams
        | ErrorKind::BadTimeout
        | ErrorKind::BadFrame
        | ErrorKind::FrameTooLarge => "CLIENT_ERROR bad command line format".into(),
        ErrorKind::BadDataChunk => "CLIENT_ERROR bad data chunk".into(),
        ErrorKind::LineTooLong => "CLIENT_ERROR line too long".into(),
        ErrorKind::MessageTooLarge => "SERVER_ERROR object too large for cache".into(),
        ErrorKind::QueueFull => "SERVER_ERROR queue full".into(),
        ErrorKind::Storage => "SERVER_ERROR storage failure".into(),
        ErrorKind::ShuttingDown => "SERVER_ERROR shutting down".into(),
        ErrorKind::NoLeader => "SERVER_ERROR no leader".into(),
        ErrorKind::DiskFull => "SERVER_ERROR out of disk space".into(),
        ErrorKind::FanoutLimit => "SERVER_ERROR too many fan-out queues".into(),
        ErrorKind::TooManyQueues => "SERVER_ERROR too many queues".into(),
        ErrorKind::NotStored => "NOT_STORED".into(),
        ErrorKind::Exists => "EXISTS".into(),
        ErrorKind::NonNumeric => {
            "CLIENT_ERROR cannot increment or decrement non-numeric value".into()
        }
    }
}

/// Longest end of a `VALUE` line: three numbers of up to 20 digits, each after a space, then
/// `\r\n`.
const VALUE_LINE_END: usize = 3 * 21 + 2;

/// ` <flags> <bytes>[ <cas>]\r\n`, written back to front into `buf`: one copy into the reply
/// instead of one per piece.
fn value_line_end(
    buf: &mut [u8; VALUE_LINE_END],
    flags: u32,
    bytes: usize,
    cas: Option<u64>,
) -> &[u8] {
    let mut at = buf.len() - 2;
    buf[at..].copy_from_slice(b"\r\n");
    if let Some(cas) = cas {
        at = prepend_number(buf, at, cas);
    }
    at = prepend_number(buf, at, bytes as u64);
    at = prepend_number(buf, at, u64::from(flags));
    &buf[at..]
}

/// Writes ` <n>` to end just before `buf[end]`; returns where it starts.
fn prepend_number(buf: &mut [u8], mut end: usize, mut n: u64) -> usize {
    loop {
        end -= 1;
        buf[end] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    end -= 1;
    buf[end] = b' ';
    end
}

#[cfg(test)]
#[path = "memcache_tests.rs"]
mod tests;
