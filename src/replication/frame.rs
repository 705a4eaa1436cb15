//! Raft messages on a TCP stream between nodes: each a 4-byte big-endian length, then the
//! protobuf-encoded `eraftpb.Message`. Nothing a peer sends can make a reader allocate more than
//! it actually received, or panic.

use std::io::{self, Read};

use protobuf::Message as _;
use raft::prelude::Message;

/// Largest frame accepted: a message holds at least one entry whatever `max_size_per_msg`
/// says, and an entry may be a large write batch (plan step 4).
pub const MAX_FRAME: usize = 128 << 20;

/// Appends `message`'s frame to `out`.
pub fn encode(message: &Message, out: &mut Vec<u8>) -> io::Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    message
        .write_to_vec(out)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let len = out.len() - start - 4;
    if len > MAX_FRAME {
        out.truncate(start);
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a raft message of {len} bytes is over the {MAX_FRAME}-byte limit"),
        ));
    }
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Reads one frame: `Ok(None)` at a clean end of stream (between frames).
pub fn read(stream: &mut impl Read) -> io::Result<Option<Message>> {
    let mut len = [0; 4];
    match stream.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes is over the {MAX_FRAME}-byte limit"),
        ));
    }
    // Grown as bytes arrive, not allocated from the length a peer claims.
    let mut body = Vec::with_capacity(len.min(64 << 10));
    stream.take(len as u64).read_to_end(&mut body)?;
    if body.len() < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Message::parse_from_bytes(&body)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use raft::prelude::{Entry, MessageType};

    use super::*;

    #[test]
    fn frames_round_trip_and_bad_ones_are_errors_not_panics() {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgAppend);
        message.to = 2;
        message.from = 1;
        message.term = 7;
        message.entries = vec![Entry {
            index: 5,
            term: 7,
            data: b"payload".to_vec().into(),
            ..Default::default()
        }]
        .into();
        let mut bytes = Vec::new();
        encode(&message, &mut bytes).unwrap();
        encode(&message, &mut bytes).unwrap();
        let mut reader = &bytes[..];
        assert_eq!(read(&mut reader).unwrap().as_ref(), Some(&message));
        assert_eq!(read(&mut reader).unwrap().as_ref(), Some(&message));
        assert_eq!(read(&mut reader).unwrap(), None);

        // Cut inside a frame.
        assert!(read(&mut &bytes[..bytes.len() / 2 - 1]).is_err());
        // A length over the limit: refused before reading (or allocating) anything.
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(read(&mut &huge[..]).is_err());
        // A claimed length far beyond what follows.
        let mut short = (100_000u32).to_be_bytes().to_vec();
        short.extend_from_slice(&[1, 2, 3]);
        assert!(read(&mut &short[..]).is_err());
        // Garbage that is no protobuf message.
        let mut garbage = 4u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[0xff; 4]);
        assert!(read(&mut &garbage[..]).is_err());
    }
}
