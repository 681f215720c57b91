//! The `json` serializer and a `serde_json` formatter that writes exactly what Python's
//! `json.dumps` writes with its default settings.

use std::io;

use serde_json::ser::{CharEscape, Formatter};

use crate::error::{Error, Result};
use crate::registry::Serializer;

/// Content type of the `json` serializer.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// A [`serde_json::ser::Formatter`] that produces the same bytes as Python's `json.dumps` with
/// default arguments:
///
/// * separators `", "` between items and `": "` between a key and its value;
/// * `ensure_ascii=True`: every character outside printable ASCII (`' '..='~'`) is written as
///   a lowercase `\uXXXX` escape, characters outside the Basic Multilingual Plane as a UTF-16
///   surrogate pair, and `"`, `\`, backspace, form feed, newline, carriage return and tab as
///   `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`;
/// * floats as Python's `repr(float)`: shortest round-trip digits, fixed notation with a
///   trailing `.0` for decimal exponents in `-4..16`, otherwise scientific with a signed exponent
///   of at least two digits (`1e+16`, `1e-05`, `1.5`, `100.0`).
///
/// One difference cannot be avoided with a formatter: `serde_json` turns NaN and infinities into
/// `null` before the formatter sees them, where Python writes the non-standard `NaN` /
/// `Infinity`.
///
/// ```
/// let mut out = Vec::new();
/// let mut ser = serde_json::Serializer::with_formatter(&mut out, kombu_serializers::PythonFormatter);
/// serde::Serialize::serialize(&("é", 1e16, [1.5]), &mut ser)?;
/// assert_eq!(out, br#"["\u00e9", 1e+16, [1.5]]"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PythonFormatter;

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_u16_escape<W: ?Sized + io::Write>(writer: &mut W, unit: u16) -> io::Result<()> {
    let buf = [
        b'\\',
        b'u',
        HEX[usize::from((unit >> 12) & 0xF)],
        HEX[usize::from((unit >> 8) & 0xF)],
        HEX[usize::from((unit >> 4) & 0xF)],
        HEX[usize::from(unit & 0xF)],
    ];
    writer.write_all(&buf)
}

/// Writes one character that Python's `ensure_ascii` encoder escapes.
fn write_escaped_char<W: ?Sized + io::Write>(writer: &mut W, ch: char) -> io::Result<()> {
    match ch {
        '"' => writer.write_all(b"\\\""),
        '\\' => writer.write_all(b"\\\\"),
        '\u{08}' => writer.write_all(b"\\b"),
        '\u{0c}' => writer.write_all(b"\\f"),
        '\n' => writer.write_all(b"\\n"),
        '\r' => writer.write_all(b"\\r"),
        '\t' => writer.write_all(b"\\t"),
        _ => {
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                write_u16_escape(writer, *unit)?;
            }
            Ok(())
        }
    }
}

/// A fixed-size buffer for formatting one float without allocating.
struct FloatBuf {
    buf: [u8; 64],
    len: usize,
}

impl std::fmt::Write for FloatBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dest = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dest.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// An `f64` whose `{:e}` form is the shortest round-tripping one with Python's tie rule.
///
/// Rust's `{:e}` and Python's `repr()` both pick the shortest digit string that reads back as
/// the same float, and the one closest to its exact value; when two candidates are exactly as
/// close (the exact value ends in the digit 5 one place further, as 1724393011044760.25),
/// Rust takes the upper one and Python (David Gay's `dtoa`) the even one.
pub(crate) struct ShortestHalfEven(pub(crate) f64);

impl std::fmt::LowerExp for ShortestHalfEven {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        let value = self.0;
        let mut shortest = FloatBuf {
            buf: [0; 64],
            len: 0,
        };
        write!(shortest, "{value:e}")?;
        let text = std::str::from_utf8(shortest.buf.get(..shortest.len).unwrap_or_default())
            .map_err(|_| std::fmt::Error)?;
        match lower_tie_candidate(value, text) {
            Some(lower) => f.write_str(lower.as_str()),
            None => f.write_str(text),
        }
    }
}

/// When the last digit of `shortest` (Rust's `{:e}` of `value`) is odd, and the digit string
/// one unit lower reads back as `value` too and lies exactly as close to it (`value` is exactly
/// halfway between them), returns that lower string, which is the one Python's `repr` writes.
/// Allocates nothing unless the lower string reads back as `value` (rare).
fn lower_tie_candidate(value: f64, shortest: &str) -> Option<FloatBuf> {
    use std::fmt::Write as _;
    let (mantissa, exp) = shortest.split_once('e')?;
    let (head, last) = mantissa.split_at(mantissa.len().checked_sub(1)?);
    let last = *last.as_bytes().first()?;
    if !last.is_ascii_digit() || (last - b'0').is_multiple_of(2) {
        return None;
    }
    // An odd digit is at least 1: decrementing it never borrows.
    let mut lower = FloatBuf {
        buf: [0; 64],
        len: 0,
    };
    write!(lower, "{head}{}e{exp}", char::from(last - 1)).ok()?;
    if lower.as_str().parse::<f64>().ok()? != value {
        return None;
    }
    // The exact decimal value of `value` (a double has at most 767 significant digits) must be
    // the lower digits followed by a 5.
    let exact = format!("{:.800e}", value.abs());
    let (exact_mantissa, exact_exp) = exact.split_once('e')?;
    let digits = |m: &str| -> String { m.chars().filter(char::is_ascii_digit).collect() };
    let mut halfway = digits(head);
    halfway.push(char::from(last - 1));
    halfway.push('5');
    (exact_exp == exp && digits(exact_mantissa).trim_end_matches('0') == halfway).then_some(lower)
}

impl FloatBuf {
    fn as_str(&self) -> &str {
        std::str::from_utf8(self.buf.get(..self.len).unwrap_or_default()).unwrap_or_default()
    }
}

/// Writes `repr(float)` given the shortest round-trip scientific form produced by Rust's
/// `{:e}` formatting (for example `-1.2345e-7`, `1e16`, `0e0`).
pub(crate) fn write_python_float<W: ?Sized + io::Write>(
    writer: &mut W,
    value: impl std::fmt::LowerExp,
) -> io::Result<()> {
    use std::fmt::Write as _;

    let mut fb = FloatBuf {
        buf: [0; 64],
        len: 0,
    };
    write!(fb, "{value:e}").map_err(|_| io::Error::other("float formatting overflowed"))?;
    let text = fb.buf.get(..fb.len).unwrap_or_default();

    let (negative, text) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let e_pos = text
        .iter()
        .position(|&b| b == b'e')
        .ok_or_else(|| io::Error::other("unexpected float format"))?;
    let (mantissa, exp_text) = (&text[..e_pos], &text[e_pos + 1..]);
    let exp: i32 = std::str::from_utf8(exp_text)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("unexpected float exponent"))?;

    // Significant digits without the decimal point (at most 17 for f64, 9 for f32).
    let mut digits = [0u8; 32];
    let mut n = 0;
    for &b in mantissa.iter().filter(|&&b| b != b'.') {
        let slot = digits
            .get_mut(n)
            .ok_or_else(|| io::Error::other("too many float digits"))?;
        *slot = b;
        n += 1;
    }
    let digits = &digits[..n];
    // Python's `decpt`: value = 0.d1d2d3... * 10**decpt.
    let decpt = exp + 1;

    if negative {
        writer.write_all(b"-")?;
    }
    if decpt <= -4 || decpt > 16 {
        let (first, rest) = digits
            .split_first()
            .ok_or_else(|| io::Error::other("float without digits"))?;
        writer.write_all(std::slice::from_ref(first))?;
        if !rest.is_empty() {
            writer.write_all(b".")?;
            writer.write_all(rest)?;
        }
        let sign = if exp < 0 { '-' } else { '+' };
        write!(writer, "e{sign}{:02}", exp.unsigned_abs())
    } else if decpt <= 0 {
        writer.write_all(b"0.")?;
        for _ in 0..(-decpt) {
            writer.write_all(b"0")?;
        }
        writer.write_all(digits)
    } else {
        // 1 <= decpt <= 16 here.
        let point = usize::try_from(decpt).map_err(|_| io::Error::other("bad float exponent"))?;
        if point >= digits.len() {
            writer.write_all(digits)?;
            for _ in digits.len()..point {
                writer.write_all(b"0")?;
            }
            writer.write_all(b".0")
        } else {
            writer.write_all(&digits[..point])?;
            writer.write_all(b".")?;
            writer.write_all(&digits[point..])
        }
    }
}

/// The separators of Python's `json.dumps` defaults (`", "` between items, `": "` after keys),
/// as `serde_json::ser::Formatter` methods.
macro_rules! python_separators {
    () => {
        fn begin_array_value<W>(&mut self, writer: &mut W, first: bool) -> io::Result<()>
        where
            W: ?Sized + io::Write,
        {
            if first {
                Ok(())
            } else {
                writer.write_all(b", ")
            }
        }

        fn begin_object_key<W>(&mut self, writer: &mut W, first: bool) -> io::Result<()>
        where
            W: ?Sized + io::Write,
        {
            if first {
                Ok(())
            } else {
                writer.write_all(b", ")
            }
        }

        fn begin_object_value<W>(&mut self, writer: &mut W) -> io::Result<()>
        where
            W: ?Sized + io::Write,
        {
            writer.write_all(b": ")
        }
    };
}

impl Formatter for PythonFormatter {
    python_separators!();

    fn write_f32<W>(&mut self, writer: &mut W, value: f32) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        write_python_float(writer, value)
    }

    fn write_f64<W>(&mut self, writer: &mut W, value: f64) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        write_python_float(writer, ShortestHalfEven(value))
    }

    fn write_string_fragment<W>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        let bytes = fragment.as_bytes();
        // serde_json hands over runs without quotes, backslashes or control characters; what is
        // left to escape is non-ASCII and DEL.
        if fragment.is_ascii() && !bytes.contains(&0x7f) {
            return writer.write_all(bytes);
        }
        let mut start = 0;
        for (i, ch) in fragment.char_indices() {
            if (' '..='~').contains(&ch) && ch != '"' && ch != '\\' {
                continue;
            }
            writer.write_all(&bytes[start..i])?;
            write_escaped_char(writer, ch)?;
            start = i + ch.len_utf8();
        }
        writer.write_all(&bytes[start..])
    }

    fn write_char_escape<W>(&mut self, writer: &mut W, char_escape: CharEscape) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        match char_escape {
            CharEscape::Quote => writer.write_all(b"\\\""),
            CharEscape::ReverseSolidus => writer.write_all(b"\\\\"),
            // Python never escapes '/'.
            CharEscape::Solidus => writer.write_all(b"/"),
            CharEscape::Backspace => writer.write_all(b"\\b"),
            CharEscape::FormFeed => writer.write_all(b"\\f"),
            CharEscape::LineFeed => writer.write_all(b"\\n"),
            CharEscape::CarriageReturn => writer.write_all(b"\\r"),
            CharEscape::Tab => writer.write_all(b"\\t"),
            CharEscape::AsciiControl(byte) => write_u16_escape(writer, u16::from(byte)),
        }
    }
}

/// Serializes `value` to JSON bytes exactly as Python's `json.dumps(value)` would.
///
/// ```
/// let out = kombu_serializers::to_python_json(&serde_json::json!({"hello": "wörld"}))?;
/// assert_eq!(out, br#"{"hello": "w\u00f6rld"}"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn to_python_json<T: serde::Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    value.serialize(&mut ser)?;
    Ok(out)
}

/// Like [`to_python_json`], as a `String` (the output is always ASCII).
pub fn to_python_json_string<T: serde::Serialize + ?Sized>(
    value: &T,
) -> serde_json::Result<String> {
    let bytes = to_python_json(value)?;
    // The formatter only ever writes ASCII, so this conversion cannot fail; map defensively.
    String::from_utf8(bytes)
        .map_err(|e| serde::ser::Error::custom(format!("formatter produced non-UTF-8 output: {e}")))
}

/// The `json` serializer: content type `application/json`, encoding `utf-8`, output identical to
/// Python's `json.dumps` defaults (see [`PythonFormatter`]). Decoding accepts any JSON text
/// `serde_json` accepts and rejects trailing characters, and also what Python's `json.dumps`
/// writes beyond RFC JSON, read as [`from_python_json`] reads it: `NaN` / `Infinity` /
/// `-Infinity` become the non-finite `f64` values (`null` in a `serde_json::Value`), lone
/// surrogates U+FFFD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JsonSerializer;

impl Serializer for JsonSerializer {
    fn name(&self) -> &str {
        "json"
    }

    fn content_type(&self) -> &str {
        JSON_CONTENT_TYPE
    }

    fn content_encoding(&self) -> &str {
        "utf-8"
    }

    fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>> {
        to_python_json(value).map_err(|e| Error::Encode {
            serializer: self.name().to_owned(),
            source: Box::new(e),
        })
    }

    fn builtin(&self) -> Option<crate::registry::Builtin> {
        Some(crate::registry::Builtin::Json)
    }

    fn decode(
        &self,
        data: &[u8],
        visit: &mut dyn FnMut(
            &mut dyn erased_serde::Deserializer<'_>,
        ) -> Result<(), erased_serde::Error>,
    ) -> Result<()> {
        let decode_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::Decode {
            content_type: JSON_CONTENT_TYPE.to_owned(),
            source,
        };
        let strict = {
            let mut de = serde_json::Deserializer::from_slice(data);
            let visited = {
                let mut erased = <dyn erased_serde::Deserializer>::erase(&mut de);
                visit(&mut erased).map_err(|e| decode_err(Box::new(e)))
            };
            visited.and_then(|()| de.end().map_err(|e| decode_err(Box::new(e))))
        };
        let Err(strict) = strict else {
            return Ok(());
        };
        // What Python's json.dumps writes beyond RFC JSON (NaN, Infinity, lone surrogates).
        match PyJson::parse_python_only(data) {
            Some(tree) => {
                let mut erased = <dyn erased_serde::Deserializer>::erase(tree);
                visit(&mut erased).map_err(|e| decode_err(Box::new(e)))
            }
            None => Err(strict),
        }
    }
}

/// Deserializes `T` from JSON as Python's `json.dumps` writes it, which is not always RFC 8259
/// JSON:
///
/// * `NaN`, `Infinity` and `-Infinity` (`float("nan")`, `float("inf")`): into an `f64` they are
///   the real NaN and infinities; into kombu-rs's `Value` a `Value::Float` holding them; into
///   a `serde_json::Value` (which cannot hold them) `null`; into an integer type an error;
/// * lone UTF-16 surrogates in string escapes (`"\ud800"`, which Python's `str` can hold):
///   each becomes U+FFFD (the replacement character `�`), as a lossy UTF-16 decoder does.
///
/// Strict `serde_json` is tried first, so RFC JSON costs nothing more; only when it fails, and
/// the text uses one of these Python extensions, is it read again by a tolerant reader. Other
/// errors are `serde_json`'s.
///
/// ```
/// let v: Vec<f64> = kombu_serializers::from_python_json(b"[NaN, Infinity, -Infinity, 1.5]")?;
/// assert!(v[0].is_nan());
/// assert_eq!(&v[1..], &[f64::INFINITY, f64::NEG_INFINITY, 1.5]);
/// let s: String = kombu_serializers::from_python_json(br#""a\ud800b""#)?;
/// assert_eq!(s, "a\u{fffd}b");
/// let j: serde_json::Value = kombu_serializers::from_python_json(br#"{"score": NaN}"#)?;
/// assert_eq!(j, serde_json::json!({"score": null}));
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn from_python_json<'de, T: serde::Deserialize<'de>>(
    bytes: &'de [u8],
) -> serde_json::Result<T> {
    match serde_json::from_slice(bytes) {
        Ok(value) => Ok(value),
        Err(strict) => match PyJson::parse_python_only(bytes) {
            Some(tree) => T::deserialize(tree),
            None => Err(strict),
        },
    }
}

/// A document parsed by the tolerant half of [`from_python_json`], for callers that already
/// tried strict `serde_json` on the same bytes and may want more than one type out of one parse
/// (a typed view first, a tree when that does not fit). Deserialize it with
/// [`PythonJson::deserialize`]; what non-finite floats and lone surrogates become is as
/// [`from_python_json`] says.
#[derive(Debug, Clone, PartialEq)]
pub struct PythonJson(PyJson);

/// Parses `bytes` as Python's `json.dumps` writes it, only when it uses one of the extensions
/// strict JSON lacks (`NaN`, `Infinity`, `-Infinity`, lone surrogates); `None` when it does not
/// parse, or parses without needing any (strict `serde_json`'s error is then the one to report).
///
/// ```
/// let doc = kombu_serializers::parse_python_json(br#"{"score": NaN}"#).expect("Python JSON");
/// let scores: std::collections::BTreeMap<String, f64> = doc.deserialize()?;
/// assert!(scores["score"].is_nan());
/// assert!(kombu_serializers::parse_python_json(br#"{"score": 1}"#).is_none()); // strict JSON
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn parse_python_json(bytes: &[u8]) -> Option<PythonJson> {
    PyJson::parse_python_only(bytes).map(PythonJson)
}

impl PythonJson {
    /// Deserializes `T` from the parsed document.
    pub fn deserialize<'de, T: serde::Deserialize<'de>>(self) -> serde_json::Result<T> {
        T::deserialize(self.0)
    }
}

/// A JSON value as Python's `json` module reads it (the tolerant path of
/// [`from_python_json`]): floats may be non-finite, strings are already repaired.
#[derive(Debug, Clone, PartialEq)]
enum PyJson {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Array(Vec<PyJson>),
    Object(Vec<(String, PyJson)>),
}

/// Nesting deeper than this is refused (as `serde_json` does), so hostile input cannot
/// exhaust the stack.
const MAX_DEPTH: usize = 128;

struct PyParser<'a> {
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
    /// Whether a Python extension (a non-finite float, a lone surrogate) was seen.
    extended: bool,
}

impl PyJson {
    /// Parses `bytes` when it is Python JSON that uses one of the extensions strict JSON
    /// lacks; `None` when it does not parse, or parses without needing any (then strict
    /// `serde_json`'s error is the one to report).
    fn parse_python_only(bytes: &[u8]) -> Option<PyJson> {
        let mut parser = PyParser {
            bytes,
            pos: 0,
            depth: 0,
            extended: false,
        };
        let value = parser.value()?;
        parser.skip_ws();
        (parser.pos == bytes.len() && parser.extended).then_some(value)
    }
}

impl PyParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, literal: &[u8]) -> Option<()> {
        let end = self.pos.checked_add(literal.len())?;
        (self.bytes.get(self.pos..end)? == literal).then(|| self.pos = end)
    }

    fn value(&mut self) -> Option<PyJson> {
        self.skip_ws();
        match self.peek()? {
            b'n' => self.eat(b"null").map(|()| PyJson::Null),
            b't' => self.eat(b"true").map(|()| PyJson::Bool(true)),
            b'f' => self.eat(b"false").map(|()| PyJson::Bool(false)),
            b'N' => {
                self.eat(b"NaN")?;
                self.extended = true;
                Some(PyJson::Float(f64::NAN))
            }
            b'I' => {
                self.eat(b"Infinity")?;
                self.extended = true;
                Some(PyJson::Float(f64::INFINITY))
            }
            b'-' if self.bytes.get(self.pos + 1) == Some(&b'I') => {
                self.eat(b"-Infinity")?;
                self.extended = true;
                Some(PyJson::Float(f64::NEG_INFINITY))
            }
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => self.string().map(PyJson::Str),
            b'[' => self.nested(Self::array),
            b'{' => self.nested(Self::object),
            _ => None,
        }
    }

    fn nested(&mut self, parse: fn(&mut Self) -> Option<PyJson>) -> Option<PyJson> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        self.pos += 1;
        let value = parse(self);
        self.depth -= 1;
        value
    }

    fn array(&mut self) -> Option<PyJson> {
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek()? == b']' {
            self.pos += 1;
            return Some(PyJson::Array(items));
        }
        loop {
            items.push(self.value()?);
            self.skip_ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Some(PyJson::Array(items));
                }
                _ => return None,
            }
        }
    }

    fn object(&mut self) -> Option<PyJson> {
        let mut entries = Vec::new();
        self.skip_ws();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(PyJson::Object(entries));
        }
        loop {
            self.skip_ws();
            if self.peek()? != b'"' {
                return None;
            }
            let key = self.string()?;
            self.skip_ws();
            self.eat(b":")?;
            entries.push((key, self.value()?));
            self.skip_ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Some(PyJson::Object(entries));
                }
                _ => return None,
            }
        }
    }

    fn number(&mut self) -> Option<PyJson> {
        let start = self.pos;
        let mut integral = true;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        while let Some(b) = self.peek() {
            match b {
                b'0'..=b'9' => {}
                b'.' | b'e' | b'E' | b'+' | b'-' => integral = false,
                _ => break,
            }
            self.pos += 1;
        }
        let text = std::str::from_utf8(self.bytes.get(start..self.pos)?).ok()?;
        if !text.bytes().any(|b| b.is_ascii_digit()) {
            return None;
        }
        if integral {
            if let Ok(n) = text.parse::<u64>() {
                return Some(PyJson::UInt(n));
            }
            if let Ok(n) = text.parse::<i64>() {
                return Some(PyJson::Int(n));
            }
        }
        // Integers beyond 64 bits read as the nearest float, as serde_json reads them.
        let f = text.parse::<f64>().ok()?;
        f.is_finite().then_some(PyJson::Float(f))
    }

    fn hex4(&mut self) -> Option<u16> {
        let end = self.pos.checked_add(4)?;
        let digits = std::str::from_utf8(self.bytes.get(self.pos..end)?).ok()?;
        let unit = u16::from_str_radix(digits, 16).ok()?;
        self.pos = end;
        Some(unit)
    }

    /// A string, the opening quote next; lone surrogates become U+FFFD.
    fn string(&mut self) -> Option<String> {
        self.pos += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let b = self.peek()?;
            self.pos += 1;
            match b {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let escape = self.peek()?;
                    self.pos += 1;
                    let ch = match escape {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{08}',
                        b'f' => '\u{0c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return None,
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                _ => out.push(b),
            }
        }
    }

    /// The character of a `\u` escape (the `\u` already read), pairing surrogates.
    fn unicode_escape(&mut self) -> Option<char> {
        let unit = self.hex4()?;
        match unit {
            0xD800..=0xDBFF => {
                let rest = self.bytes.get(self.pos..)?;
                if rest.starts_with(b"\\u") {
                    let save = self.pos;
                    self.pos += 2;
                    let low = self.hex4()?;
                    if (0xDC00..=0xDFFF).contains(&low) {
                        let code = 0x10000
                            + ((u32::from(unit) - 0xD800) << 10)
                            + (u32::from(low) - 0xDC00);
                        return char::from_u32(code);
                    }
                    // Not a pair: this one is lone, the next escape is read on its own.
                    self.pos = save;
                }
                self.extended = true;
                Some(char::REPLACEMENT_CHARACTER)
            }
            0xDC00..=0xDFFF => {
                self.extended = true;
                Some(char::REPLACEMENT_CHARACTER)
            }
            _ => char::from_u32(u32::from(unit)),
        }
    }
}

impl<'de> serde::de::IntoDeserializer<'de, serde_json::Error> for PyJson {
    type Deserializer = PyJson;

    fn into_deserializer(self) -> PyJson {
        self
    }
}

impl<'de> serde::Deserializer<'de> for PyJson {
    type Error = serde_json::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> serde_json::Result<V::Value> {
        use serde::de::value::{MapDeserializer, SeqDeserializer};
        match self {
            PyJson::Null => visitor.visit_unit(),
            PyJson::Bool(b) => visitor.visit_bool(b),
            PyJson::Int(n) => visitor.visit_i64(n),
            PyJson::UInt(n) => visitor.visit_u64(n),
            PyJson::Float(f) => visitor.visit_f64(f),
            PyJson::Str(s) => visitor.visit_string(s),
            PyJson::Array(items) => {
                let mut seq = SeqDeserializer::new(items.into_iter());
                let value = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(value)
            }
            PyJson::Object(entries) => {
                let mut map = MapDeserializer::new(entries.into_iter());
                let value = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(value)
            }
        }
    }

    fn deserialize_option<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> serde_json::Result<V::Value> {
        match self {
            PyJson::Null => visitor.visit_none(),
            other => visitor.visit_some(other),
        }
    }

    fn deserialize_newtype_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> serde_json::Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> serde_json::Result<V::Value> {
        use serde::de::{Error as _, IntoDeserializer as _};
        match self {
            PyJson::Str(variant) => visitor.visit_enum(variant.into_deserializer()),
            PyJson::Object(mut entries) if entries.len() == 1 => match entries.pop() {
                Some((variant, value)) => visitor.visit_enum(PyEnum { variant, value }),
                None => Err(serde_json::Error::custom("an enum as an empty object")),
            },
            _ => Err(serde_json::Error::custom(
                "an enum is a string or an object with one key",
            )),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

/// An externally tagged enum value (`{"Variant": value}`) of the tolerant path.
struct PyEnum {
    variant: String,
    value: PyJson,
}

impl<'de> serde::de::EnumAccess<'de> for PyEnum {
    type Error = serde_json::Error;
    type Variant = PyJson;

    fn variant_seed<V: serde::de::DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> serde_json::Result<(V::Value, PyJson)> {
        use serde::de::IntoDeserializer as _;
        let variant = seed.deserialize(self.variant.into_deserializer())?;
        Ok((variant, self.value))
    }
}

impl<'de> serde::de::VariantAccess<'de> for PyJson {
    type Error = serde_json::Error;

    fn unit_variant(self) -> serde_json::Result<()> {
        serde::Deserialize::deserialize(self)
    }

    fn newtype_variant_seed<T: serde::de::DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> serde_json::Result<T::Value> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: serde::de::Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> serde_json::Result<V::Value> {
        serde::Deserializer::deserialize_any(self, visitor)
    }

    fn struct_variant<V: serde::de::Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> serde_json::Result<V::Value> {
        serde::Deserializer::deserialize_any(self, visitor)
    }
}
