//! Small blocking clients for both protocols, and a one-shot HTTP GET for the monitoring
//! endpoints, for the command line, the bench tool and tests. They speak exactly what
//! `protocol-spec/` says, one request at a time.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};

use crate::protocol::mqmq;

fn protocol_error(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// An mqmq client: `Put`, `Get`, `Info`, `Quit`.
pub struct MqmqClient {
    stream: BufReader<TcpStream>,
}

impl MqmqClient {
    pub fn connect(addr: impl ToSocketAddrs) -> io::Result<MqmqClient> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(MqmqClient {
            stream: BufReader::new(stream),
        })
    }

    /// Sends one frame and reads the reply frame's values.
    pub fn request(&mut self, values: &[&[u8]]) -> io::Result<Vec<Vec<u8>>> {
        let mut frame = Vec::new();
        mqmq::frame(&mut frame, values);
        self.stream.get_mut().write_all(&frame)?;
        self.read_reply()
    }

    fn read_reply(&mut self) -> io::Result<Vec<Vec<u8>>> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > mqmq::MAX_FRAME {
            return Err(protocol_error(format!("reply frame of {len} bytes")));
        }
        let mut frame = (len as u32).to_be_bytes().to_vec();
        frame.resize(4 + len, 0);
        self.stream.read_exact(&mut frame[4..])?;
        mqmq::decode_frame(&frame)
            .map(|(_, values)| values)
            .ok_or_else(|| protocol_error("malformed reply frame"))
    }

    fn expect_ok(reply: Vec<Vec<u8>>) -> io::Result<Vec<Vec<u8>>> {
        match reply.first().map(Vec::as_slice) {
            Some(b"OK") => Ok(reply),
            Some(b"Error") => Err(protocol_error(format!(
                "server error {}",
                String::from_utf8_lossy(reply.get(1).map(Vec::as_slice).unwrap_or_default())
            ))),
            _ => Err(protocol_error("unexpected reply")),
        }
    }

    pub fn put(&mut self, queue: &[u8], body: &[u8]) -> io::Result<()> {
        Self::expect_ok(self.request(&[b"Put", queue, body])?).map(drop)
    }

    /// Takes a message, waiting up to `timeout_ms`; `None` on timeout.
    pub fn get(&mut self, queue: &[u8], timeout_ms: u64) -> io::Result<Option<Vec<u8>>> {
        let timeout = timeout_ms.to_string();
        let reply = self.request(&[b"Get", queue, timeout.as_bytes()])?;
        if reply.first().map(Vec::as_slice) == Some(b"Timeout") {
            return Ok(None);
        }
        let mut reply = Self::expect_ok(reply)?;
        reply
            .get_mut(1)
            .map(std::mem::take)
            .map(Some)
            .ok_or_else(|| protocol_error("OK without a body"))
    }

    /// The raw JSON `Info` returns.
    pub fn info(&mut self) -> io::Result<String> {
        let reply = Self::expect_ok(self.request(&[b"Info"])?)?;
        Ok(
            String::from_utf8_lossy(reply.get(1).map(Vec::as_slice).unwrap_or_default())
                .into_owned(),
        )
    }

    pub fn quit(mut self) -> io::Result<()> {
        let mut frame = Vec::new();
        mqmq::frame(&mut frame, &[b"Quit"]);
        self.stream.get_mut().write_all(&frame)
    }
}

/// A memcache text client with MemcacheQ's meaning.
pub struct MemcacheClient {
    stream: BufReader<TcpStream>,
}

impl MemcacheClient {
    pub fn connect(addr: impl ToSocketAddrs) -> io::Result<MemcacheClient> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(MemcacheClient {
            stream: BufReader::new(stream),
        })
    }

    /// Sends raw bytes without waiting for anything.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.get_mut().write_all(bytes)
    }

    /// Reads one reply line, without its `\r\n`.
    pub fn line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.stream.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    pub fn set(&mut self, queue: &str, body: &[u8]) -> io::Result<()> {
        let mut request = format!("set {queue} 0 0 {}\r\n", body.len()).into_bytes();
        request.extend_from_slice(body);
        request.extend_from_slice(b"\r\n");
        self.send(&request)?;
        match self.line()?.as_str() {
            "STORED" => Ok(()),
            other => Err(protocol_error(other)),
        }
    }

    /// `get <key>`: the body of the one message, if any.
    pub fn get(&mut self, key: &str) -> io::Result<Option<Vec<u8>>> {
        self.send(format!("get {key}\r\n").as_bytes())?;
        let line = self.line()?;
        if line == "END" {
            return Ok(None);
        }
        let len: usize = line
            .strip_prefix("VALUE ")
            .and_then(|rest| rest.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| protocol_error(line.clone()))?;
        let mut body = vec![0u8; len + 2];
        self.stream.read_exact(&mut body)?;
        body.truncate(len);
        match self.line()?.as_str() {
            "END" => Ok(Some(body)),
            other => Err(protocol_error(other)),
        }
    }
}

/// Most bytes of an HTTP response body `http_get` accepts.
const MAX_HTTP_BODY: usize = 64 << 20;

/// `GET path` on a fresh connection (`Connection: close`): the status code and the body.
/// Enough for mqd's own endpoints (`protocol-spec/http.md`): a `Content-Length` body, no
/// chunked encoding.
pub fn http_get(addr: &str, path: &str) -> io::Result<(u16, Vec<u8>)> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut stream = BufReader::new(stream);
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.get_mut().write_all(request.as_bytes())?;
    let mut line = String::new();
    stream.read_line(&mut line)?;
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| protocol_error(format!("not an HTTP response: {line:?}")))?;
    let mut length = None;
    loop {
        line.clear();
        if stream.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let header = line.trim_end_matches(['\r', '\n']);
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
        }
    }
    let length = length.ok_or_else(|| protocol_error("response without Content-Length"))?;
    if length > MAX_HTTP_BODY {
        return Err(protocol_error(format!("response body of {length} bytes")));
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body)?;
    Ok((status, body))
}
