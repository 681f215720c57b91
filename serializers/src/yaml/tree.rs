//! The intermediate tree: what PyYAML's representer builds from Python objects, built here by
//! a serde serializer (scalars already tagged with the kind they resolve to, map keys sorted as
//! `safe_dump` sorts them).

use std::cmp::Ordering;

/// What a scalar represents, for the implicit-typing check and for sorting map keys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Kind {
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
pub(super) struct Scalar {
    pub(super) text: String,
    pub(super) kind: Kind,
}

impl Kind {
    /// Length of the short form of the node's tag (`!!str`, `!!null`, `!!bool`, `!!int`,
    /// `!!float`), which PyYAML's `check_simple_key` counts even though it is not written.
    pub(super) fn short_tag_len(self) -> usize {
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
pub(super) enum Node {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Scalar, Node)>),
}

/// Error raised while building the tree (custom serializer errors, non-scalar map keys).
#[derive(Debug)]
pub(super) struct TreeError(String);

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
pub(super) fn yaml_float(
    value: f64,
    as_f32: Option<f32>,
) -> std::result::Result<Scalar, TreeError> {
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
pub(super) struct TreeSerializer;

pub(super) type TreeResult = std::result::Result<Node, TreeError>;

pub(super) fn scalar(text: impl Into<String>, kind: Kind) -> TreeResult {
    Ok(Node::Scalar(Scalar::new(text, kind)))
}

pub(super) fn int(value: i128) -> TreeResult {
    scalar(value.to_string(), Kind::Int(value))
}

pub(super) fn uint(value: u128) -> TreeResult {
    match i128::try_from(value) {
        Ok(v) => int(v),
        Err(_) => scalar(value.to_string(), Kind::BigUint(value)),
    }
}

pub(super) fn variant_key(variant: &str) -> Scalar {
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
pub(super) struct SeqBuilder {
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
pub(super) struct MapBuilder {
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
pub(super) enum Num {
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
pub(super) fn sort_keys(entries: &mut [(Scalar, Node)]) {
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
