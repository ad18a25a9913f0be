//! Just enough JSON for xtask: parse the admin API's answers and our own state file, and
//! quote strings for the bodies we send. (std only, so xtask builds in seconds.)

#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string at `key`, if this is an object holding a string there.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Json::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub fn num(&self, key: &str) -> Option<f64> {
        match self.get(key) {
            Some(Json::Num(n)) => Some(*n),
            _ => None,
        }
    }

    pub fn arr(&self, key: &str) -> &[Json] {
        match self.get(key) {
            Some(Json::Arr(items)) => items,
            _ => &[],
        }
    }

    pub fn parse(text: &str) -> Result<Json, String> {
        let mut p = Parser { s: text.as_bytes(), i: 0 };
        let v = p.value(0)?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing characters at byte {}", p.i));
        }
        Ok(v)
    }
}

impl Json {
    /// Compact text: no spaces, integral numbers without a fraction.
    pub fn compact(&self) -> String {
        self.text(",", ":", None)
    }

    /// Readable text: a top-level object one member a line, an array of objects in it one
    /// object a line, everything else inline (`{"a": 1, "b": [1, 2]}`).
    pub fn pretty(&self) -> String {
        self.text(", ", ": ", Some(0))
    }

    fn text(&self, comma: &str, colon: &str, depth: Option<usize>) -> String {
        let lines = |items: Vec<String>, open: &str, close: &str, d: usize| {
            let pad = "  ".repeat(d + 1);
            format!("{open}\n{pad}{}\n{}{close}", items.join(&format!(",\n{pad}")), "  ".repeat(d))
        };
        match self {
            Json::Null => "null".into(),
            Json::Bool(b) => b.to_string(),
            Json::Num(x) if !x.is_finite() => "null".into(),
            Json::Num(x) if x.fract() == 0.0 && x.abs() < 9e15 => format!("{}", *x as i64),
            Json::Num(x) => x.to_string(),
            Json::Str(s) => quote(s),
            Json::Arr(items) => {
                let objects = !items.is_empty() && items.iter().all(|i| matches!(i, Json::Obj(_)));
                let texts: Vec<String> = items.iter().map(|i| i.text(comma, colon, None)).collect();
                match depth {
                    Some(d @ 1) if objects => lines(texts, "[", "]", d),
                    _ => format!("[{}]", texts.join(comma)),
                }
            }
            Json::Obj(fields) => {
                let inner = depth.map(|d| d + 1);
                let texts: Vec<String> =
                    fields.iter().map(|(k, v)| format!("{}{colon}{}", quote(k), v.text(comma, colon, inner))).collect();
                match depth {
                    Some(d @ 0) if !fields.is_empty() => lines(texts, "{", "}", d),
                    _ => format!("{{{}}}", texts.join(comma)),
                }
            }
        }
    }
}

/// `s` as a JSON string literal, quotes included.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("invalid JSON at byte {}: {what}", self.i))
    }

    fn eat(&mut self, lit: &str) -> Result<(), String> {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            Ok(())
        } else {
            self.err(&format!("expected {lit}"))
        }
    }

    /// The comma-separated items of an array or object, each read by `item`, from its opening
    /// byte through `close`.
    fn items<T>(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> Result<T, String>) -> Result<Vec<T>, String> {
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.s.get(self.i) == Some(&close) {
            self.i += 1;
            return Ok(items);
        }
        loop {
            items.push(item(self)?);
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(&c) if c == close => {
                    self.i += 1;
                    return Ok(items);
                }
                _ => return self.err(&format!("expected , or {}", char::from(close))),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, String> {
        if depth > 64 {
            return self.err("nested too deep");
        }
        self.ws();
        match self.s.get(self.i) {
            None => self.err("unexpected end"),
            Some(b'n') => self.eat("null").map(|_| Json::Null),
            Some(b't') => self.eat("true").map(|_| Json::Bool(true)),
            Some(b'f') => self.eat("false").map(|_| Json::Bool(false)),
            Some(b'"') => self.string().map(Json::Str),
            Some(b'[') => self.items(b']', |p| p.value(depth + 1)).map(Json::Arr),
            Some(b'{') => self
                .items(b'}', |p| {
                    p.ws();
                    if p.s.get(p.i) != Some(&b'"') {
                        return p.err("expected a key");
                    }
                    let k = p.string()?;
                    p.ws();
                    p.eat(":")?;
                    Ok((k, p.value(depth + 1)?))
                })
                .map(Json::Obj),
            Some(_) => {
                let start = self.i;
                while let Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') = self.s.get(self.i) {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                match text.parse::<f64>() {
                    Ok(n) if !text.is_empty() => Ok(Json::Num(n)),
                    _ => {
                        self.i = start;
                        self.err("unexpected character")
                    }
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let h = self.s.get(self.i..self.i + 4).and_then(|h| std::str::from_utf8(h).ok());
        match h.and_then(|h| u32::from_str_radix(h, 16).ok()) {
            Some(n) => {
                self.i += 4;
                Ok(n)
            }
            None => self.err("bad \\u escape"),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.i += 1; // the opening quote
        let mut out: Vec<u8> = Vec::new();
        loop {
            match self.s.get(self.i) {
                None => return self.err("unterminated string"),
                Some(b'"') => {
                    self.i += 1;
                    return String::from_utf8(out).or_else(|_| self.err("string is not UTF-8"));
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = self.s.get(self.i).copied();
                    self.i += 1;
                    let ch = match c {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) && self.s[self.i..].starts_with(b"\\u") {
                                self.i += 2;
                                let lo = self.hex4()?;
                                0x10000 + ((hi - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF)
                            } else {
                                hi
                            };
                            char::from_u32(code).unwrap_or('\u{FFFD}')
                        }
                        _ => return self.err("bad escape"),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                Some(&b) => {
                    out.push(b);
                    self.i += 1;
                }
            }
        }
    }
}

/// Unpadded base64url (RFC 4648 §5), as JOSE (tokens, JWKs) and the seal keys use it.
pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_admin_answers() {
        let v = Json::parse(
            r#" {"accessToken":"eyJ.a.b","expiresIn":7200,"ok":true,"n":null,
                "businesses":[{"id":"biz_1","name":"D\u00e9mo \"x\""}], "e": -1.5e3} "#,
        );
        let v = v.unwrap_or(Json::Null);
        assert_eq!(v.str("accessToken"), Some("eyJ.a.b"));
        assert_eq!(v.num("expiresIn"), Some(7200.0));
        assert_eq!(v.num("e"), Some(-1500.0));
        assert_eq!(v.arr("businesses").len(), 1);
        assert_eq!(v.arr("businesses")[0].str("name"), Some("Démo \"x\""));
        assert_eq!(v.get("ok"), Some(&Json::Bool(true)));
        assert!(Json::parse("{\"a\":1,}").is_err());
        assert!(Json::parse("[1 2]").is_err());
        assert!(Json::parse("\"\\ud83d\\ude00\"").is_ok_and(|v| v == Json::Str("😀".into())));
    }

    #[test]
    fn writes_compact_and_pretty() {
        let v = Json::parse(r#"{"a": 1, "b": [{"x": 1.5, "s": "q\", r: s"}, {"x": null}], "c": [1, 2], "d": {"e": true}}"#)
            .unwrap_or(Json::Null);
        assert_eq!(v.compact(), r#"{"a":1,"b":[{"x":1.5,"s":"q\", r: s"},{"x":null}],"c":[1,2],"d":{"e":true}}"#);
        assert_eq!(
            v.pretty(),
            "{\n  \"a\": 1,\n  \"b\": [\n    {\"x\": 1.5, \"s\": \"q\\\", r: s\"},\n    {\"x\": null}\n  ],\n  \"c\": [1, 2],\n  \"d\": {\"e\": true}\n}"
        );
        assert_eq!(Json::parse(&v.pretty()), Ok(v));
    }

    #[test]
    fn quote_round_trips() {
        let s = "a\"b\\c\nd\u{1}é";
        assert_eq!(Json::parse(&quote(s)), Ok(Json::Str(s.to_string())));
    }

    #[test]
    fn base64url_matches_rfc_4648() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foob"), "Zm9vYg");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64url(&[0u8; 32]).len(), 43);
    }
}
