//! The lexical pieces of a memcache command line, without allocating: its space-separated
//! tokens and its strict decimal numbers. Every request is split and its numbers read here, so
//! they work on the input slice in place (no token `Vec`, no UTF-8 check, no `str::parse`).

/// The tokens of a command line: separated by spaces, runs of spaces count as one (no empty
/// tokens), tabs and other bytes belong to tokens.
#[derive(Clone, Debug)]
pub struct Tokens<'a>(&'a [u8]);

impl<'a> Tokens<'a> {
    pub fn new(line: &'a [u8]) -> Tokens<'a> {
        Tokens(line)
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let Some(start) = self.0.iter().position(|&b| b != b' ') else {
            self.0 = &[];
            return None;
        };
        let rest = &self.0[start..];
        let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        let (token, tail) = rest.split_at(end);
        self.0 = tail;
        Some(token)
    }
}

/// The most arguments [`Args`] keeps. No command but `get` (which reads its keys from
/// [`Tokens`]) takes more than 5 (`set`), and every command refuses 6 or more without looking
/// past the sixth: keeping 6 tells "too many" apart and answers as if all were kept.
pub const MAX_ARGS: usize = 6;

/// The first [`MAX_ARGS`] arguments of a command line, on the stack.
pub struct Args<'a> {
    tokens: [&'a [u8]; MAX_ARGS],
    len: usize,
}

impl<'a> Args<'a> {
    pub fn new(tokens: Tokens<'a>) -> Args<'a> {
        let mut args = Args {
            tokens: [&[]; MAX_ARGS],
            len: 0,
        };
        for token in tokens.take(MAX_ARGS) {
            args.tokens[args.len] = token;
            args.len += 1;
        }
        args
    }

    pub fn as_slice(&self) -> &[&'a [u8]] {
        &self.tokens[..self.len]
    }
}

/// A number as the memcache protocol writes it: decimal digits only, a leading `-` for signed
/// types, no `+`, no spaces, no overflow. The same numbers `str::parse` accepts, minus a `+`.
pub trait Decimal: Sized {
    fn from_decimal(token: &[u8]) -> Option<Self>;
}

/// One or more decimal digits that fit a `u64`.
fn digits(token: &[u8]) -> Option<u64> {
    if token.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &byte in token {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(digit))?;
    }
    Some(n)
}

impl Decimal for u64 {
    fn from_decimal(token: &[u8]) -> Option<u64> {
        digits(token)
    }
}

impl Decimal for u32 {
    fn from_decimal(token: &[u8]) -> Option<u32> {
        digits(token).and_then(|n| u32::try_from(n).ok())
    }
}

impl Decimal for usize {
    fn from_decimal(token: &[u8]) -> Option<usize> {
        digits(token).and_then(|n| usize::try_from(n).ok())
    }
}

impl Decimal for i64 {
    fn from_decimal(token: &[u8]) -> Option<i64> {
        match token.strip_prefix(b"-") {
            // Up to 2^63: i64::MIN has no positive counterpart.
            Some(magnitude) => digits(magnitude)
                .filter(|&n| n <= 1 << 63)
                .map(|n| (n as i64).wrapping_neg()),
            None => digits(token).and_then(|n| i64::try_from(n).ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(line: &[u8]) -> Vec<&[u8]> {
        Tokens::new(line).collect()
    }

    #[test]
    fn tokens_are_split_on_runs_of_spaces() {
        assert_eq!(split(b""), Vec::<&[u8]>::new());
        assert_eq!(split(b"   "), Vec::<&[u8]>::new());
        assert_eq!(split(b"get q"), vec![&b"get"[..], b"q"]);
        assert_eq!(split(b"  set  q\t1 2  "), vec![&b"set"[..], b"q\t1", b"2"]);
        for line in [
            &b"a b  c "[..],
            b" x",
            b"a\rb c\r",
            b"  a  b  c  d  e  f  g  h ",
        ] {
            let expected: Vec<&[u8]> = line
                .split(|&b| b == b' ')
                .filter(|t| !t.is_empty())
                .collect();
            assert_eq!(split(line), expected, "{line:?}");
        }
    }

    #[test]
    fn args_keep_the_first_six() {
        let args = Args::new(Tokens::new(b"a b c d e f g h"));
        assert_eq!(args.as_slice(), [b"a", b"b", b"c", b"d", b"e", b"f"]);
        assert!(Args::new(Tokens::new(b" ")).as_slice().is_empty());
    }

    /// Same answers as `str::parse` (which the codec used before), minus the `+` it allows.
    fn agrees<T: Decimal + std::str::FromStr + PartialEq + std::fmt::Debug>(token: &str) {
        let expected = if token.starts_with('+') {
            None
        } else {
            token.parse::<T>().ok()
        };
        assert_eq!(T::from_decimal(token.as_bytes()), expected, "{token:?}");
    }

    #[test]
    fn numbers_are_what_str_parse_accepts_without_plus() {
        let tokens = [
            "",
            "0",
            "7",
            "-",
            "+",
            "-0",
            "+0",
            "-7",
            "+7",
            "--7",
            "-+7",
            "007",
            "1x",
            "x1",
            " 1",
            "1 ",
            "٣",
            "4294967295",
            "4294967296",
            "-4294967296",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "18446744073709551615",
            "18446744073709551616",
            "000000000000000000000000000001",
            "99999999999999999999999999",
        ];
        for token in tokens {
            agrees::<u32>(token);
            agrees::<u64>(token);
            agrees::<usize>(token);
            agrees::<i64>(token);
        }
    }
}
