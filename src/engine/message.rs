//! How a message is stored: a small fixed header (flags, expiry, enqueue time) before the body.
//! Expiry is an absolute time here; the memcache exptime rule that yields it belongs to the
//! protocol side (`protocol::command::Set::expires_at`).

/// Layout version of the stored value.
const VERSION: u8 = 1;
/// version (1) + flags (4) + expires_at ms (8) + enqueued_at ms (8).
pub const HEADER_LEN: usize = 21;

/// A stored message's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub flags: u32,
    /// Unix milliseconds after which the message is never delivered; 0 = never expires.
    pub expires_at: u64,
    /// Unix milliseconds when it was committed.
    pub enqueued_at: u64,
}

impl Header {
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.is_expired_by(|| now_ms)
    }

    /// `is_expired`, reading the clock only for a message that expires.
    pub fn is_expired_by(&self, now_ms: impl FnOnce() -> u64) -> bool {
        self.expires_at != 0 && now_ms() >= self.expires_at
    }
}

/// Encodes header and body into one stored value, in a reused buffer (replacing what it held),
/// for a writer that stages many.
pub fn encode_into(value: &mut Vec<u8>, header: &Header, body: &[u8]) {
    value.clear();
    value.reserve(HEADER_LEN + body.len());
    value.push(VERSION);
    value.extend_from_slice(&header.flags.to_be_bytes());
    value.extend_from_slice(&header.expires_at.to_be_bytes());
    value.extend_from_slice(&header.enqueued_at.to_be_bytes());
    value.extend_from_slice(body);
}

/// Splits a stored value into header and body; `None` if it is not one of ours.
pub fn decode(value: &[u8]) -> Option<(Header, &[u8])> {
    if value.len() < HEADER_LEN || value[0] != VERSION {
        return None;
    }
    let u64_at = |at: usize| u64::from_be_bytes(value[at..at + 8].try_into().unwrap());
    let header = Header {
        flags: u32::from_be_bytes(value[1..5].try_into().unwrap()),
        expires_at: u64_at(5),
        enqueued_at: u64_at(13),
    };
    Some((header, &value[HEADER_LEN..]))
}

/// Milliseconds since the unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let header = Header {
            flags: 0xdead_beef,
            expires_at: 7,
            enqueued_at: 9,
        };
        let mut value = Vec::new();
        encode_into(&mut value, &header, b"body");
        assert_eq!(decode(&value), Some((header, &b"body"[..])));
        assert_eq!(decode(b"short"), None);
    }
}
