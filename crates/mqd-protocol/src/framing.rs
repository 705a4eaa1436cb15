//! A connection's request framing, without the connection: which protocol its first byte chose,
//! the request at the front of its input, and how much of a refused request's body is still to be
//! discarded unread. Pure, so the fuzz targets can feed it any byte stream cut at any points and
//! check that the requests come out the same, and that no request needs more buffered input than
//! [`input_limit`].

use super::{
    binary, memcache, mqmq, sniff, ErrorKind, Limits, Parsed, Protocol, Reply, ReplyStyle,
};

/// Most bytes a connection buffers before it must have a complete request: the largest body
/// plus the longest `get` line and headers. A binary request is at most a 24-byte header, 8 bytes
/// of extras and a 250-byte key more than its body: anything larger is refused from its header.
pub fn input_limit(limits: &Limits) -> usize {
    limits.max_message_size + memcache::MAX_GET_LINE + 4096
}

/// One connection's framing state.
#[derive(Debug, Default)]
pub struct Framer {
    protocol: Option<Protocol>,
    /// Bytes of a refused request still to discard as they arrive.
    skip: usize,
}

impl Framer {
    pub fn new() -> Framer {
        Framer::default()
    }

    /// The connection's protocol, once its first byte arrived.
    pub fn protocol(&self) -> Option<Protocol> {
        self.protocol
    }

    /// How many of the `available` bytes at the front of the input to drop unread: what is left
    /// of a refused request's body.
    pub fn discard(&mut self, available: usize) -> usize {
        let n = self.skip.min(available);
        self.skip -= n;
        n
    }

    /// A refused request's body is still arriving.
    pub fn skipping(&self) -> bool {
        self.skip > 0
    }

    /// The connection's protocol, fixed by the first byte of `buf` if it is not yet: `Ok(None)`
    /// while nothing arrived, `Err(byte)` if that byte starts no protocol (close the connection).
    pub fn sniff(&mut self, buf: &[u8]) -> Result<Option<Protocol>, u8> {
        if let Some(protocol) = self.protocol {
            return Ok(Some(protocol));
        }
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        Ok(Some(*self.protocol.insert(sniff(first).ok_or(first)?)))
    }

    /// The request at the front of `buf` (call after [`Framer::discard`]). The first byte ever
    /// seen fixes the protocol; `Err(byte)` if it starts none, and the connection must close.
    pub fn parse(&mut self, buf: &[u8], limits: &Limits) -> Result<Parsed, u8> {
        let Some(protocol) = self.sniff(buf)? else {
            return Ok(Parsed::NeedMore);
        };
        Ok(match protocol {
            Protocol::Memcache => memcache::parse(buf, limits),
            Protocol::MemcacheBinary => binary::parse(buf, limits),
            Protocol::Mqmq => mqmq::parse(buf, limits),
            // HTTP requests are not queue commands: the connection layer answers them with
            // `http::parse` once `sniff` says HTTP. Asked for a command anyway, the framer
            // ends the connection.
            Protocol::Http => Parsed::Invalid {
                consumed: buf.len(),
                skip: 0,
                reply: Reply::Error(ErrorKind::UnknownCommand),
                close: true,
                style: ReplyStyle::Text,
            },
        })
    }

    /// How many bytes the request at the front of `buf` takes in all, when its header says so
    /// (a `set` line, an mqmq frame length): a connection buffers room for all of it at once.
    /// None when not known (yet).
    pub fn request_len(&self, buf: &[u8]) -> Option<usize> {
        if self.skipping() {
            return None;
        }
        // The first request counts too: its first byte says the protocol before `parse` fixes it.
        let protocol = match self.protocol {
            Some(protocol) => protocol,
            None => sniff(*buf.first()?)?,
        };
        match protocol {
            Protocol::Memcache => memcache::request_len(buf),
            Protocol::MemcacheBinary => binary::request_len(buf),
            Protocol::Mqmq => mqmq::request_len(buf),
            Protocol::Http => None,
        }
    }

    /// The caller acted on `parsed` and dropped its `consumed` bytes: a refused request's
    /// announced body is discarded from now on.
    pub fn used(&mut self, parsed: &Parsed) {
        if let Parsed::Invalid { skip, .. } = parsed {
            self.skip = *skip;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Command, ErrorKind, Reply};

    const LIMITS: Limits = Limits {
        max_message_size: 16,
    };

    #[test]
    fn the_first_byte_fixes_the_protocol() {
        let mut framer = Framer::new();
        assert_eq!(framer.parse(b" x", &LIMITS), Err(b' '));
        let mut framer = Framer::new();
        assert_eq!(framer.parse(b"", &LIMITS), Ok(Parsed::NeedMore));
        assert!(matches!(
            framer.parse(b"version\r\n", &LIMITS),
            Ok(Parsed::Command {
                command: Command::Version,
                ..
            })
        ));
        assert_eq!(framer.protocol(), Some(Protocol::Memcache));
        let mut framer = Framer::new();
        assert_eq!(framer.sniff(b""), Ok(None));
        assert_eq!(framer.sniff(b"GET / HTTP/1.1"), Ok(Some(Protocol::Http)));
        assert_eq!(
            framer.sniff(b"\x00"),
            Ok(Some(Protocol::Http)),
            "fixed for life"
        );
    }

    #[test]
    fn the_length_of_a_request_with_a_body_is_known_from_its_header() {
        let mut framer = Framer::new();
        assert_eq!(
            framer.request_len(b"set q 0 0 5\r\nhe"),
            Some(20),
            "the first request, before the protocol is fixed"
        );
        assert_eq!(framer.protocol(), None, "asking fixes nothing");
        assert_eq!(framer.request_len(b""), None);
        assert_eq!(framer.request_len(b" x"), None, "no protocol starts so");
        framer.sniff(b"s").unwrap();
        assert_eq!(framer.request_len(b"set q 0 0 5\r\nhe"), Some(20));
        assert_eq!(framer.request_len(b"set q 0 0 5 noreply\r\n"), Some(28));
        assert_eq!(
            framer.request_len(b"set q 0 0 5"),
            None,
            "line not complete"
        );
        assert_eq!(framer.request_len(b"get q\r\n"), None, "no body");
        assert_eq!(framer.request_len(b"set q 0 0 x\r\n"), None);
        assert_eq!(framer.request_len(b"ms q 5 F3\r\nhe"), Some(18));
        assert_eq!(framer.request_len(b"ms q 5"), None, "line not complete");
        assert_eq!(framer.request_len(b"mg q v\r\n"), None, "no body");
        let mut framer = Framer::new();
        framer.sniff(&[0x80]).unwrap();
        let mut header = [0u8; 24];
        header[0] = 0x80;
        header[1] = 0x01; // SET
        header[3] = 1; // key length
        header[4] = 8; // extras length
        header[8..12].copy_from_slice(&14u32.to_be_bytes());
        assert_eq!(framer.request_len(&header), Some(38));
        assert_eq!(
            framer.request_len(&header[..23]),
            None,
            "header not complete"
        );
        header[8..12].copy_from_slice(&4u32.to_be_bytes());
        assert_eq!(
            framer.request_len(&header),
            None,
            "extras and key overrun the body"
        );
        header[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(framer.request_len(&header), None, "a body no client sends");
        let mut framer = Framer::new();
        framer.sniff(&[0]).unwrap();
        assert_eq!(framer.request_len(&[0, 0, 1, 0]), Some(260));
        assert_eq!(framer.request_len(&[0, 0]), None);
    }

    #[test]
    fn a_refused_body_is_discarded_as_it_arrives() {
        let mut framer = Framer::new();
        let parsed = framer.parse(b"set q 0 0 20\r\n", &LIMITS).unwrap();
        assert!(matches!(
            parsed,
            Parsed::Invalid {
                consumed: 14,
                skip: 22,
                reply: Reply::Error(ErrorKind::MessageTooLarge),
                close: false,
                ..
            }
        ));
        framer.used(&parsed);
        assert_eq!(framer.discard(10), 10);
        assert!(framer.skipping());
        assert_eq!(framer.discard(100), 12);
        assert!(!framer.skipping());
    }

    #[test]
    fn a_refused_binary_body_is_discarded_and_the_next_request_read() {
        let mut framer = Framer::new();
        // SET q, 8 bytes of extras, a 20-byte value: over the 16-byte limit.
        let mut stream = vec![0x80, 0x01, 0, 1, 8, 0, 0, 0, 0, 0, 0, 29];
        stream.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0]);
        stream.extend_from_slice(&[0; 8]);
        stream.push(b'q');
        stream.extend_from_slice(&[b'x'; 20]);
        let noop = [
            0x80, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        stream.extend_from_slice(&noop);
        let parsed = framer.parse(&stream[..24], &LIMITS).unwrap();
        assert!(matches!(
            parsed,
            Parsed::Invalid {
                consumed: 24,
                skip: 29,
                reply: Reply::Error(ErrorKind::MessageTooLarge),
                close: false,
                ..
            }
        ));
        assert_eq!(framer.protocol(), Some(Protocol::MemcacheBinary));
        framer.used(&parsed);
        assert_eq!(framer.discard(stream.len() - 24), 29);
        let parsed = framer.parse(&stream[24 + 29..], &LIMITS).unwrap();
        assert!(matches!(
            parsed,
            Parsed::Command {
                consumed: 24,
                command: Command::Noop,
                ..
            }
        ));
    }

    #[test]
    fn no_binary_request_needs_more_than_the_input_limit() {
        let mut framer = Framer::new();
        // The largest accepted SET: 250-byte key, a value at the limit; one byte short.
        let body = 8 + 250 + LIMITS.max_message_size;
        let mut stream = vec![0x80, 0x01, 0, 250, 8, 0, 0, 0];
        stream.extend_from_slice(&(body as u32).to_be_bytes());
        stream.extend_from_slice(&[0; 12]);
        stream.resize(24 + body - 1, b'k');
        assert_eq!(framer.parse(&stream, &LIMITS), Ok(Parsed::NeedMore));
        assert!(stream.len() < input_limit(&LIMITS));
    }
}
