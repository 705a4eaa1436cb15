//! The little JSON mqmq's `Info` needs. Writing follows Go's `encoding/json`, so our `Info` is
//! byte-for-byte what an mqmq client has always parsed: map keys sorted, `<`, `>`, `&`, U+2028
//! and U+2029 escaped, each invalid UTF-8 byte written as `\ufffd` (Go 1.22 and later). Reading handles objects, strings and
//! whole numbers, plus arrays and booleans: enough for `mqd info` to read an `Info` reply and
//! `mqd top` to read `/stats.json`.

/// A parsed JSON value of the kinds `Info` uses.
#[derive(Debug, PartialEq)]
pub enum Json {
    Number(u64),
    String(Vec<u8>),
    Object(Vec<(Vec<u8>, Json)>),
    Array(Vec<Json>),
    Bool(bool),
}

impl Json {
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(fields) => fields
                .iter()
                .find(|(k, _)| k == key.as_bytes())
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_array(&self) -> &[Json] {
        match self {
            Json::Array(items) => items,
            _ => &[],
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Number(n) => Some(*n),
            _ => None,
        }
    }
}

/// Parses a whole document.
pub fn parse(text: &str) -> Option<Json> {
    let mut parser = Parser {
        bytes: text.as_bytes(),
        at: 0,
    };
    let value = parser.value()?;
    parser.skip_space();
    (parser.at == parser.bytes.len()).then_some(value)
}

struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn skip_space(&mut self) {
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.skip_space();
        (self.bytes.get(self.at) == Some(&byte)).then(|| self.at += 1)
    }

    fn value(&mut self) -> Option<Json> {
        self.skip_space();
        match self.bytes.get(self.at)? {
            b'{' => self.object(),
            b'"' => self.string().map(Json::String),
            b'[' => self.array(),
            b't' | b'f' => {
                let rest = &self.bytes[self.at..];
                let (value, len) = if rest.starts_with(b"true") {
                    (true, 4)
                } else if rest.starts_with(b"false") {
                    (false, 5)
                } else {
                    return None;
                };
                self.at += len;
                Some(Json::Bool(value))
            }
            b'0'..=b'9' => {
                let start = self.at;
                while self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
                    self.at += 1;
                }
                std::str::from_utf8(&self.bytes[start..self.at])
                    .ok()?
                    .parse()
                    .ok()
                    .map(Json::Number)
            }
            _ => None,
        }
    }

    fn object(&mut self) -> Option<Json> {
        self.eat(b'{')?;
        let mut fields = Vec::new();
        if self.eat(b'}').is_some() {
            return Some(Json::Object(fields));
        }
        loop {
            self.skip_space();
            let key = self.string()?;
            self.eat(b':')?;
            fields.push((key, self.value()?));
            if self.eat(b',').is_none() {
                self.eat(b'}')?;
                return Some(Json::Object(fields));
            }
        }
    }

    fn array(&mut self) -> Option<Json> {
        self.eat(b'[')?;
        let mut items = Vec::new();
        if self.eat(b']').is_some() {
            return Some(Json::Array(items));
        }
        loop {
            items.push(self.value()?);
            if self.eat(b',').is_none() {
                self.eat(b']')?;
                return Some(Json::Array(items));
            }
        }
    }

    fn string(&mut self) -> Option<Vec<u8>> {
        if self.bytes.get(self.at) != Some(&b'"') {
            return None;
        }
        self.at += 1;
        let mut out = Vec::new();
        loop {
            let byte = *self.bytes.get(self.at)?;
            self.at += 1;
            match byte {
                b'"' => return Some(out),
                b'\\' => {
                    let escape = *self.bytes.get(self.at)?;
                    self.at += 1;
                    match escape {
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'u' => {
                            let hex =
                                std::str::from_utf8(self.bytes.get(self.at..self.at + 4)?).ok()?;
                            self.at += 4;
                            let c = char::from_u32(u32::from_str_radix(hex, 16).ok()?)
                                .unwrap_or('\u{fffd}');
                            let mut utf8 = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                        }
                        other => out.push(other),
                    }
                }
                other => out.push(other),
            }
        }
    }
}

/// Appends `bytes` as a JSON string literal, quotes included.
pub fn push_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_char(out, c);
        }
        // Go writes one escaped replacement character per invalid byte.
        for _ in chunk.invalid() {
            out.extend_from_slice(b"\\ufffd");
        }
    }
    out.push(b'"');
}

fn push_char(out: &mut Vec<u8>, c: char) {
    match c {
        '"' => out.extend_from_slice(b"\\\""),
        '\\' => out.extend_from_slice(b"\\\\"),
        '\n' => out.extend_from_slice(b"\\n"),
        '\r' => out.extend_from_slice(b"\\r"),
        '\t' => out.extend_from_slice(b"\\t"),
        '\u{8}' => out.extend_from_slice(b"\\b"),
        '\u{c}' => out.extend_from_slice(b"\\f"),
        '<' | '>' | '&' | '\u{2028}' | '\u{2029}' | '\u{0}'..='\u{1f}' => {
            out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
        }
        c => {
            let mut utf8 = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(bytes: &[u8]) -> String {
        let mut out = Vec::new();
        push_string(&mut out, bytes);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn parses_what_it_writes() {
        let mut doc = br#"{"n":12,"Queues":{"#.to_vec();
        push_string(&mut doc, b"a<\"b\n");
        doc.extend_from_slice(br#":{"x":1}}}"#);
        let json = parse(std::str::from_utf8(&doc).unwrap()).unwrap();
        assert_eq!(json.get("n").and_then(Json::as_u64), Some(12));
        let Some(Json::Object(queues)) = json.get("Queues") else {
            panic!()
        };
        assert_eq!(queues[0].0, b"a<\"b\n");
        assert_eq!(parse("{\"a\":}"), None);
        let doc = parse(r#"{"q":[{"b":true},[],false, 3]}"#).unwrap();
        let q = doc.get("q").unwrap().as_array();
        assert_eq!(q.len(), 4);
        assert_eq!(q[0].get("b"), Some(&Json::Bool(true)));
        assert_eq!(q[1], Json::Array(vec![]));
        assert_eq!(q[3].as_u64(), Some(3));
        assert_eq!(parse("[1,]"), None);
        assert_eq!(parse("tru"), None);
    }

    #[test]
    fn escapes_like_go() {
        assert_eq!(json(b"queue1"), r#""queue1""#);
        assert_eq!(json(b"a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(json(b"<&>"), r#""\u003c\u0026\u003e""#);
        assert_eq!(json(b"\x01\n"), r#""\u0001\n""#);
        assert_eq!(json(b"a\xff\xfeb"), r#""a\ufffd\ufffdb""#);
        assert_eq!(json(b"\x08\x0c"), r#""\b\f""#);
        assert_eq!(json("é".as_bytes()), "\"é\"");
    }
}
