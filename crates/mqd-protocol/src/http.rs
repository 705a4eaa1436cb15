//! The HTTP/1.1 subset mqd serves for monitoring: request heads in, responses out. Pure, like
//! the other codecs: no I/O, no clock, no knowledge of what the endpoints say.
//!
//! Only what `GET` and `HEAD` need is understood: the request line, `Connection` (keep-alive
//! or close) and whether a body follows (`Content-Length`, `Transfer-Encoding`). Bodies are
//! never read: a request that announces one is answered and its connection closed. A head may
//! not exceed [`MAX_HEAD`] bytes; the limit is checked on what arrived, before anything is
//! kept, so a peer cannot make the server buffer more.

/// Most bytes of one request head (request line, headers, the empty line).
pub const MAX_HEAD: usize = 8 << 10;

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    /// Any other well-formed method: answered 405.
    Other,
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: Method,
    /// The target's path, without its query string.
    pub path: &'a str,
    /// The connection stays open after the response.
    pub keep_alive: bool,
    /// HTTP/1.1 (keep-alive by default) rather than HTTP/1.0 (close by default).
    pub http11: bool,
    /// A body follows the head (it is not read: the connection is closed after the response).
    pub has_body: bool,
}

/// The outcome of parsing the front of a connection's input.
#[derive(Debug, PartialEq, Eq)]
pub enum ParsedHead<'a> {
    /// No complete head yet, and still under the limit.
    NeedMore,
    /// A complete head occupying the first `consumed` bytes.
    Request {
        consumed: usize,
        request: Request<'a>,
    },
    /// A malformed or oversized head: answer with this status and close.
    Invalid(Status),
}

/// The statuses mqd answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    HeaderFieldsTooLarge,
    VersionNotSupported,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::HeaderFieldsTooLarge => 431,
            Status::VersionNotSupported => 505,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::HeaderFieldsTooLarge => "Request Header Fields Too Large",
            Status::VersionNotSupported => "HTTP Version Not Supported",
        }
    }
}

/// Parses the request head at the front of `buf`.
pub fn parse(buf: &[u8]) -> ParsedHead<'_> {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let Some(end) = head_end(window) else {
        // A bad request line is refused as soon as it is complete (`GET q` from a memcache
        // client typing in capitals), not after the head limit.
        if let Some(line_end) = window.iter().position(|&b| b == b'\n') {
            if let Err(status) = request_line(strip_cr(&window[..line_end])) {
                return ParsedHead::Invalid(status);
            }
        }
        return if buf.len() >= MAX_HEAD {
            ParsedHead::Invalid(Status::HeaderFieldsTooLarge)
        } else {
            ParsedHead::NeedMore
        };
    };
    match parse_head(&buf[..end]) {
        Ok(request) => ParsedHead::Request {
            consumed: end,
            request,
        },
        Err(status) => ParsedHead::Invalid(status),
    }
}

/// Where the head ends (just past its empty line), if it has. Lines end in CRLF; a bare LF is
/// accepted too, as RFC 9112 allows.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (at, &byte) in buf.iter().enumerate() {
        if byte == b'\n' {
            let line = &buf[line_start..at];
            if line.is_empty() || line == b"\r" {
                return Some(at + 1);
            }
            line_start = at + 1;
        }
    }
    None
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn parse_head(head: &[u8]) -> Result<Request<'_>, Status> {
    let mut lines = head.split(|&b| b == b'\n').map(strip_cr);
    let (method, path, http11) = request_line(lines.next().ok_or(Status::BadRequest)?)?;
    let mut keep_alive = http11;
    let mut has_body = false;
    for line in lines.filter(|line| !line.is_empty()) {
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(Status::BadRequest)?;
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
            return Err(Status::BadRequest);
        }
        if name.eq_ignore_ascii_case(b"connection") {
            for option in value.split(|&b| b == b',').map(trim) {
                if option.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if option.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return Err(Status::BadRequest);
            }
            has_body |= value.iter().any(|&b| b != b'0');
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            has_body = true;
        }
    }
    if has_body {
        keep_alive = false;
    }
    Ok(Request {
        method,
        path,
        keep_alive,
        http11,
        has_body,
    })
}

/// Splits the request line into its method, its target's path, and whether it is HTTP/1.1.
fn request_line(line: &[u8]) -> Result<(Method, &str, bool), Status> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Status::BadRequest);
    };
    if method.is_empty() || !method.iter().all(u8::is_ascii_uppercase) {
        return Err(Status::BadRequest);
    }
    let method = match method {
        b"GET" => Method::Get,
        b"HEAD" => Method::Head,
        _ => Method::Other,
    };
    let http11 = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        v if v.starts_with(b"HTTP/") && v.len() == 8 && v[6] == b'.' => {
            return Err(Status::VersionNotSupported)
        }
        _ => return Err(Status::BadRequest),
    };
    if target.first() != Some(&b'/') || !target.iter().all(|&b| b.is_ascii_graphic()) {
        return Err(Status::BadRequest);
    }
    let target = std::str::from_utf8(target).map_err(|_| Status::BadRequest)?;
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Ok((method, path, http11))
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != b' ' && b != b'\t');
    let end = bytes.iter().rposition(|&b| b != b' ' && b != b'\t');
    match (start, end) {
        (Some(start), Some(end)) => &bytes[start..=end],
        _ => &[],
    }
}

/// RFC 9110 `tchar`.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A response to encode.
pub struct Response<'a> {
    pub status: Status,
    pub content_type: &'a str,
    pub body: &'a [u8],
    /// Send the headers only (`HEAD`); `Content-Length` still says what `GET` would send.
    pub head_only: bool,
    /// The connection closes after this response: `Connection: close`. Otherwise an HTTP/1.0
    /// client (for which closing is the default) is told `Connection: keep-alive`.
    pub close: bool,
    /// The request was HTTP/1.1.
    pub http11: bool,
}

/// How a response's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLength {
    /// `Content-Length`: the body was rendered whole before the head.
    Known(usize),
    /// `Transfer-Encoding: chunked` (HTTP/1.1): the body follows as [`encode_chunk`]s and ends
    /// with [`LAST_CHUNK`]. For bodies rendered while the client reads them.
    Chunked,
    /// Neither header: the body ends when the server closes the connection (HTTP/1.0's way,
    /// for a body too large to render before the head).
    UntilClose,
}

/// The end of a chunked body (RFC 9112 7.1): a chunk of size 0 and no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Appends `response` to `out`.
pub fn encode(response: &Response, out: &mut Vec<u8>) {
    encode_head(
        response.status,
        response.content_type,
        BodyLength::Known(response.body.len()),
        response.close,
        response.http11,
        out,
    );
    if !response.head_only {
        out.extend_from_slice(response.body);
    }
}

/// Appends a response head whose body is delimited by `length`. An [`BodyLength::UntilClose`]
/// body closes the connection, so it always says `Connection: close`.
pub fn encode_head(
    status: Status,
    content_type: &str,
    length: BodyLength,
    close: bool,
    http11: bool,
    out: &mut Vec<u8>,
) {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\n",
        status.code(),
        status.reason(),
        content_type,
    );
    match length {
        BodyLength::Known(n) => head.push_str(&format!("Content-Length: {n}\r\n")),
        BodyLength::Chunked => head.push_str("Transfer-Encoding: chunked\r\n"),
        BodyLength::UntilClose => {}
    }
    head.push_str("Cache-Control: no-store\r\n");
    if status == Status::MethodNotAllowed {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    if close || length == BodyLength::UntilClose {
        head.push_str("Connection: close\r\n");
    } else if !http11 {
        head.push_str("Connection: keep-alive\r\n");
    }
    head.push_str("\r\n");
    out.extend_from_slice(head.as_bytes());
}

/// Appends one chunk of a chunked body. An empty `data` appends nothing: a chunk of size 0
/// would end the body ([`LAST_CHUNK`] does that).
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
