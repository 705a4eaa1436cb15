//! Standard base64 (RFC 4648, `+/` alphabet, `=` padding), for meta keys sent with the `b` flag
//! and returned with `k`. Small enough to own rather than add a crate for two functions.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The 6-bit value of one alphabet byte.
fn sextet(byte: u8) -> Option<u32> {
    Some(match byte {
        b'A'..=b'Z' => byte - b'A',
        b'a'..=b'z' => byte - b'a' + 26,
        b'0'..=b'9' => byte - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    } as u32)
}

/// Decodes padded base64 into `out`; `None` (and `out` unspecified) unless `text` is whole
/// 4-byte groups of the alphabet with at most two `=`, only at the very end.
pub fn decode(text: &[u8], out: &mut Vec<u8>) -> Option<()> {
    if !text.len().is_multiple_of(4) {
        return None;
    }
    out.reserve(text.len() / 4 * 3);
    let groups = text.len() / 4;
    for (i, group) in text.chunks_exact(4).enumerate() {
        let pad = match group {
            [.., b'=', b'='] => 2,
            [.., b'='] => 1,
            _ => 0,
        };
        if pad > 0 && i + 1 != groups {
            return None;
        }
        let mut bits = 0u32;
        for &byte in &group[..4 - pad] {
            bits = bits << 6 | sextet(byte)?;
        }
        bits <<= 6 * pad;
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(())
}

/// Appends the padded base64 of `bytes`.
pub fn encode(bytes: &[u8], out: &mut Vec<u8>) {
    out.reserve(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let mut group = [0u8; 3];
        group[..chunk.len()].copy_from_slice(chunk);
        let bits = u32::from_be_bytes([0, group[0], group[1], group[2]]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(bits >> (18 - 6 * i) & 0x3f) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(text: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        decode(text, &mut out).map(|()| out)
    }

    fn encoded(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(bytes, &mut out);
        out
    }

    #[test]
    fn rfc_4648_vectors() {
        let vectors: [(&[u8], &[u8]); 7] = [
            (b"", b""),
            (b"f", b"Zg=="),
            (b"fo", b"Zm8="),
            (b"foo", b"Zm9v"),
            (b"foob", b"Zm9vYg=="),
            (b"fooba", b"Zm9vYmE="),
            (b"foobar", b"Zm9vYmFy"),
        ];
        for (plain, text) in vectors {
            assert_eq!(encoded(plain), text);
            assert_eq!(decoded(text).as_deref(), Some(plain));
        }
        assert_eq!(encoded(&[0xfb, 0xff, 0xbf]), b"+/+/");
    }

    #[test]
    fn malformed_text_is_refused() {
        for text in [
            &b"Zg"[..],
            b"Zg=",
            b"Z===",
            b"Zg==Zg==",
            b"Zm9v Zg==",
            b"Zm9-",
            b"Zm9_",
            b"=Zm9",
            b"Zm=v",
            b"\xffZm9",
        ] {
            assert_eq!(decoded(text), None, "{text:?}");
        }
    }

    #[test]
    fn every_byte_string_round_trips() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..300usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let text = encoded(&bytes);
            assert_eq!(text.len(), len.div_ceil(3) * 4);
            assert_eq!(decoded(&text), Some(bytes));
        }
    }
}
