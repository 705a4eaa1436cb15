//! memcached's meta commands (`mg`, `ms`, `md`, `mn`, `me`, `ma`) on a queue server.
//!
//! They are lines of the memcache text protocol, so [`super::memcache::parse`] frames them and
//! hands over once it has read a meta command's name. This module owns what follows: the key
//! (plain, or base64 with `b`), the single-character flags with their tokens, the mapping onto
//! the shared [`Command`]s, and the replies, whose code (`HD`, `VA`, `EN`, `NF`, `NS`, `EX`, `MN`,
//! `ME`) and returned flags depend on the request's flags, kept in its [`MetaStyle`]. The syntax
//! is memcached's `doc/protocol.txt`; what each command means for a queue is in
//! `protocol-spec/meta.md`.

use smallvec::smallvec;

use super::base64;
use super::command::{Command, ErrorKind, Key, Read, Reply, Set, Value};
use super::memcache::{self, MAX_KEY_LEN, MAX_SKIP};
use super::text::{Decimal, Tokens};
use super::{Limits, Parsed, ReplyStyle};

/// Most tokens a meta command line may have, the command and key included (memcached's
/// `MFLAG_MAX_OPT_LENGTH`).
pub const MAX_TOKENS: usize = 20;
/// Longest `O` token, the `O` included (memcached's `MFLAG_MAX_OPAQUE_LENGTH`).
pub const MAX_OPAQUE: usize = 32;

/// The meta command a reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaCode {
    /// `mg`: a take (`v`) or a peek (no `v`).
    Get,
    /// `ms`: an enqueue.
    Set,
    /// `md`: a queue deleted, or flushed (`x`).
    Delete,
    /// `mn`.
    Noop,
    /// `me`: the head message's metadata.
    Debug,
    /// `ma`: always refused, a queue is no number.
    Arithmetic,
}

/// How a meta request's reply is spelled: its command, the flags that shape the reply, and the
/// flags to return, in the order the request gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaStyle {
    code: MetaCode,
    /// `q`: no `EN` (mg), no `HD` (ms, md).
    quiet: bool,
    /// `v`: `VA` with the message (mg).
    value: bool,
    /// `b`: the key was base64; `k` returns it base64, followed by a `b` flag.
    base64: bool,
    /// Flags that return something (`O k s t c f l h`), in request order.
    returns: Returns,
    /// The `O` token, `O` included.
    opaque: Opaque,
    /// The decoded key, kept only when `k` asked for it.
    key: Key,
    /// The body size, for `ms ... s`.
    size: usize,
}

impl MetaStyle {
    fn new(code: MetaCode) -> MetaStyle {
        MetaStyle {
            code,
            quiet: false,
            value: false,
            base64: false,
            returns: Returns::default(),
            opaque: Opaque::default(),
            key: Key::new(),
            size: 0,
        }
    }

    /// The command this style answers.
    pub fn code(&self) -> MetaCode {
        self.code
    }
}

/// Up to 8 returned flags in order: no command returns more distinct ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Returns {
    flags: [u8; 8],
    len: u8,
}

impl Returns {
    fn push(&mut self, flag: u8) {
        if let Some(slot) = self.flags.get_mut(self.len as usize) {
            *slot = flag;
            self.len += 1;
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.flags[..self.len as usize]
    }
}

/// An `O` token, inline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Opaque {
    bytes: [u8; MAX_OPAQUE],
    len: u8,
}

/// Whether a command name is a meta command.
pub(crate) fn is_meta(name: &[u8]) -> bool {
    matches!(name, b"mg" | b"ms" | b"md" | b"mn" | b"me" | b"ma")
}

const BAD_FORMAT: ErrorKind = memcache::BAD_FORMAT;
const BAD_TOKEN: ErrorKind = ErrorKind::BadFormat("bad token in command line format");
/// A flag memcached honours but a queue cannot: `mg` `N`/`R` (leases), `md` `I` (stale marks).
const UNSUPPORTED: ErrorKind = ErrorKind::BadFormat("flag not supported on a queue");

/// What the flags of one request say.
#[derive(Default)]
struct Flags {
    base64: bool,
    quiet: bool,
    value: bool,
    cas: bool,
    remove_value: bool,
    invalidate: bool,
    lease: bool,
    compare_cas: bool,
    client_flags: u32,
    ttl: i64,
    mode: Option<u8>,
    returns: Returns,
    opaque: Opaque,
}

/// Reads a request's flags, memcached's way: each is one character, then its token.
fn parse_flags(tokens: Tokens, code: MetaCode) -> Result<Flags, ErrorKind> {
    let returnable: &[u8] = match code {
        MetaCode::Get => b"stcflhOk",
        MetaCode::Set => b"Okcs",
        MetaCode::Delete => b"Ok",
        _ => b"",
    };
    let mut flags = Flags::default();
    let mut seen = 0u128;
    for token in tokens {
        let (&flag, arg) = token.split_first().expect("tokens are never empty");
        if flag >= 127 || seen & 1 << flag != 0 {
            return Err(ErrorKind::BadFormat("duplicate flag"));
        }
        seen |= 1 << flag;
        match flag {
            b'b' => flags.base64 = true,
            b'q' => flags.quiet = true,
            b'v' => flags.value = true,
            b'c' => flags.cas = true,
            b'x' => flags.remove_value = true,
            b'I' => flags.invalidate = true,
            b'N' | b'R' => {
                i32_token(arg)?;
                flags.lease = true;
            }
            b'T' => flags.ttl = i32_token(arg)?,
            b'F' => flags.client_flags = u32::from_decimal(arg).ok_or(BAD_FORMAT)?,
            b'C' => {
                u64::from_decimal(arg).ok_or(BAD_TOKEN)?;
                flags.compare_cas = true;
            }
            b'E' => {
                u64::from_decimal(arg).ok_or(BAD_TOKEN)?;
            }
            b'J' => {
                u64::from_decimal(arg)
                    .ok_or(ErrorKind::BadFormat("invalid numeric initial value"))?;
            }
            b'D' => {
                u64::from_decimal(arg)
                    .ok_or(ErrorKind::BadFormat("invalid numeric delta value"))?;
            }
            b'M' => flags.mode = Some(arg.first().copied().unwrap_or(b' ')),
            b'O' => {
                if token.len() > MAX_OPAQUE {
                    return Err(ErrorKind::BadFormat("opaque token too long"));
                }
                flags.opaque.bytes[..token.len()].copy_from_slice(token);
                flags.opaque.len = token.len() as u8;
            }
            b'k' | b's' | b't' | b'f' | b'l' | b'h' | b'u' | b'P' | b'L' => {}
            _ => return Err(ErrorKind::BadFormat("invalid flag")),
        }
        if returnable.contains(&flag) {
            flags.returns.push(flag);
        }
    }
    Ok(flags)
}

/// A TTL-like token: a signed 32-bit decimal, as memcached reads it.
fn i32_token(arg: &[u8]) -> Result<i64, ErrorKind> {
    i64::from_decimal(arg)
        .filter(|n| i32::try_from(*n).is_ok())
        .ok_or(BAD_TOKEN)
}

/// The queue a key names: the token itself, or its base64 decoding with `b`. Any byte is allowed
/// in a decoded name; a plain one follows the text protocol's rule.
fn key_bytes(token: &[u8], base64: bool) -> Result<Key, ErrorKind> {
    if token.len() > MAX_KEY_LEN {
        return Err(BAD_FORMAT);
    }
    if !base64 {
        return Ok(Key::from_slice(memcache::queue_name(token)?));
    }
    let mut decoded = Vec::with_capacity(token.len());
    match base64::decode(token, &mut decoded) {
        Some(()) if !decoded.is_empty() => Ok(Key::from_vec(decoded)),
        _ => Err(ErrorKind::BadFormat("error decoding key")),
    }
}

/// Parses the meta command `name` whose line (`line_len` bytes with its end) starts `buf`;
/// `tokens` are the line's tokens after the name.
pub(crate) fn parse(
    name: &[u8],
    mut tokens: Tokens,
    buf: &[u8],
    line_len: usize,
    limits: &Limits,
) -> Parsed {
    let code = match name {
        b"mg" => MetaCode::Get,
        b"ms" => MetaCode::Set,
        b"md" => MetaCode::Delete,
        b"mn" => MetaCode::Noop,
        b"me" => MetaCode::Debug,
        _ => MetaCode::Arithmetic,
    };
    let refuse = |kind: ErrorKind| invalid(line_len, 0, kind, MetaStyle::new(code));
    if code == MetaCode::Noop {
        return accepted(line_len, Command::Noop, MetaStyle::new(code));
    }
    if tokens.clone().count() + 1 > MAX_TOKENS {
        return refuse(ErrorKind::BadFormat("options flags are too long"));
    }
    let Some(key) = tokens.next() else {
        return refuse(BAD_FORMAT);
    };
    match code {
        MetaCode::Set => parse_set(key, tokens, buf, line_len, limits),
        MetaCode::Arithmetic => refuse(ErrorKind::NonNumeric),
        _ => parse_keyed(code, key, tokens, line_len),
    }
}

fn accepted(consumed: usize, command: Command, style: MetaStyle) -> Parsed {
    Parsed::Command {
        consumed,
        command,
        style: ReplyStyle::Meta(style),
    }
}

fn invalid(consumed: usize, skip: usize, kind: ErrorKind, style: MetaStyle) -> Parsed {
    Parsed::Invalid {
        consumed,
        skip,
        reply: Reply::Error(kind),
        close: false,
        style: ReplyStyle::Meta(style),
    }
}

/// The style the flags ask for: what is echoed, and whether anything is suppressed.
fn style_of(code: MetaCode, flags: &Flags, key: &[u8]) -> MetaStyle {
    MetaStyle {
        code,
        quiet: flags.quiet,
        value: flags.value,
        base64: flags.base64,
        returns: flags.returns,
        opaque: flags.opaque,
        key: if flags.returns.as_slice().contains(&b'k') {
            Key::from_slice(key)
        } else {
            Key::new()
        },
        size: 0,
    }
}

/// `mg`, `md` and `me`: a key and flags, no body.
fn parse_keyed(code: MetaCode, token: &[u8], tokens: Tokens, line_len: usize) -> Parsed {
    let plain = |kind| invalid(line_len, 0, kind, MetaStyle::new(code));
    let flags = match parse_flags(tokens, code) {
        Ok(flags) => flags,
        Err(kind) => return plain(kind),
    };
    let key = match key_bytes(token, flags.base64) {
        Ok(key) => key,
        Err(kind) => return plain(kind),
    };
    let style = style_of(code, &flags, &key);
    let refuse = |kind| invalid(line_len, 0, kind, style_of(code, &flags, &key));
    let command = match code {
        MetaCode::Get => {
            if flags.lease {
                return refuse(UNSUPPORTED);
            }
            let read = if flags.base64 {
                memcache::parse_binary_read(&key, flags.cas)
            } else {
                memcache::parse_read(&key, flags.cas)
            };
            let mut read = match read {
                Ok(read) => read,
                Err(kind) => return refuse(kind),
            };
            if !flags.value {
                // Without `v` no message is returned, so none is taken: a peek, or a key that
                // only closes or aborts.
                if read.open {
                    return refuse(ErrorKind::BadFormat("bad option combination"));
                }
                read.peek |= !read.close && !read.abort;
            }
            Command::Get(smallvec![read])
        }
        MetaCode::Delete => {
            if flags.invalidate {
                return refuse(UNSUPPORTED);
            }
            if flags.compare_cas {
                return refuse(ErrorKind::Exists);
            }
            let queue = key.to_vec();
            if flags.remove_value {
                Command::Flush {
                    queue,
                    noreply: false,
                }
            } else {
                Command::Delete {
                    queue,
                    noreply: false,
                }
            }
        }
        _ => {
            let mut read = Read::take(&key);
            read.peek = true;
            read.cas = true;
            Command::Get(smallvec![read])
        }
    };
    accepted(line_len, command, style)
}

/// `ms <key> <datalen> <flags>*` and its data block.
fn parse_set(
    key: &[u8],
    mut tokens: Tokens,
    buf: &[u8],
    line_len: usize,
    limits: &Limits,
) -> Parsed {
    let style = MetaStyle::new(MetaCode::Set);
    let Some(bytes) = tokens
        .next()
        .and_then(|token| memcache::parse_number::<usize>(token).ok())
    else {
        return invalid(line_len, 0, BAD_FORMAT, style);
    };
    if bytes > MAX_SKIP {
        // No client sends this much in one set: the stream cannot be trusted to resync.
        return Parsed::Invalid {
            consumed: line_len,
            skip: 0,
            reply: Reply::Error(BAD_FORMAT),
            close: true,
            style: ReplyStyle::Meta(style),
        };
    }
    // From here on the length is known: a refused line's data block is discarded unread.
    let discard = |kind, style| invalid(line_len, bytes + 2, kind, style);
    let flags = match parse_flags(tokens, MetaCode::Set) {
        Ok(flags) => flags,
        Err(kind) => return discard(kind, style),
    };
    let queue = match key_bytes(key, flags.base64) {
        Ok(queue) => queue,
        Err(kind) => return discard(kind, style),
    };
    let mut style = style_of(MetaCode::Set, &flags, &queue);
    style.size = bytes;
    match flags.mode {
        None | Some(b'S' | b'R') => {}
        Some(b'E' | b'A' | b'P') => return discard(ErrorKind::NotStored, style),
        Some(_) => {
            let kind = ErrorKind::BadFormat("invalid mode for ms M token");
            return discard(kind, MetaStyle::new(MetaCode::Set));
        }
    }
    if flags.compare_cas {
        return discard(ErrorKind::Exists, style);
    }
    if bytes > limits.max_message_size {
        return discard(ErrorKind::MessageTooLarge, MetaStyle::new(MetaCode::Set));
    }
    let end = line_len + bytes + 2;
    if buf.len() < end {
        return Parsed::NeedMore;
    }
    if &buf[end - 2..end] != b"\r\n" {
        return invalid(
            end,
            0,
            ErrorKind::BadDataChunk,
            MetaStyle::new(MetaCode::Set),
        );
    }
    let set = Set {
        queue,
        flags: flags.client_flags,
        exptime: flags.ttl,
        body: buf[line_len..end - 2].to_vec(),
        noreply: flags.quiet,
    };
    accepted(end, Command::Set(set), style)
}

/// Appends the meta spelling of `reply` to a request parsed with `style`.
pub fn encode(reply: &Reply, style: &MetaStyle, out: &mut Vec<u8>) {
    match (style.code, reply) {
        (_, Reply::Error(ErrorKind::NotStored)) => status(out, b"NS", style, None),
        (_, Reply::Error(ErrorKind::Exists)) => status(out, b"EX", style, None),
        (_, Reply::Closing) => {}
        (MetaCode::Get, Reply::Values(values)) => match values.first() {
            Some(value) if style.value => {
                out.extend_from_slice(b"VA ");
                out.extend_from_slice(value.body.len().to_string().as_bytes());
                returned_flags(out, style, Some(value));
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&value.body);
                out.extend_from_slice(b"\r\n");
            }
            Some(value) => status(out, b"HD", style, Some(value)),
            None if style.quiet => {}
            None => status(out, b"EN", style, None),
        },
        (MetaCode::Debug, Reply::Values(values)) => match values.first() {
            Some(value) => debug_line(out, style, value),
            None => out.extend_from_slice(b"EN\r\n"),
        },
        (MetaCode::Set, Reply::Stored) | (MetaCode::Delete, Reply::Deleted | Reply::End) => {
            if !style.quiet {
                status(out, b"HD", style, None);
            }
        }
        (MetaCode::Delete, Reply::NotFound) => status(out, b"NF", style, None),
        (MetaCode::Noop, Reply::Noop) => out.extend_from_slice(b"MN\r\n"),
        // Errors, and anything a meta command cannot be answered with, as in text.
        _ => memcache::encode(reply, out),
    }
}

/// `<code> <flags>*\r\n`.
fn status(out: &mut Vec<u8>, code: &[u8], style: &MetaStyle, value: Option<&Value>) {
    out.extend_from_slice(code);
    returned_flags(out, style, value);
    out.extend_from_slice(b"\r\n");
}

/// The flags the request asked back, each after a space, in its order. Without a message (a
/// miss, a store, a delete) only what the request itself holds is returned, as memcached does:
/// `O`, `k`, and for `ms` `c0` and `s<size>`.
fn returned_flags(out: &mut Vec<u8>, style: &MetaStyle, value: Option<&Value>) {
    for &flag in style.returns.as_slice() {
        match (flag, value) {
            (b'O', _) => {
                out.push(b' ');
                out.extend_from_slice(&style.opaque.bytes[..style.opaque.len as usize]);
            }
            (b'k', _) => {
                out.extend_from_slice(b" k");
                push_key(out, style);
                if style.base64 {
                    out.extend_from_slice(b" b");
                }
            }
            (b's', Some(value)) => number(out, b's', value.body.len() as u64),
            (b's', None) if style.code == MetaCode::Set => number(out, b's', style.size as u64),
            (b'c', Some(value)) => number(out, b'c', value.cas.unwrap_or(0)),
            (b'c', None) if style.code == MetaCode::Set => number(out, b'c', 0),
            (b'f', Some(value)) => number(out, b'f', u64::from(value.flags)),
            (b't', Some(_)) => out.extend_from_slice(b" t-1"),
            (b'l', Some(_)) => number(out, b'l', 0),
            (b'h', Some(_)) => number(out, b'h', 0),
            _ => {}
        }
    }
}

fn push_key(out: &mut Vec<u8>, style: &MetaStyle) {
    if style.base64 {
        base64::encode(&style.key, out);
    } else {
        out.extend_from_slice(&style.key);
    }
}

/// ` <flag><n>`.
fn number(out: &mut Vec<u8>, flag: u8, n: u64) {
    out.push(b' ');
    out.push(flag);
    out.extend_from_slice(n.to_string().as_bytes());
}

/// `ME <key> exp=-1 la=0 cas=<seq> fetch=no cls=1 size=<bytes>\r\n`: memcached's fields, with
/// what a queue's head message has of them.
fn debug_line(out: &mut Vec<u8>, style: &MetaStyle, value: &Value) {
    out.extend_from_slice(b"ME ");
    if style.base64 {
        base64::encode(&value.key, out);
    } else {
        out.extend_from_slice(&value.key);
    }
    out.extend_from_slice(
        format!(
            " exp=-1 la=0 cas={} fetch=no cls=1 size={}\r\n",
            value.cas.unwrap_or(0),
            value.body.len()
        )
        .as_bytes(),
    );
}

#[cfg(test)]
#[path = "meta_tests.rs"]
mod tests;
