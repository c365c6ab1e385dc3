//! A small JSON reader and writer for the control protocol.
//!
//! The reader takes one line (at most [`MAX_LINE`] bytes) and parses
//! objects, arrays, strings, integers, `true`, `false` and `null`, nested at
//! most [`MAX_DEPTH`] deep, with at most [`MAX_ITEMS`] values in all. It
//! never panics: every index is checked and every bound is counted, so any
//! byte string gives a value or a [`JsonError`] naming the offset. Numbers
//! are unsigned integers up to 2^53 (a fraction or exponent is refused; the
//! protocol has none), strings are UTF-8 with the usual escapes.
//!
//! The writer ([`Obj`]) builds one flat or nested object into a `String`,
//! escaping every string so that any name stays on one line.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write};

/// The longest request line, in bytes (without the newline).
pub const MAX_LINE: usize = 4096;
/// The deepest nesting of arrays and objects.
pub const MAX_DEPTH: usize = 8;
/// The most values (of any kind) in one document.
pub const MAX_ITEMS: usize = 4096;
/// The largest number: 2^53, the largest integer every JSON reader keeps exactly.
pub const MAX_NUMBER: u64 = 1 << 53;

/// A parsed JSON value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An unsigned integer up to [`MAX_NUMBER`].
    Num(u64),
    /// A string.
    Str(String),
    /// An array.
    Arr(Vec<Value>),
    /// An object: keys in their order, duplicates refused.
    Obj(Vec<(String, Value)>),
}

impl Value {
    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Obj(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The number, if this is one.
    pub fn as_num(&self) -> Option<u64> {
        match self {
            Value::Num(n) => Some(*n),
            _ => None,
        }
    }

    /// What kind of value this is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Num(_) => "a number",
            Value::Str(_) => "a string",
            Value::Arr(_) => "an array",
            Value::Obj(_) => "an object",
        }
    }
}

/// Why a line is not JSON the protocol takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonError {
    /// Byte offset of the problem.
    pub at: usize,
    /// What is wrong.
    pub what: &'static str,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed JSON at byte {}: {}", self.at, self.what)
    }
}

/// Parses one complete JSON document (surrounding white space allowed) of
/// at most [`MAX_LINE`] bytes.
pub fn parse(text: &[u8]) -> Result<Value, JsonError> {
    parse_limited(text, MAX_LINE)
}

/// [`parse`] with another length limit (the host reading responses).
pub fn parse_limited(text: &[u8], max_len: usize) -> Result<Value, JsonError> {
    if text.len() > max_len {
        return Err(JsonError {
            at: max_len,
            what: "line too long",
        });
    }
    let mut p = Parser {
        s: text,
        i: 0,
        items: 0,
    };
    let v = p.value(0)?;
    p.ws();
    if p.i != text.len() {
        return Err(p.err("text after the value"));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    items: usize,
}

impl Parser<'_> {
    fn err(&self, what: &'static str) -> JsonError {
        JsonError { at: self.i, what }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }

    fn lit(&mut self, word: &'static [u8], v: Value) -> Result<Value, JsonError> {
        if self.s.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(self.err("unknown word"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.ws();
        self.items += 1;
        if self.items > MAX_ITEMS {
            return Err(self.err("too many values"));
        }
        match self.peek() {
            None => Err(self.err("unexpected end")),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(Value::Str),
            Some(b'0'..=b'9') => self.number(),
            Some(b'-') => Err(self.err("negative numbers are not used")),
            Some(b't') => self.lit(b"true", Value::Bool(true)),
            Some(b'f') => self.lit(b"false", Value::Bool(false)),
            Some(b'n') => self.lit(b"null", Value::Null),
            Some(_) => Err(self.err("unexpected character")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deep"));
        }
        self.i += 1;
        let mut members: Vec<(String, Value)> = Vec::new();
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(Value::Obj(members));
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a key"));
            }
            let at = self.i;
            let key = self.string()?;
            if members.iter().any(|(k, _)| *k == key) {
                return Err(JsonError {
                    at,
                    what: "duplicate key",
                });
            }
            self.ws();
            if self.peek() != Some(b':') {
                return Err(self.err("expected ':'"));
            }
            self.i += 1;
            let v = self.value(depth)?;
            members.push((key, v));
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Value::Obj(members));
                }
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deep"));
        }
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(Value::Arr(items));
        }
        loop {
            items.push(self.value(depth)?);
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Value::Arr(items));
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }

    fn number(&mut self) -> Result<Value, JsonError> {
        let start = self.i;
        let mut n: u64 = 0;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            n = match n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d - b'0')))
            {
                Some(n) if n <= MAX_NUMBER => n,
                _ => {
                    return Err(JsonError {
                        at: start,
                        what: "number too large",
                    })
                }
            };
            self.i += 1;
        }
        if self.i - start > 1 && self.s.get(start) == Some(&b'0') {
            return Err(JsonError {
                at: start,
                what: "leading zero",
            });
        }
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return Err(self.err("only whole numbers are used"));
        }
        Ok(Value::Num(n))
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return Err(self.err("bad \\u escape")),
            };
            v = v * 16 + u32::from(d);
            self.i += 1;
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.i += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err("unterminated string"));
            };
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return Err(self.err("unterminated string"));
                    };
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if self.s.get(self.i..self.i + 2) != Some(b"\\u") {
                                    return Err(self.err("lone surrogate"));
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("lone surrogate"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            match char::from_u32(code) {
                                Some(ch) => ch,
                                None => return Err(self.err("lone surrogate")),
                            }
                        }
                        _ => return Err(self.err("bad escape")),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                0..=0x1f => return Err(self.err("control character in a string")),
                _ => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| self.err("string is not UTF-8"))
    }
}

/// A JSON string literal of `s` (quotes included), every control character
/// and non-ASCII character escaped: the output is one printable ASCII line.
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        for ch in self.0.chars() {
            match ch {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                ' '..='~' => f.write_char(ch)?,
                _ => {
                    let mut units = [0u16; 2];
                    for u in ch.encode_utf16(&mut units) {
                        write!(f, "\\u{u:04x}")?;
                    }
                }
            }
        }
        f.write_char('"')
    }
}

/// Builds one JSON object: `Obj::new().num("id", 1).str("name", "a").end()`.
#[derive(Default)]
pub struct Obj {
    out: String,
}

impl Obj {
    /// An empty object.
    pub fn new() -> Obj {
        Obj {
            out: String::from("{"),
        }
    }

    fn key(&mut self, key: &str) {
        if self.out.len() > 1 {
            self.out.push(',');
        }
        let _ = write!(self.out, "{}:", Quoted(key));
    }

    /// Adds a number.
    pub fn num(mut self, key: &str, v: u64) -> Obj {
        self.key(key);
        let _ = write!(self.out, "{v}");
        self
    }

    /// Adds a string.
    pub fn str(mut self, key: &str, v: &str) -> Obj {
        self.key(key);
        let _ = write!(self.out, "{}", Quoted(v));
        self
    }

    /// Adds a boolean.
    pub fn bool(mut self, key: &str, v: bool) -> Obj {
        self.key(key);
        self.out.push_str(if v { "true" } else { "false" });
        self
    }

    /// Adds `null`.
    pub fn null(mut self, key: &str) -> Obj {
        self.key(key);
        self.out.push_str("null");
        self
    }

    /// Adds an array of numbers.
    pub fn nums(mut self, key: &str, v: &[u64]) -> Obj {
        self.key(key);
        self.out.push('[');
        for (i, n) in v.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{n}");
        }
        self.out.push(']');
        self
    }

    /// Adds JSON text built elsewhere (an object or an array of them).
    pub fn raw(mut self, key: &str, json: &str) -> Obj {
        self.key(key);
        self.out.push_str(json);
        self
    }

    /// The finished object.
    pub fn end(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

/// `[a,b,...]` of finished JSON texts.
pub fn array(items: &[String]) -> String {
    let mut out = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::vec;

    #[test]
    fn parses_requests() {
        let v = parse(
            br#" {"id": 7, "cmd":"create", "cpus":[0,1], "name":"a\u00e9\n", "x":null, "t":true} "#,
        )
        .unwrap();
        assert_eq!(v.get("id"), Some(&Value::Num(7)));
        assert_eq!(
            v.get("cpus"),
            Some(&Value::Arr(vec![Value::Num(0), Value::Num(1)]))
        );
        assert_eq!(v.get("name").and_then(Value::as_str), Some("a\u{e9}\n"));
        assert_eq!(v.get("x"), Some(&Value::Null));
        assert_eq!(
            parse(br#""\ud83d\ude00""#).unwrap(),
            Value::Str("\u{1f600}".into())
        );
    }

    #[test]
    fn refuses_what_is_not_json() {
        for bad in [
            &b""[..],
            b"{",
            b"{\"a\":1,}",
            b"{\"a\" 1}",
            b"{\"a\":1}x",
            b"{\"a\":1,\"a\":2}",
            b"[1,2",
            b"01",
            b"1.5",
            b"-1",
            b"9007199254740993",
            b"\"\\x\"",
            b"\"\\ud800\"",
            b"\"a\nb\"",
            b"\"\xff\"",
            b"tru",
            b"[[[[[[[[[1]]]]]]]]]",
        ] {
            assert!(
                parse(bad).is_err(),
                "{:?} accepted",
                core::str::from_utf8(bad)
            );
        }
        let long = vec![b' '; MAX_LINE + 1];
        assert_eq!(parse(&long).unwrap_err().what, "line too long");
        let many = format!("[{}0]", "0,".repeat(MAX_ITEMS));
        assert_eq!(
            parse_limited(many.as_bytes(), usize::MAX).unwrap_err().what,
            "too many values"
        );
    }

    #[test]
    fn writer_round_trips_through_the_reader() {
        let name = "a\"b\\c\n\u{1b}[2J\u{e9}\u{1f600}";
        let text = Obj::new()
            .num("id", 3)
            .str("name", name)
            .bool("ok", true)
            .nums("cpus", &[1, 2])
            .null("n")
            .end();
        assert!(text.bytes().all(|b| (b' '..=b'~').contains(&b)), "{text}");
        let v = parse(text.as_bytes()).unwrap();
        assert_eq!(v.get("name").and_then(Value::as_str), Some(name));
        assert_eq!(
            v.get("cpus"),
            Some(&Value::Arr(vec![Value::Num(1), Value::Num(2)]))
        );
        let list = Obj::new()
            .raw("vms", &array(&[Obj::new().num("id", 1).end()]))
            .end();
        assert_eq!(list, r#"{"vms":[{"id":1}]}"#);
        assert!(parse(list.as_bytes()).is_ok());
    }

    /// Fuzz-style: random bytes and mutated requests never panic, and
    /// whatever parses re-serializes to something that parses to the same.
    #[test]
    fn fuzz_never_panics() {
        let rounds: u64 = option_env!("HV_FUZZ_ROUNDS")
            .and_then(|r| r.parse().ok())
            .unwrap_or(20_000);
        let seed_docs: [&[u8]; 3] = [
            br#"{"id":1,"cmd":"create","name":"x","image":"hello","memory_mib":2,"cpus":[0],"slice_us":1000}"#,
            br#"{"id":2,"cmd":"info","vm":"x"}"#,
            br#"[{"a":[1,2,{"b":"\u0041"}]},true,false,null]"#,
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..rounds {
            let mut doc: Vec<u8> = seed_docs[(round % 3) as usize].to_vec();
            let edits = next() % 6;
            for _ in 0..=edits {
                let r = next();
                let at = (r as usize >> 8) % (doc.len() + 1);
                match r % 4 {
                    0 if at < doc.len() => doc[at] = (r >> 32) as u8,
                    1 => doc.insert(at, b"{}[]\",:0\\u"[(r >> 40) as usize % 10]),
                    2 if at < doc.len() => {
                        doc.remove(at);
                    }
                    _ => doc.truncate(at),
                }
            }
            if round % 7 == 0 {
                doc = (0..(next() % 64)).map(|_| next() as u8).collect();
            }
            if let Ok(Value::Obj(members)) = parse(&doc) {
                let mut o = Obj::new();
                for (k, val) in &members {
                    if let Value::Str(s) = val {
                        o = o.str(k, s);
                    }
                }
                assert!(parse(o.end().as_bytes()).is_ok());
            }
        }
    }
}
