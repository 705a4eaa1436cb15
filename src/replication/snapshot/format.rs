//! The bytes of a snapshot file and of its transfer, pure: no file, no socket, no RocksDB.
//!
//! A file: `MQDSNAP1`, then one record per key of the state column families, each
//! `[family u8][key length u32 BE][value length u32 BE][key][value]`, then an end record
//! `[0][record count u64 BE]`. Families: 1 `messages`, 2 `meta` (`STATE_FAMILIES`). A reader
//! allocates no more than the bytes it actually read, and refuses keys and values over limits.
//!
//! A transfer (after `SNAPSHOT_MARKER` and the `MsgSnapshot` frame): the file's length (u64
//! BE), the file, its CRC-32 (u32 BE, IEEE); the receiver answers one byte, `ACCEPTED` or not.

use std::io::{self, Read, Write};

const MAGIC: &[u8; 8] = b"MQDSNAP1";
/// The column families a snapshot holds, by their tag in the file (the index + 1).
pub const STATE_FAMILIES: [&str; 2] = ["messages", "meta"];
/// Longest key accepted (queue names are far shorter).
pub const MAX_KEY: usize = 64 << 10;
/// Longest value accepted: a message is at most a write batch, itself at most a raft frame.
pub const MAX_VALUE: usize = 128 << 20;
/// The receiver's answer once the file is on its disk.
pub const ACCEPTED: u8 = 1;

/// One key of a state column family.
#[derive(Debug, PartialEq, Eq)]
pub struct Record {
    /// Index into `STATE_FAMILIES`.
    pub family: usize,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Writes a snapshot file's records to `out`.
pub struct Writer<W: Write> {
    out: W,
    records: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W) -> io::Result<Writer<W>> {
        out.write_all(MAGIC)?;
        Ok(Writer { out, records: 0 })
    }

    pub fn record(&mut self, family: usize, key: &[u8], value: &[u8]) -> io::Result<()> {
        if family >= STATE_FAMILIES.len() || key.len() > MAX_KEY || value.len() > MAX_VALUE {
            return Err(invalid("a record over the limits"));
        }
        self.out.write_all(&[family as u8 + 1])?;
        self.out.write_all(&(key.len() as u32).to_be_bytes())?;
        self.out.write_all(&(value.len() as u32).to_be_bytes())?;
        self.out.write_all(key)?;
        self.out.write_all(value)?;
        self.records += 1;
        Ok(())
    }

    /// Writes the end record; returns the output and how many records it holds.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.out.write_all(&[0])?;
        self.out.write_all(&self.records.to_be_bytes())?;
        Ok((self.out, self.records))
    }
}

/// Reads a snapshot file's records.
pub struct Reader<R: Read> {
    input: R,
    records: u64,
    done: bool,
}

impl<R: Read> Reader<R> {
    pub fn new(mut input: R) -> io::Result<Reader<R>> {
        let mut magic = [0; 8];
        input.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(invalid("not a snapshot file"));
        }
        Ok(Reader {
            input,
            records: 0,
            done: false,
        })
    }

    /// The next record; `None` after the end record (whose count must match).
    pub fn next_record(&mut self) -> io::Result<Option<Record>> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0; 1];
        self.input.read_exact(&mut tag)?;
        if tag[0] == 0 {
            let mut count = [0; 8];
            self.input.read_exact(&mut count)?;
            if u64::from_be_bytes(count) != self.records {
                return Err(invalid("the record count does not match"));
            }
            self.done = true;
            return Ok(None);
        }
        let family = tag[0] as usize - 1;
        if family >= STATE_FAMILIES.len() {
            return Err(invalid("an unknown column family"));
        }
        let mut lengths = [0; 8];
        self.input.read_exact(&mut lengths)?;
        let key_len = u32::from_be_bytes(lengths[..4].try_into().expect("4 bytes")) as usize;
        let value_len = u32::from_be_bytes(lengths[4..].try_into().expect("4 bytes")) as usize;
        if key_len > MAX_KEY || value_len > MAX_VALUE {
            return Err(invalid("a record over the limits"));
        }
        let key = read_len(&mut self.input, key_len)?;
        let value = read_len(&mut self.input, value_len)?;
        self.records += 1;
        Ok(Some(Record { family, key, value }))
    }
}

/// Exactly `len` bytes, the buffer grown as they arrive.
fn read_len(input: &mut impl Read, len: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len.min(64 << 10));
    input.take(len as u64).read_to_end(&mut out)?;
    if out.len() < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(out)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// CRC-32 (IEEE 802.3, as zlib computes it), fed in pieces.
#[derive(Clone, Copy)]
pub struct Crc32(u32);

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

impl Default for Crc32 {
    fn default() -> Crc32 {
        Crc32(0xffff_ffff)
    }
}

impl Crc32 {
    pub fn update(&mut self, bytes: &[u8]) {
        let mut c = self.0;
        for &b in bytes {
            c = CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }

    pub fn value(&self) -> u32 {
        self.0 ^ 0xffff_ffff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(records: &[(usize, &[u8], &[u8])]) -> Vec<u8> {
        let mut writer = Writer::new(Vec::new()).unwrap();
        for (family, key, value) in records {
            writer.record(*family, key, value).unwrap();
        }
        writer.finish().unwrap().0
    }

    fn read_all(bytes: &[u8]) -> io::Result<Vec<Record>> {
        let mut reader = Reader::new(bytes)?;
        let mut out = Vec::new();
        while let Some(record) = reader.next_record()? {
            out.push(record);
        }
        Ok(out)
    }

    #[test]
    fn records_round_trip_in_order() {
        let bytes = file(&[(0, b"k1", b"v1"), (1, b"A", b""), (0, b"", b"x")]);
        let records = read_all(&bytes).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[1].family, 1);
        assert_eq!(records[1].key, b"A");
        assert_eq!(records[2].value, b"x");
        assert!(read_all(&file(&[])).unwrap().is_empty());
    }

    #[test]
    fn truncated_damaged_or_oversized_files_are_refused_without_allocating_their_claims() {
        let bytes = file(&[(0, b"k1", b"v1"), (1, b"k2", b"v2")]);
        for cut in 0..bytes.len() {
            assert!(read_all(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut wrong_count = bytes.clone();
        *wrong_count.last_mut().unwrap() = 9;
        assert!(read_all(&wrong_count).is_err());
        let mut unknown_family = bytes.clone();
        unknown_family[8] = 7;
        assert!(read_all(&unknown_family).is_err());
        // A value that claims 4 GiB and has 2 bytes: refused before any allocation.
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&[1, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, b'k', b'v', b'v']);
        assert!(read_all(&huge).is_err());
        let mut writer = Writer::new(Vec::new()).unwrap();
        assert!(writer.record(2, b"k", b"v").is_err());
    }

    #[test]
    fn crc32_is_zlibs() {
        let mut crc = Crc32::default();
        crc.update(b"1234");
        crc.update(b"56789");
        assert_eq!(crc.value(), 0xcbf4_3926);
    }
}
