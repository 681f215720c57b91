//! Reading JSON as Python's `json` module writes it: RFC 8259 JSON plus `NaN`, `Infinity`,
//! `-Infinity` and lone UTF-16 surrogates. Strict `serde_json` is always tried first; the
//! tolerant reader here runs only when that fails and the text uses one of these extensions.

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
/// let doc = kombu_serializers::parse_python_json(br#"{"score": NaN}"#);
/// assert!(doc.is_some(), "Python's NaN is read");
/// if let Some(doc) = doc {
///     let scores: std::collections::BTreeMap<String, f64> = doc.deserialize()?;
///     assert!(scores["score"].is_nan());
/// }
/// assert!(kombu_serializers::parse_python_json(br#"{"score": 1}"#).is_none()); // strict JSON
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn parse_python_json(bytes: &[u8]) -> Option<PythonJson> {
    PyJson::parse_python_only(bytes).map(PythonJson)
}

impl PythonJson {
    /// The document as a `serde` deserializer (for erased and seeded deserialization).
    pub(crate) fn into_deserializer<'de>(
        self,
    ) -> impl serde::Deserializer<'de, Error = serde_json::Error> {
        self.0
    }

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
