//! The `yaml` serializer: encodes byte for byte as PyYAML's `yaml.safe_dump` (a port of the
//! relevant parts of PyYAML's representer, resolver and emitter), decodes through
//! `serde_norway` (the maintained fork of the archived `serde_yaml`) with its hostile-input
//! limits.

use std::cmp::Ordering;

use serde_norway::Value;

use crate::error::{Error, Result};
use crate::registry::Serializer;

/// Content type of the `yaml` serializer.
pub const YAML_CONTENT_TYPE: &str = "application/x-yaml";

/// The `yaml` serializer: content type `application/x-yaml`, content encoding `utf-8`.
///
/// # Encoding
///
/// The output is byte-identical to Python kombu's `yaml.safe_dump(value)` (PyYAML 6 defaults:
/// block style, `sort_keys=True`, `allow_unicode=False`, width 80, indent 2) for the value
/// Python would hold:
///
/// * structs and maps are mappings, keys sorted as Python's `sorted()` sorts them (strings by
///   code point, numbers and booleans numerically; keys of mixed kinds keep their order, as
///   PyYAML falls back to insertion order when `sorted()` raises); a sequence that is a mapping
///   value is not indented (`a:\n- x\n`); a mapping in a sequence starts on the dash line
///   (`- a: 1\n  b: 2\n`); empty maps and sequences are `{}` and `[]`;
/// * strings are plain when PyYAML writes them plain, else single-quoted (`'yes'`, `'1:20'`,
///   `'2024-01-02'`, `'- x'`, `''`), else double-quoted with PyYAML's escapes (`"\t"`, and
///   every non-ASCII character as `\xE9`, `\u2713`, `\U0001F600`, `\_` for U+00A0, `\N` for
///   U+0085, as `allow_unicode=False` does); long strings are folded at column 80 exactly as
///   PyYAML folds them; string keys of 123 characters or more (128 counting the `!!str` tag,
///   as PyYAML does), empty keys and multi-line keys use the explicit `? key` form;
/// * integers as `str(int)` (`i128` / `u128` included); floats as `represent_float`: `repr()`
///   with `.0` added before an exponent without a point (`1.0e+16`), `.inf`, `-.inf`, `.nan`,
///   a tie between two shortest digit strings going to the even one as in Python
///   (`1724393011044760.2`; `f32` is written with its own shortest `repr`, as the `json`
///   serializer does); `true` / `false`; `None`, `()` and unit structs as `null`;
/// * a top-level plain scalar is followed by the document end marker (`42\n...\n`), as PyYAML
///   writes it;
/// * unit enum variants are their name; other variants a one-entry mapping
///   `{variant: value}` (as in JSON);
/// * bytes (`bytes::Bytes`, `serde_bytes::ByteBuf`) are a sequence of integers, like
///   `safe_dump(list(data))`, not Python's `!!binary` (which the decoder could not turn back
///   into bytes).
///
/// Map keys must be scalars (a sequence or mapping key is an [`Error::Encode`]).
///
/// Known differences from `safe_dump`: Python compares an integer key with a float key exactly,
/// here through `f64` (only matters for integers beyond 2⁵³ mixed with floats), and NaN keys
/// sort in an unspecified place.
///
/// # Decoding
///
/// Decodes one YAML document with `serde_norway`, as `safe_load` would for the usual data: maps,
/// lists, strings, integers, floats, booleans and `null`, in block or flow style.
///
/// Bytes are not a YAML-native type on either side: a list of integers (what `encode` writes
/// for bytes) decodes into a byte target. Python `bytes`, which `safe_dump` writes as a
/// `!!binary` base64 scalar, are **not** decoded: `serde_norway` drops the `!!binary` tag, so
/// the target receives the base64 text (with its line breaks); decode it yourself if you
/// exchange bytes with Python over YAML.
///
/// Differences from PyYAML to keep in mind: `serde_norway` follows the YAML 1.2 core schema
/// while PyYAML (and therefore the encoder, which must match it) follows YAML 1.1, so
///
/// * the YAML 1.1 words `yes` / `no` / `on` / `off` decode as strings, not booleans;
/// * strings that YAML 1.1 leaves plain but YAML 1.2 reads as numbers are written plain (as
///   PyYAML writes them) and decode here as **numbers**, so decoding them into a `String`
///   fails: octal `0o17`, exponents without a point or without a sign (`1e3`, `1E-5`,
///   `1.5e3`, `.5e3`); Python reads them back as strings;
/// * enum variants with data, written as a `{variant: value}` mapping, are not decoded into a
///   Rust enum (`serde_norway` expects a `!variant` tag).
///
/// Arbitrary Python tags (`!!python/...`) are never constructed (like `safe_load`, which
/// rejects them). A body with more than one document is an error (`safe_load` also refuses
/// it).
///
/// # Hostile input
///
/// Decoding is bounded:
///
/// * **Aliases ("billion laughs")**: `serde_norway` counts alias expansions and fails with
///   "repetition limit exceeded" once they exceed 100 times the number of parser events in the
///   document, so a small document cannot expand exponentially; the work and memory stay
///   proportional to the input size.
/// * **Recursion**: nesting deeper than 128 levels fails with "recursion limit exceeded"
///   instead of overflowing the stack.
///
/// Both surface as [`Error::Decode`].
///
/// **Not enabled by default** ([`enabled_by_default`](Serializer::enabled_by_default) is
/// `false`): kombu disables every serializer but JSON at import time, so a consumer with no
/// accept list refuses `application/x-yaml` with [`Error::ContentDisallowed`]; name it in the
/// accept list (`registry.accept(["yaml"])`) to decode it.
///
/// ```
/// use kombu_serializers::Registry;
/// use std::collections::BTreeMap;
/// let registry = Registry::default();
/// let accept = registry.accept(["yaml"])?;
/// // yaml.safe_dump({"b": ["x", "yes"], "a": 1})
/// let body = b"a: 1\nb:\n- x\n- 'yes'\n";
/// let back: BTreeMap<String, serde_json::Value> =
///     registry.decode(body, Some("application/x-yaml"), Some("utf-8"), Some(&accept))?;
/// assert_eq!(back["b"], serde_json::json!(["x", "yes"]));
/// let encoded = registry.encode(&back, "yaml")?;
/// assert_eq!(&encoded.body[..], &body[..]);
/// # Ok::<(), kombu_serializers::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct YamlSerializer;

impl Serializer for YamlSerializer {
    fn name(&self) -> &str {
        "yaml"
    }

    fn content_type(&self) -> &str {
        YAML_CONTENT_TYPE
    }

    fn content_encoding(&self) -> &str {
        "utf-8"
    }

    /// `false`: kombu disables yaml for consumers without an accept list.
    fn enabled_by_default(&self) -> bool {
        false
    }

    fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>> {
        let tree = erased_serde::serialize(value, TreeSerializer).map_err(|e| Error::Encode {
            serializer: "yaml".to_owned(),
            source: Box::new(e),
        })?;
        let mut emitter = Emitter::new();
        emitter.emit_document(&tree);
        Ok(emitter.out.into_bytes())
    }

    fn decode(
        &self,
        data: &[u8],
        visit: &mut dyn FnMut(
            &mut dyn erased_serde::Deserializer<'_>,
        ) -> Result<(), erased_serde::Error>,
    ) -> Result<()> {
        let decode_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::Decode {
            content_type: YAML_CONTENT_TYPE.to_owned(),
            source,
        };
        // The streaming deserializer enforces the alias and recursion limits while the tree is
        // built (the tree is then at most 128 levels deep). Going through a `Value` lets byte
        // targets accept the list of integers that `encode` writes for bytes.
        let de = serde_norway::Deserializer::from_slice(data);
        let tree: Value =
            serde::Deserialize::deserialize(de).map_err(|e| decode_err(Box::new(e)))?;
        let mut erased = <dyn erased_serde::Deserializer>::erase(tree);
        visit(&mut erased).map_err(|e| decode_err(Box::new(e)))
    }
}

// ---------------------------------------------------------------------------------------------
// The intermediate tree (what PyYAML's representer builds from Python objects).
// ---------------------------------------------------------------------------------------------

/// What a scalar represents, for the implicit-typing check and for sorting map keys.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// `str`: may need quoting so that it is not read back as another type.
    Str,
    /// `None` (`null`).
    Null,
    /// `bool` (`true` / `false`).
    Bool(bool),
    /// An integer that fits an `i128`.
    Int(i128),
    /// An integer above `i128::MAX`.
    BigUint(u128),
    /// A float.
    Float(f64),
}

/// A scalar: its text as PyYAML's representer writes it, and what it represents.
#[derive(Debug, Clone, PartialEq)]
struct Scalar {
    text: String,
    kind: Kind,
}

impl Kind {
    /// Length of the short form of the node's tag (`!!str`, `!!null`, `!!bool`, `!!int`,
    /// `!!float`), which PyYAML's `check_simple_key` counts even though it is not written.
    fn short_tag_len(self) -> usize {
        match self {
            Self::Str | Self::Int(_) | Self::BigUint(_) => 5,
            Self::Null | Self::Bool(_) => 6,
            Self::Float(_) => 7,
        }
    }
}

impl Scalar {
    fn new(text: impl Into<String>, kind: Kind) -> Self {
        Self {
            text: text.into(),
            kind,
        }
    }

    fn float(value: f64, text: String) -> Self {
        Self::new(text, Kind::Float(value))
    }
}

/// A node of the document: a scalar, a sequence or a mapping (keys are scalars).
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Scalar, Node)>),
}

/// Error raised while building the tree (custom serializer errors, non-scalar map keys).
#[derive(Debug)]
struct TreeError(String);

impl std::fmt::Display for TreeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TreeError {}

impl serde::ser::Error for TreeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

/// Formats a float as PyYAML's `represent_float`: `.nan`, `.inf`, `-.inf`, else `repr()` with
/// `.0` inserted before the exponent when there is no decimal point (`1e+16` → `1.0e+16`).
fn yaml_float(value: f64, as_f32: Option<f32>) -> std::result::Result<Scalar, TreeError> {
    let text = if value.is_nan() {
        ".nan".to_owned()
    } else if value == f64::INFINITY {
        ".inf".to_owned()
    } else if value == f64::NEG_INFINITY {
        "-.inf".to_owned()
    } else {
        let mut buf = Vec::with_capacity(32);
        match as_f32 {
            Some(v) => crate::json::write_python_float(&mut buf, v),
            None => crate::json::write_python_float(&mut buf, crate::json::ShortestHalfEven(value)),
        }
        .map_err(|e| TreeError(e.to_string()))?;
        let mut text = String::from_utf8(buf).map_err(|e| TreeError(e.to_string()))?;
        if !text.contains('.')
            && let Some(e) = text.find('e')
        {
            text.insert_str(e, ".0");
        }
        text
    };
    Ok(Scalar::float(value, text))
}

/// Builds a [`Node`] tree from any `Serialize` value (serde's data model → PyYAML's nodes).
///
/// Structs and maps become mappings, sequences / tuples / byte buffers become sequences (bytes
/// as a list of integers), `None` / unit become `null`, unit variants their name, and the other
/// enum variants a one-entry mapping `{variant: value}` (as JSON does).
struct TreeSerializer;

type TreeResult = std::result::Result<Node, TreeError>;

fn scalar(text: impl Into<String>, kind: Kind) -> TreeResult {
    Ok(Node::Scalar(Scalar::new(text, kind)))
}

fn int(value: i128) -> TreeResult {
    scalar(value.to_string(), Kind::Int(value))
}

fn uint(value: u128) -> TreeResult {
    match i128::try_from(value) {
        Ok(v) => int(v),
        Err(_) => scalar(value.to_string(), Kind::BigUint(value)),
    }
}

fn variant_key(variant: &str) -> Scalar {
    Scalar::new(variant, Kind::Str)
}

impl serde::Serializer for TreeSerializer {
    type Ok = Node;
    type Error = TreeError;
    type SerializeSeq = SeqBuilder;
    type SerializeTuple = SeqBuilder;
    type SerializeTupleStruct = SeqBuilder;
    type SerializeTupleVariant = SeqBuilder;
    type SerializeMap = MapBuilder;
    type SerializeStruct = MapBuilder;
    type SerializeStructVariant = MapBuilder;

    fn serialize_bool(self, v: bool) -> TreeResult {
        scalar(if v { "true" } else { "false" }, Kind::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> TreeResult {
        int(v.into())
    }
    fn serialize_i16(self, v: i16) -> TreeResult {
        int(v.into())
    }
    fn serialize_i32(self, v: i32) -> TreeResult {
        int(v.into())
    }
    fn serialize_i64(self, v: i64) -> TreeResult {
        int(v.into())
    }
    fn serialize_i128(self, v: i128) -> TreeResult {
        int(v)
    }
    fn serialize_u8(self, v: u8) -> TreeResult {
        int(v.into())
    }
    fn serialize_u16(self, v: u16) -> TreeResult {
        int(v.into())
    }
    fn serialize_u32(self, v: u32) -> TreeResult {
        int(v.into())
    }
    fn serialize_u64(self, v: u64) -> TreeResult {
        int(v.into())
    }
    fn serialize_u128(self, v: u128) -> TreeResult {
        uint(v)
    }
    fn serialize_f32(self, v: f32) -> TreeResult {
        yaml_float(v.into(), Some(v)).map(Node::Scalar)
    }
    fn serialize_f64(self, v: f64) -> TreeResult {
        yaml_float(v, None).map(Node::Scalar)
    }
    fn serialize_char(self, v: char) -> TreeResult {
        scalar(v, Kind::Str)
    }
    fn serialize_str(self, v: &str) -> TreeResult {
        scalar(v, Kind::Str)
    }
    fn serialize_bytes(self, v: &[u8]) -> TreeResult {
        v.iter()
            .map(|&b| int(b.into()))
            .collect::<std::result::Result<_, _>>()
            .map(Node::Seq)
    }
    fn serialize_none(self) -> TreeResult {
        scalar("null", Kind::Null)
    }
    fn serialize_some<T: ?Sized + serde::Serialize>(self, value: &T) -> TreeResult {
        value.serialize(self)
    }
    fn serialize_unit(self) -> TreeResult {
        scalar("null", Kind::Null)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> TreeResult {
        scalar("null", Kind::Null)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> TreeResult {
        scalar(variant, Kind::Str)
    }
    fn serialize_newtype_struct<T: ?Sized + serde::Serialize>(
        self,
        _name: &'static str,
        value: &T,
    ) -> TreeResult {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + serde::Serialize>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> TreeResult {
        Ok(Node::Map(vec![(
            variant_key(variant),
            value.serialize(self)?,
        )]))
    }
    fn serialize_seq(self, len: Option<usize>) -> std::result::Result<SeqBuilder, TreeError> {
        Ok(SeqBuilder {
            items: Vec::with_capacity(len.unwrap_or(0).min(4096)),
            variant: None,
        })
    }
    fn serialize_tuple(self, len: usize) -> std::result::Result<SeqBuilder, TreeError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> std::result::Result<SeqBuilder, TreeError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> std::result::Result<SeqBuilder, TreeError> {
        Ok(SeqBuilder {
            items: Vec::with_capacity(len.min(4096)),
            variant: Some(variant),
        })
    }
    fn serialize_map(self, len: Option<usize>) -> std::result::Result<MapBuilder, TreeError> {
        Ok(MapBuilder {
            entries: Vec::with_capacity(len.unwrap_or(0).min(4096)),
            key: None,
            variant: None,
        })
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> std::result::Result<MapBuilder, TreeError> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> std::result::Result<MapBuilder, TreeError> {
        Ok(MapBuilder {
            entries: Vec::with_capacity(len.min(4096)),
            key: None,
            variant: Some(variant),
        })
    }
}

/// Collects sequence items (and tuple variants, wrapped in `{variant: [...]}`).
struct SeqBuilder {
    items: Vec<Node>,
    variant: Option<&'static str>,
}

impl SeqBuilder {
    fn push<T: ?Sized + serde::Serialize>(
        &mut self,
        value: &T,
    ) -> std::result::Result<(), TreeError> {
        self.items.push(value.serialize(TreeSerializer)?);
        Ok(())
    }

    fn finish(self) -> TreeResult {
        let seq = Node::Seq(self.items);
        Ok(match self.variant {
            Some(variant) => Node::Map(vec![(variant_key(variant), seq)]),
            None => seq,
        })
    }
}

impl serde::ser::SerializeSeq for SeqBuilder {
    type Ok = Node;
    type Error = TreeError;
    fn serialize_element<T: ?Sized + serde::Serialize>(
        &mut self,
        value: &T,
    ) -> std::result::Result<(), TreeError> {
        self.push(value)
    }
    fn end(self) -> TreeResult {
        self.finish()
    }
}

impl serde::ser::SerializeTuple for SeqBuilder {
    type Ok = Node;
    type Error = TreeError;
    fn serialize_element<T: ?Sized + serde::Serialize>(
        &mut self,
        value: &T,
    ) -> std::result::Result<(), TreeError> {
        self.push(value)
    }
    fn end(self) -> TreeResult {
        self.finish()
    }
}

impl serde::ser::SerializeTupleStruct for SeqBuilder {
    type Ok = Node;
    type Error = TreeError;
    fn serialize_field<T: ?Sized + serde::Serialize>(
        &mut self,
        value: &T,
    ) -> std::result::Result<(), TreeError> {
        self.push(value)
    }
    fn end(self) -> TreeResult {
        self.finish()
    }
}

impl serde::ser::SerializeTupleVariant for SeqBuilder {
    type Ok = Node;
    type Error = TreeError;
    fn serialize_field<T: ?Sized + serde::Serialize>(
        &mut self,
        value: &T,
    ) -> std::result::Result<(), TreeError> {
        self.push(value)
    }
    fn end(self) -> TreeResult {
        self.finish()
    }
}

/// Collects mapping entries, then sorts them as `sort_keys=True` does (and wraps struct
/// variants in `{variant: {...}}`).
struct MapBuilder {
    entries: Vec<(Scalar, Node)>,
    key: Option<Scalar>,
    variant: Option<&'static str>,
}

impl MapBuilder {
    fn insert<T: ?Sized + serde::Serialize>(
        &mut self,
        key: Scalar,
        value: &T,
    ) -> std::result::Result<(), TreeError> {
        self.entries.push((key, value.serialize(TreeSerializer)?));
        Ok(())
    }

    fn finish(mut self) -> TreeResult {
        sort_keys(&mut self.entries);
        let map = Node::Map(self.entries);
        Ok(match self.variant {
            Some(variant) => Node::Map(vec![(variant_key(variant), map)]),
            None => map,
        })
    }
}

impl serde::ser::SerializeMap for MapBuilder {
    type Ok = Node;
    type Error = TreeError;
    fn serialize_key<T: ?Sized + serde::Serialize>(
        &mut self,
        key: &T,
    ) -> std::result::Result<(), TreeError> {
        match key.serialize(TreeSerializer)? {
            Node::Scalar(key) => {
                self.key = Some(key);
                Ok(())
            }
            Node::Seq(_) | Node::Map(_) => Err(TreeError(
                "yaml map keys must be strings, numbers, booleans or null".to_owned(),
            )),
        }
    }
    fn serialize_value<T: ?Sized + serde::Serialize>(
        &mut self,
        value: &T,
    ) -> std::result::Result<(), TreeError> {
        let key = self
            .key
            .take()
            .ok_or_else(|| TreeError("serialize_value called before serialize_key".to_owned()))?;
        self.insert(key, value)
    }
    fn end(self) -> TreeResult {
        self.finish()
    }
}

impl serde::ser::SerializeStruct for MapBuilder {
    type Ok = Node;
    type Error = TreeError;
    fn serialize_field<T: ?Sized + serde::Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> std::result::Result<(), TreeError> {
        self.insert(Scalar::new(key, Kind::Str), value)
    }
    fn end(self) -> TreeResult {
        self.finish()
    }
}

impl serde::ser::SerializeStructVariant for MapBuilder {
    type Ok = Node;
    type Error = TreeError;
    fn serialize_field<T: ?Sized + serde::Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> std::result::Result<(), TreeError> {
        self.insert(Scalar::new(key, Kind::Str), value)
    }
    fn end(self) -> TreeResult {
        self.finish()
    }
}

/// A number as Python compares it (`bool` is an `int`).
#[derive(Clone, Copy)]
enum Num {
    Int(i128),
    BigUint(u128),
    Float(f64),
}

impl Num {
    fn of(kind: Kind) -> Option<Self> {
        match kind {
            Kind::Bool(b) => Some(Self::Int(b.into())),
            Kind::Int(i) => Some(Self::Int(i)),
            Kind::BigUint(u) => Some(Self::BigUint(u)),
            Kind::Float(f) => Some(Self::Float(f)),
            Kind::Str | Kind::Null => None,
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Self::Int(i) => i as f64,
            Self::BigUint(u) => u as f64,
            Self::Float(f) => f,
        }
    }

    fn cmp(self, other: Self) -> Ordering {
        match (self, other) {
            (Self::Int(a), Self::Int(b)) => a.cmp(&b),
            (Self::BigUint(a), Self::BigUint(b)) => a.cmp(&b),
            (Self::Int(_), Self::BigUint(_)) => Ordering::Less,
            (Self::BigUint(_), Self::Int(_)) => Ordering::Greater,
            (a, b) => a
                .as_f64()
                .partial_cmp(&b.as_f64())
                .unwrap_or(Ordering::Equal),
        }
    }
}

/// Sorts mapping entries as PyYAML's `represent_mapping` with `sort_keys=True`: `sorted()` of
/// the items, which compares strings by code point (the UTF-8 byte order) and numbers (`bool`,
/// `int`, `float`) numerically. Keys of mixed kinds (a string and a number, or `None` and
/// anything) make Python's `sorted()` raise `TypeError`, which PyYAML ignores: the entries then
/// keep their serialization order.
fn sort_keys(entries: &mut [(Scalar, Node)]) {
    if entries.len() < 2 {
        return;
    }
    if entries.iter().all(|(k, _)| k.kind == Kind::Str) {
        entries.sort_by(|(a, _), (b, _)| a.text.cmp(&b.text));
    } else if entries.iter().all(|(k, _)| Num::of(k.kind).is_some()) {
        entries.sort_by(|(a, _), (b, _)| match (Num::of(a.kind), Num::of(b.kind)) {
            (Some(a), Some(b)) => a.cmp(b),
            _ => Ordering::Equal,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// PyYAML's implicit resolver (YAML 1.1 as in `yaml/resolver.py`).
// ---------------------------------------------------------------------------------------------

/// A cursor over ASCII bytes for the hand-written versions of PyYAML's resolver regexps.
struct Cur<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cur<'a> {
    fn new(s: &'a str) -> Self {
        Self {
            s: s.as_bytes(),
            i: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn done(&self) -> bool {
        self.i >= self.s.len()
    }

    /// Consumes one byte matching `pred`.
    fn eat(&mut self, pred: impl Fn(u8) -> bool) -> bool {
        match self.peek() {
            Some(b) if pred(b) => {
                self.i += 1;
                true
            }
            _ => false,
        }
    }

    /// Consumes the literal `lit` if it comes next.
    fn eat_str(&mut self, lit: &str) -> bool {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    /// Consumes bytes matching `pred` (greedy); returns how many.
    fn eat_while(&mut self, pred: impl Fn(u8) -> bool) -> usize {
        let start = self.i;
        while self.eat(&pred) {}
        self.i - start
    }

    fn sign(&mut self) {
        self.eat(|b| b == b'-' || b == b'+');
    }
}

fn digit(b: u8) -> bool {
    b.is_ascii_digit()
}

fn digit_(b: u8) -> bool {
    b.is_ascii_digit() || b == b'_'
}

/// `(?::[0-5]?[0-9])+` followed by what `rest` accepts: the sexagesimal groups, each one or two
/// digits (the first of two at most 5). Greedy is exact here: a group ends at `:` or `.` / end.
fn sexagesimal_groups(c: &mut Cur<'_>) -> bool {
    let mut groups = 0;
    while c.eat(|b| b == b':') {
        let start = c.i;
        let n = c.eat_while(digit);
        let ok = match n {
            1 => true,
            2 => c.s[start] <= b'5',
            _ => false,
        };
        if !ok {
            return false;
        }
        groups += 1;
    }
    groups > 0
}

fn octal_(b: u8) -> bool {
    (b'0'..=b'7').contains(&b) || b == b'_'
}

fn nonzero_digit(b: u8) -> bool {
    (b'1'..=b'9').contains(&b)
}

/// Matches one alternative of a resolver regexp against the whole of `s`: `pattern` consumes
/// from the cursor (after an optional sign when `signed`) and must reach the end.
fn whole_match(s: &str, signed: bool, pattern: impl Fn(&mut Cur<'_>) -> bool) -> bool {
    let mut c = Cur::new(s);
    if signed {
        c.sign();
    }
    pattern(&mut c) && c.done()
}

/// `tag:yaml.org,2002:int`.
fn is_yaml11_int(s: &str) -> bool {
    // [-+]?0b[0-1_]+
    whole_match(s, true, |c| {
        c.eat_str("0b") && c.eat_while(|b| b == b'0' || b == b'1' || b == b'_') > 0
    })
    // [-+]?0[0-7_]+
    || whole_match(s, true, |c| c.eat(|b| b == b'0') && c.eat_while(octal_) > 0)
    // [-+]?(?:0|[1-9][0-9_]*)
    || whole_match(s, true, |c| c.eat(|b| b == b'0'))
    || whole_match(s, true, |c| {
        let first = c.eat(nonzero_digit);
        c.eat_while(digit_);
        first
    })
    // [-+]?0x[0-9a-fA-F_]+
    || whole_match(s, true, |c| {
        c.eat_str("0x") && c.eat_while(|b| b.is_ascii_hexdigit() || b == b'_') > 0
    })
    // [-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+
    || whole_match(s, true, |c| {
        let first = c.eat(nonzero_digit);
        c.eat_while(digit_);
        first && sexagesimal_groups(c)
    })
}

/// `(?:[eE][-+][0-9]+)?`.
fn optional_exponent(c: &mut Cur<'_>) -> bool {
    !c.eat(|b| b == b'e' || b == b'E')
        || (c.eat(|b| b == b'-' || b == b'+') && c.eat_while(digit) > 0)
}

/// `tag:yaml.org,2002:float`.
fn is_yaml11_float(s: &str) -> bool {
    // [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
    whole_match(s, true, |c| {
        let first = c.eat(digit);
        c.eat_while(digit_);
        let point = c.eat(|b| b == b'.');
        c.eat_while(digit_);
        first && point && optional_exponent(c)
    })
    // \.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
    || whole_match(s, false, |c| {
        let head = c.eat(|b| b == b'.') && c.eat(digit);
        c.eat_while(digit_);
        head && optional_exponent(c)
    })
    // [-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    || whole_match(s, true, |c| {
        let first = c.eat(digit);
        c.eat_while(digit_);
        let head = first && sexagesimal_groups(c) && c.eat(|b| b == b'.');
        c.eat_while(digit_);
        head
    })
    // [-+]?\.(?:inf|Inf|INF)
    || whole_match(s, true, |c| {
        c.eat(|b| b == b'.') && (c.eat_str("inf") || c.eat_str("Inf") || c.eat_str("INF"))
    })
    // \.(?:nan|NaN|NAN)
    || matches!(s, ".nan" | ".NaN" | ".NAN")
}

/// `tag:yaml.org,2002:timestamp`.
fn is_yaml11_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    // [0-9]{4}-[0-9]{2}-[0-9]{2}
    if b.len() == 10
        && b.iter().enumerate().all(|(i, &ch)| {
            if i == 4 || i == 7 {
                ch == b'-'
            } else {
                digit(ch)
            }
        })
    {
        return true;
    }
    // [0-9]{4}-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9]{2}:[0-9]{2}
    // (?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?
    let mut c = Cur::new(s);
    let one_or_two = |c: &mut Cur<'_>| (1..=2).contains(&c.eat_while(digit));
    let exactly_two = |c: &mut Cur<'_>| c.eat(digit) && c.eat(digit);
    let blank = |b: u8| b == b' ' || b == b'\t';
    let head = c.eat_while(digit) == 4
        && c.eat(|b| b == b'-')
        && one_or_two(&mut c)
        && c.eat(|b| b == b'-')
        && one_or_two(&mut c)
        && (c.eat(|b| b == b'T' || b == b't') || c.eat_while(blank) > 0)
        && one_or_two(&mut c)
        && c.eat(|b| b == b':')
        && exactly_two(&mut c)
        && c.eat(|b| b == b':')
        && exactly_two(&mut c);
    if !head {
        return false;
    }
    if c.eat(|b| b == b'.') {
        c.eat_while(digit);
    }
    if c.done() {
        return true;
    }
    c.eat_while(blank);
    if c.eat(|b| b == b'Z') {
        return c.done();
    }
    c.eat(|b| b == b'-' || b == b'+')
        && one_or_two(&mut c)
        && (c.done() || (c.eat(|b| b == b':') && exactly_two(&mut c) && c.done()))
}

/// Whether PyYAML's implicit resolvers give `s` (`^...$`) a tag other than `str`: bool, int,
/// float, null, timestamp, merge (`<<`), value (`=`) or the documentation-only `yaml` (`!`,
/// `&`, `*`). Those strings cannot be written plain.
fn resolves_to_non_str(s: &str) -> bool {
    fn whole(s: &str) -> bool {
        matches!(
            s,
            "yes"
                | "Yes"
                | "YES"
                | "no"
                | "No"
                | "NO"
                | "true"
                | "True"
                | "TRUE"
                | "false"
                | "False"
                | "FALSE"
                | "on"
                | "On"
                | "ON"
                | "off"
                | "Off"
                | "OFF"
                | "~"
                | "null"
                | "Null"
                | "NULL"
                | ""
                | "<<"
                | "="
                | "!"
                | "&"
                | "*"
        ) || is_yaml11_float(s)
            || is_yaml11_int(s)
            || is_yaml11_timestamp(s)
    }
    // Python's `$` also matches before a final newline; the resolvers are picked by the first
    // character, so a lone "\n" has none.
    whole(s) || (s.len() > 1 && s.strip_suffix('\n').is_some_and(whole))
}

// ---------------------------------------------------------------------------------------------
// PyYAML's emitter (`yaml/emitter.py`) with `safe_dump`'s settings.
// ---------------------------------------------------------------------------------------------

const BEST_INDENT: usize = 2;
const BEST_WIDTH: usize = 80;

fn is_break(ch: char) -> bool {
    matches!(ch, '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

fn is_blank_or_break(ch: char) -> bool {
    matches!(
        ch,
        '\0' | ' ' | '\t' | '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}'
    )
}

/// `Emitter.analyze_scalar` (with `allow_unicode=False`), reduced to what style choice needs.
#[derive(Debug, Clone, Copy)]
struct Analysis {
    empty: bool,
    multiline: bool,
    allow_block_plain: bool,
    allow_single_quoted: bool,
}

fn analyze_scalar(scalar: &[char]) -> Analysis {
    if scalar.is_empty() {
        return Analysis {
            empty: true,
            multiline: false,
            allow_block_plain: true,
            allow_single_quoted: true,
        };
    }
    let mut block_indicators = false;
    let mut line_breaks = false;
    let mut special_characters = false;
    let mut leading_space = false;
    let mut leading_break = false;
    let mut trailing_space = false;
    let mut trailing_break = false;
    let mut break_space = false;
    let mut space_break = false;
    if scalar.starts_with(&['-', '-', '-']) || scalar.starts_with(&['.', '.', '.']) {
        block_indicators = true;
    }
    let mut preceded_by_whitespace = true;
    let mut followed_by_whitespace = scalar.get(1).is_none_or(|&c| is_blank_or_break(c));
    let mut previous_space = false;
    let mut previous_break = false;
    let last = scalar.len() - 1;
    for (index, &ch) in scalar.iter().enumerate() {
        if index == 0 {
            if "#,[]{}&*!|>'\"%@`".contains(ch) {
                block_indicators = true;
            }
            if (ch == '?' || ch == ':') && followed_by_whitespace {
                block_indicators = true;
            }
            if ch == '-' && followed_by_whitespace {
                block_indicators = true;
            }
        } else {
            if ch == ':' && followed_by_whitespace {
                block_indicators = true;
            }
            if ch == '#' && preceded_by_whitespace {
                block_indicators = true;
            }
        }
        if is_break(ch) {
            line_breaks = true;
        }
        // With allow_unicode=False every character outside printable ASCII (and '\n') is
        // special: only double quotes can escape it.
        if !(ch == '\n' || (' '..='~').contains(&ch)) {
            special_characters = true;
        }
        if ch == ' ' {
            if index == 0 {
                leading_space = true;
            }
            if index == last {
                trailing_space = true;
            }
            if previous_break {
                break_space = true;
            }
            previous_space = true;
            previous_break = false;
        } else if is_break(ch) {
            if index == 0 {
                leading_break = true;
            }
            if index == last {
                trailing_break = true;
            }
            if previous_space {
                space_break = true;
            }
            previous_space = false;
            previous_break = true;
        } else {
            previous_space = false;
            previous_break = false;
        }
        preceded_by_whitespace = is_blank_or_break(ch);
        followed_by_whitespace = scalar.get(index + 2).is_none_or(|&c| is_blank_or_break(c));
    }
    let mut allow_block_plain = true;
    let mut allow_single_quoted = true;
    if leading_space || leading_break || trailing_space || trailing_break {
        allow_block_plain = false;
    }
    if break_space {
        allow_block_plain = false;
        allow_single_quoted = false;
    }
    if space_break || special_characters {
        allow_block_plain = false;
        allow_single_quoted = false;
    }
    if line_breaks || block_indicators {
        allow_block_plain = false;
    }
    Analysis {
        empty: false,
        multiline: line_breaks,
        allow_block_plain,
        allow_single_quoted,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Plain,
    SingleQuoted,
    DoubleQuoted,
}

/// The emitter's state for one document. Collections are block style except empty ones (`{}`,
/// `[]`, PyYAML's flow style); since those have no children, no scalar is ever emitted at a
/// flow level, so the flow-level state is not needed.
struct Emitter {
    out: String,
    indents: Vec<Option<usize>>,
    indent: Option<usize>,
    column: usize,
    whitespace: bool,
    indention: bool,
    open_ended: bool,
    root_context: bool,
    mapping_context: bool,
    simple_key_context: bool,
}

impl Emitter {
    fn new() -> Self {
        Self {
            out: String::with_capacity(128),
            indents: Vec::new(),
            indent: None,
            column: 0,
            whitespace: true,
            indention: true,
            open_ended: false,
            root_context: false,
            mapping_context: false,
            simple_key_context: false,
        }
    }

    /// Stream start, an implicit document start (`safe_dump` writes no `---`), the root node,
    /// the document end, and the stream end (`...` after a plain root scalar).
    fn emit_document(&mut self, root: &Node) {
        self.expect_node(root, true, false, false);
        self.write_indent();
        if self.open_ended {
            self.write_indicator("...", true, false, false);
            self.write_indent();
        }
    }

    fn increase_indent(&mut self, flow: bool, indentless: bool) {
        self.indents.push(self.indent);
        match self.indent {
            None => self.indent = Some(if flow { BEST_INDENT } else { 0 }),
            Some(indent) if !indentless => self.indent = Some(indent + BEST_INDENT),
            Some(_) => {}
        }
    }

    fn pop_indent(&mut self) {
        self.indent = self.indents.pop().flatten();
    }

    fn expect_node(&mut self, node: &Node, root: bool, mapping: bool, simple_key: bool) {
        self.root_context = root;
        self.mapping_context = mapping;
        self.simple_key_context = simple_key;
        match node {
            Node::Scalar(s) => self.expect_scalar(s),
            Node::Seq(items) if items.is_empty() => {
                self.write_indicator("[", true, true, false);
                self.write_indicator("]", false, false, false);
            }
            Node::Map(entries) if entries.is_empty() => {
                self.write_indicator("{", true, true, false);
                self.write_indicator("}", false, false, false);
            }
            Node::Seq(items) => {
                let indentless = self.mapping_context && !self.indention;
                self.increase_indent(false, indentless);
                for item in items {
                    self.write_indent();
                    self.write_indicator("-", true, false, true);
                    self.expect_node(item, false, false, false);
                }
                self.pop_indent();
            }
            Node::Map(entries) => {
                self.increase_indent(false, false);
                for (key, value) in entries {
                    self.write_indent();
                    // check_simple_key: a non-empty single-line scalar whose length plus that
                    // of its (unwritten) short tag (`!!str`, `!!int`, ...) is under 128.
                    let simple = !key.text.is_empty()
                        && !key.text.chars().any(is_break)
                        && key.text.chars().count() + key.kind.short_tag_len() < 128;
                    if simple {
                        self.root_context = false;
                        self.mapping_context = true;
                        self.simple_key_context = true;
                        self.expect_scalar(key);
                        self.write_indicator(":", false, false, false);
                    } else {
                        self.write_indicator("?", true, false, true);
                        self.root_context = false;
                        self.mapping_context = true;
                        self.simple_key_context = false;
                        self.expect_scalar(key);
                        self.write_indent();
                        self.write_indicator(":", true, false, true);
                    }
                    self.expect_node(value, false, true, false);
                }
                self.pop_indent();
            }
        }
    }

    fn expect_scalar(&mut self, scalar: &Scalar) {
        self.increase_indent(true, false);
        let text: Vec<char> = scalar.text.chars().collect();
        let analysis = analyze_scalar(&text);
        // `implicit[0]`: the plain text would resolve to the node's own tag. For non-strings the
        // representer's text always does; a string must not look like a bool, int, ...
        let implicit = scalar.kind != Kind::Str || !resolves_to_non_str(&scalar.text);
        let simple_key = self.simple_key_context;
        let style = if implicit
            && !(simple_key && (analysis.empty || analysis.multiline))
            && analysis.allow_block_plain
        {
            Style::Plain
        } else if analysis.allow_single_quoted && !(simple_key && analysis.multiline) {
            Style::SingleQuoted
        } else {
            Style::DoubleQuoted
        };
        let split = !simple_key;
        match style {
            Style::Plain => self.write_plain(&text, split),
            Style::SingleQuoted => self.write_single_quoted(&text, split),
            Style::DoubleQuoted => self.write_double_quoted(&text, split),
        }
        self.pop_indent();
    }

    fn write_str(&mut self, data: &str) {
        self.column += data.chars().count();
        self.out.push_str(data);
    }

    /// Writes `text[start..end]` (nothing if the range is empty or out of bounds, which the
    /// callers' invariants exclude).
    fn write_chars(&mut self, text: &[char], start: usize, end: usize) {
        let data = text.get(start..end).unwrap_or_default();
        self.column += data.len();
        self.out.extend(data);
    }

    fn write_indicator(
        &mut self,
        indicator: &str,
        need_whitespace: bool,
        whitespace: bool,
        indention: bool,
    ) {
        if !self.whitespace && need_whitespace {
            self.write_str(" ");
        }
        self.write_str(indicator);
        self.whitespace = whitespace;
        self.indention = self.indention && indention;
        self.open_ended = false;
    }

    fn write_indent(&mut self) {
        let indent = self.indent.unwrap_or(0);
        if !self.indention || self.column > indent || (self.column == indent && !self.whitespace) {
            self.write_line_break(None);
        }
        if self.column < indent {
            self.whitespace = true;
            let pad = indent - self.column;
            self.out.extend(std::iter::repeat_n(' ', pad));
            self.column = indent;
        }
    }

    fn write_line_break(&mut self, data: Option<char>) {
        self.whitespace = true;
        self.indention = true;
        self.column = 0;
        self.out.push(data.unwrap_or('\n'));
    }

    /// Writes the line breaks `text[start..end]` as PyYAML does inside plain and single-quoted
    /// scalars (a leading `\n` is doubled, since one break alone folds into a space).
    fn write_breaks(&mut self, text: &[char], start: usize, end: usize) {
        if text.get(start) == Some(&'\n') {
            self.write_line_break(None);
        }
        for &br in text.get(start..end).unwrap_or_default() {
            self.write_line_break((br != '\n').then_some(br));
        }
    }

    fn write_plain(&mut self, text: &[char], split: bool) {
        if self.root_context {
            self.open_ended = true;
        }
        if text.is_empty() {
            return;
        }
        if !self.whitespace {
            self.write_str(" ");
        }
        self.whitespace = false;
        self.indention = false;
        let (mut spaces, mut breaks) = (false, false);
        let (mut start, mut end) = (0, 0);
        while end <= text.len() {
            let ch = text.get(end).copied();
            if spaces {
                if ch != Some(' ') {
                    if start + 1 == end && self.column > BEST_WIDTH && split {
                        self.write_indent();
                        self.whitespace = false;
                        self.indention = false;
                    } else {
                        self.write_chars(text, start, end);
                    }
                    start = end;
                }
            } else if breaks {
                if !ch.is_some_and(is_break) {
                    self.write_breaks(text, start, end);
                    self.write_indent();
                    self.whitespace = false;
                    self.indention = false;
                    start = end;
                }
            } else if ch.is_none_or(|c| c == ' ' || is_break(c)) {
                self.write_chars(text, start, end);
                start = end;
            }
            if let Some(c) = ch {
                spaces = c == ' ';
                breaks = is_break(c);
            }
            end += 1;
        }
    }

    fn write_single_quoted(&mut self, text: &[char], split: bool) {
        self.write_indicator("'", true, false, false);
        let (mut spaces, mut breaks) = (false, false);
        let (mut start, mut end) = (0, 0);
        while end <= text.len() {
            let ch = text.get(end).copied();
            if spaces {
                if ch != Some(' ') {
                    if start + 1 == end
                        && self.column > BEST_WIDTH
                        && split
                        && start != 0
                        && end != text.len()
                    {
                        self.write_indent();
                    } else {
                        self.write_chars(text, start, end);
                    }
                    start = end;
                }
            } else if breaks {
                if !ch.is_some_and(is_break) {
                    self.write_breaks(text, start, end);
                    self.write_indent();
                    start = end;
                }
            } else if ch.is_none_or(|c| c == ' ' || c == '\'' || is_break(c)) && start < end {
                self.write_chars(text, start, end);
                start = end;
            }
            if ch == Some('\'') {
                self.write_str("''");
                start = end + 1;
            }
            if let Some(c) = ch {
                spaces = c == ' ';
                breaks = is_break(c);
            }
            end += 1;
        }
        self.write_indicator("'", false, false, false);
    }

    fn write_double_quoted(&mut self, text: &[char], split: bool) {
        self.write_indicator("\"", true, false, false);
        let (mut start, mut end) = (0usize, 0usize);
        while end <= text.len() {
            let ch = text.get(end).copied();
            if ch.is_none_or(|c| c == '"' || c == '\\' || !(' '..='~').contains(&c)) {
                if start < end {
                    self.write_chars(text, start, end);
                    start = end;
                }
                if let Some(c) = ch {
                    let escaped = match c {
                        '\0' => "\\0".to_owned(),
                        '\x07' => "\\a".to_owned(),
                        '\x08' => "\\b".to_owned(),
                        '\t' => "\\t".to_owned(),
                        '\n' => "\\n".to_owned(),
                        '\x0b' => "\\v".to_owned(),
                        '\x0c' => "\\f".to_owned(),
                        '\r' => "\\r".to_owned(),
                        '\x1b' => "\\e".to_owned(),
                        '"' => "\\\"".to_owned(),
                        '\\' => "\\\\".to_owned(),
                        '\u{85}' => "\\N".to_owned(),
                        '\u{a0}' => "\\_".to_owned(),
                        '\u{2028}' => "\\L".to_owned(),
                        '\u{2029}' => "\\P".to_owned(),
                        c if u32::from(c) <= 0xff => format!("\\x{:02X}", u32::from(c)),
                        c if u32::from(c) <= 0xffff => format!("\\u{:04X}", u32::from(c)),
                        c => format!("\\U{:08X}", u32::from(c)),
                    };
                    self.write_str(&escaped);
                    start = end + 1;
                }
            }
            // Python: `self.column + (end - start) > self.best_width`, where `end - start` is -1
            // right after an escape.
            if 0 < end
                && end + 1 < text.len()
                && (ch == Some(' ') || start >= end)
                && self.column + end > BEST_WIDTH + start
                && split
            {
                if start < end {
                    self.write_chars(text, start, end);
                    start = end;
                }
                self.write_str("\\");
                self.write_indent();
                self.whitespace = false;
                self.indention = false;
                if text.get(start) == Some(&' ') {
                    self.write_str("\\");
                }
            }
            end += 1;
        }
        self.write_indicator("\"", false, false, false);
    }
}
