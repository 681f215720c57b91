//! The `json` serializer and a `serde_json` formatter that writes exactly what Python's
//! `json.dumps` writes with its default settings.

use std::io;

use serde_json::ser::{CharEscape, Formatter};

use crate::error::{Error, Result};
use crate::serializer::Serializer;

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
/// writes beyond RFC JSON, read as [`from_python_json`](crate::from_python_json) reads it: `NaN` / `Infinity` /
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

    fn builtin(&self) -> Option<crate::serializer::Builtin> {
        Some(crate::serializer::Builtin::Json)
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
        match crate::python_json::parse_python_json(data) {
            Some(doc) => {
                let mut erased = <dyn erased_serde::Deserializer>::erase(doc.into_deserializer());
                visit(&mut erased).map_err(|e| decode_err(Box::new(e)))
            }
            None => Err(strict),
        }
    }
}
