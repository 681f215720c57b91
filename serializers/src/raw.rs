//! The `raw` (`application/data`) and `text` (`text/plain`) serializers, and the deserializer
//! that offers a body as bytes or text (also used when no decoder is registered for a content
//! type).

use serde::de::value::SeqDeserializer;
use serde::de::{IntoDeserializer, Visitor};
use serde::ser::{Impossible, SerializeSeq, SerializeTuple};

use crate::error::{Error, MessageError, Result};
use crate::serializer::Serializer;

/// Content type of the `raw` serializer (and of a message with no content type).
pub const RAW_CONTENT_TYPE: &str = "application/data";
/// Content type of the `text` serializer.
pub const TEXT_CONTENT_TYPE: &str = "text/plain";

type Visit<'v> =
    dyn FnMut(&mut dyn erased_serde::Deserializer<'_>) -> Result<(), erased_serde::Error> + 'v;

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// What a value serialized to.
pub(crate) enum Payload {
    Bytes(Vec<u8>),
    Text(String),
}

/// A serde serializer that accepts strings and (when `allow_bytes`) byte strings, including
/// sequences and tuples of `u8` such as `Vec<u8>`, `&[u8]` or `[u8; N]`.
struct PayloadSerializer {
    allow_bytes: bool,
    what: &'static str,
}

impl PayloadSerializer {
    fn reject(&self, kind: &str) -> MessageError {
        MessageError(format!("the {} serializer only accepts {kind}", self.what))
    }

    fn unsupported(&self, kind: &str) -> MessageError {
        if self.allow_bytes {
            MessageError(format!(
                "the {} serializer only accepts bytes or a string, got {kind}",
                self.what
            ))
        } else {
            MessageError(format!(
                "the {} serializer only accepts a string, got {kind}",
                self.what
            ))
        }
    }
}

macro_rules! reject_scalar {
    ($($method:ident($ty:ty) => $kind:literal;)*) => {
        $(
            fn $method(self, _v: $ty) -> Result<Payload, MessageError> {
                Err(self.unsupported($kind))
            }
        )*
    };
}

impl serde::Serializer for PayloadSerializer {
    type Ok = Payload;
    type Error = MessageError;
    type SerializeSeq = ByteCollector;
    type SerializeTuple = ByteCollector;
    type SerializeTupleStruct = Impossible<Payload, MessageError>;
    type SerializeTupleVariant = Impossible<Payload, MessageError>;
    type SerializeMap = Impossible<Payload, MessageError>;
    type SerializeStruct = Impossible<Payload, MessageError>;
    type SerializeStructVariant = Impossible<Payload, MessageError>;

    reject_scalar! {
        serialize_bool(bool) => "a bool";
        serialize_i8(i8) => "an integer";
        serialize_i16(i16) => "an integer";
        serialize_i32(i32) => "an integer";
        serialize_i64(i64) => "an integer";
        serialize_i128(i128) => "an integer";
        serialize_u8(u8) => "an integer";
        serialize_u16(u16) => "an integer";
        serialize_u32(u32) => "an integer";
        serialize_u64(u64) => "an integer";
        serialize_u128(u128) => "an integer";
        serialize_f32(f32) => "a float";
        serialize_f64(f64) => "a float";
    }

    fn serialize_char(self, v: char) -> Result<Payload, MessageError> {
        Ok(Payload::Text(v.to_string()))
    }

    fn serialize_str(self, v: &str) -> Result<Payload, MessageError> {
        Ok(Payload::Text(v.to_owned()))
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<Payload, MessageError> {
        if self.allow_bytes {
            Ok(Payload::Bytes(v.to_vec()))
        } else {
            Err(self.unsupported("bytes"))
        }
    }

    fn serialize_none(self) -> Result<Payload, MessageError> {
        Err(self.unsupported("None"))
    }

    fn serialize_some<T: ?Sized + serde::Serialize>(
        self,
        value: &T,
    ) -> Result<Payload, MessageError> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<Payload, MessageError> {
        Err(self.unsupported("a unit value"))
    }

    fn serialize_unit_struct(self, name: &'static str) -> Result<Payload, MessageError> {
        Err(self.unsupported(&format!("unit struct {name}")))
    }

    fn serialize_unit_variant(
        self,
        name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Payload, MessageError> {
        Err(self.unsupported(&format!("enum variant {name}::{variant}")))
    }

    fn serialize_newtype_struct<T: ?Sized + serde::Serialize>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<Payload, MessageError> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: ?Sized + serde::Serialize>(
        self,
        name: &'static str,
        _index: u32,
        variant: &'static str,
        _value: &T,
    ) -> Result<Payload, MessageError> {
        Err(self.unsupported(&format!("enum variant {name}::{variant}")))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<ByteCollector, MessageError> {
        if self.allow_bytes {
            Ok(ByteCollector {
                bytes: Vec::with_capacity(len.unwrap_or(0)),
                what: self.what,
            })
        } else {
            Err(self.unsupported("a sequence"))
        }
    }

    fn serialize_tuple(self, len: usize) -> Result<ByteCollector, MessageError> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(
        self,
        name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, MessageError> {
        Err(self.unsupported(&format!("tuple struct {name}")))
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, MessageError> {
        Err(self.unsupported(&format!("enum variant {name}::{variant}")))
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, MessageError> {
        Err(self.unsupported("a map"))
    }

    fn serialize_struct(
        self,
        name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, MessageError> {
        Err(self.unsupported(&format!("struct {name}")))
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, MessageError> {
        Err(self.unsupported(&format!("enum variant {name}::{variant}")))
    }

    fn collect_str<T: ?Sized + std::fmt::Display>(
        self,
        value: &T,
    ) -> Result<Payload, MessageError> {
        Ok(Payload::Text(value.to_string()))
    }

    fn is_human_readable(&self) -> bool {
        // Byte-oriented: types such as `bytes::Bytes` pick their compact (bytes) form.
        false
    }
}

/// Collects a sequence of `u8` into bytes.
struct ByteCollector {
    bytes: Vec<u8>,
    what: &'static str,
}

impl SerializeSeq for ByteCollector {
    type Ok = Payload;
    type Error = MessageError;

    fn serialize_element<T: ?Sized + serde::Serialize>(
        &mut self,
        value: &T,
    ) -> Result<(), MessageError> {
        let byte = value.serialize(U8Serializer { what: self.what })?;
        self.bytes.push(byte);
        Ok(())
    }

    fn end(self) -> Result<Payload, MessageError> {
        Ok(Payload::Bytes(self.bytes))
    }
}

impl SerializeTuple for ByteCollector {
    type Ok = Payload;
    type Error = MessageError;

    fn serialize_element<T: ?Sized + serde::Serialize>(
        &mut self,
        value: &T,
    ) -> Result<(), MessageError> {
        SerializeSeq::serialize_element(self, value)
    }

    fn end(self) -> Result<Payload, MessageError> {
        SerializeSeq::end(self)
    }
}

/// Accepts exactly one `u8` (an element of a byte sequence).
struct U8Serializer {
    what: &'static str,
}

impl U8Serializer {
    fn reject(self) -> MessageError {
        PayloadSerializer {
            allow_bytes: true,
            what: self.what,
        }
        .reject("bytes or a string (sequences must contain only u8)")
    }
}

macro_rules! reject_element {
    ($($method:ident($ty:ty);)*) => {
        $(
            fn $method(self, _v: $ty) -> Result<u8, MessageError> {
                Err(self.reject())
            }
        )*
    };
}

impl serde::Serializer for U8Serializer {
    type Ok = u8;
    type Error = MessageError;
    type SerializeSeq = Impossible<u8, MessageError>;
    type SerializeTuple = Impossible<u8, MessageError>;
    type SerializeTupleStruct = Impossible<u8, MessageError>;
    type SerializeTupleVariant = Impossible<u8, MessageError>;
    type SerializeMap = Impossible<u8, MessageError>;
    type SerializeStruct = Impossible<u8, MessageError>;
    type SerializeStructVariant = Impossible<u8, MessageError>;

    fn serialize_u8(self, v: u8) -> Result<u8, MessageError> {
        Ok(v)
    }

    reject_element! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_i128(i128);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_u128(u128);
        serialize_f32(f32);
        serialize_f64(f64);
        serialize_char(char);
        serialize_str(&str);
        serialize_bytes(&[u8]);
    }

    fn serialize_none(self) -> Result<u8, MessageError> {
        Err(self.reject())
    }

    fn serialize_some<T: ?Sized + serde::Serialize>(self, _value: &T) -> Result<u8, MessageError> {
        Err(self.reject())
    }

    fn serialize_unit(self) -> Result<u8, MessageError> {
        Err(self.reject())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<u8, MessageError> {
        Err(self.reject())
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
    ) -> Result<u8, MessageError> {
        Err(self.reject())
    }

    fn serialize_newtype_struct<T: ?Sized + serde::Serialize>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<u8, MessageError> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: ?Sized + serde::Serialize>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<u8, MessageError> {
        Err(self.reject())
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, MessageError> {
        Err(self.reject())
    }

    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, MessageError> {
        Err(self.reject())
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, MessageError> {
        Err(self.reject())
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, MessageError> {
        Err(self.reject())
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, MessageError> {
        Err(self.reject())
    }

    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, MessageError> {
        Err(self.reject())
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, MessageError> {
        Err(self.reject())
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// Serializes `value` (a plain or a type-erased `Serialize`) into a [`Payload`].
pub(crate) fn encode_payload<T: serde::Serialize + ?Sized>(
    value: &T,
    allow_bytes: bool,
    name: &'static str,
) -> Result<Payload> {
    value
        .serialize(PayloadSerializer {
            allow_bytes,
            what: name,
        })
        .map_err(|e| Error::Encode {
            serializer: name.to_owned(),
            source: Box::new(e),
        })
}

/// The `raw` serializer's output and content encoding (`binary` for bytes, `utf-8` for text).
pub(crate) fn encode_raw<T: serde::Serialize + ?Sized>(
    value: &T,
) -> Result<(Vec<u8>, &'static str)> {
    match encode_payload(value, true, "raw")? {
        Payload::Bytes(bytes) => Ok((bytes, "binary")),
        Payload::Text(text) => Ok((text.into_bytes(), "utf-8")),
    }
}

/// The `text` serializer's output.
pub(crate) fn encode_text<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    match encode_payload(value, false, "text")? {
        Payload::Text(text) => Ok(text.into_bytes()),
        // Unreachable in practice: bytes are rejected by the payload serializer.
        Payload::Bytes(_) => Err(Error::Encode {
            serializer: "text".to_owned(),
            source: Box::new(MessageError(
                "the text serializer only accepts a string, got bytes".to_owned(),
            )),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// How the bytes of a body are turned into text when text is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TextMode {
    /// `binary` / `ascii-8bit`: offered as bytes; text only if asked for and valid UTF-8.
    Binary,
    /// UTF-8 (also used for `ascii`, a subset).
    Utf8,
    /// ISO-8859-1: every byte is one character.
    Latin1,
    /// A character set this crate cannot decode; asking for text fails.
    Unsupported(String),
}

impl TextMode {
    /// kombu's rule: no encoding means `utf-8`; `binary` and `ascii-8bit` are left as bytes.
    pub(crate) fn from_content_encoding(encoding: Option<&str>) -> Self {
        let encoding = encoding.unwrap_or("utf-8").trim().to_ascii_lowercase();
        match encoding.as_str() {
            "binary" | "ascii-8bit" => TextMode::Binary,
            "utf-8" | "utf8" | "utf_8" | "u8" | "ascii" | "us-ascii" | "us_ascii" => TextMode::Utf8,
            "latin-1" | "latin1" | "latin_1" | "iso-8859-1" | "iso8859-1" | "iso_8859_1" | "l1" => {
                TextMode::Latin1
            }
            _ => TextMode::Unsupported(encoding),
        }
    }
}

/// A serde deserializer over a message body that offers it as bytes or as text.
///
/// `deserialize_any` offers bytes in [`TextMode::Binary`] and text otherwise (falling back to
/// bytes when the body is not valid text). Strings, byte buffers, sequences / tuples of `u8`,
/// options and newtype structs are supported; anything else is offered what `any` offers, so the
/// visitor reports a clear type mismatch.
#[derive(Debug)]
pub(crate) struct BodyDeserializer<'de> {
    data: &'de [u8],
    mode: TextMode,
}

impl<'de> BodyDeserializer<'de> {
    pub(crate) fn new(data: &'de [u8], mode: TextMode) -> Self {
        BodyDeserializer { data, mode }
    }

    fn visit_text<V: Visitor<'de>>(&self, visitor: V) -> Result<V::Value, MessageError> {
        match &self.mode {
            TextMode::Binary | TextMode::Utf8 => match std::str::from_utf8(self.data) {
                Ok(s) => visitor.visit_borrowed_str(s),
                Err(e) => Err(MessageError(format!("body is not valid UTF-8: {e}"))),
            },
            TextMode::Latin1 => {
                visitor.visit_string(self.data.iter().map(|&b| char::from(b)).collect())
            }
            TextMode::Unsupported(enc) => Err(MessageError(format!(
                "cannot decode body as text: unsupported content encoding {enc:?}"
            ))),
        }
    }
}

impl<'de> serde::Deserializer<'de> for BodyDeserializer<'de> {
    type Error = MessageError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, MessageError> {
        match &self.mode {
            TextMode::Binary | TextMode::Unsupported(_) => visitor.visit_borrowed_bytes(self.data),
            TextMode::Utf8 => match std::str::from_utf8(self.data) {
                Ok(s) => visitor.visit_borrowed_str(s),
                Err(_) => visitor.visit_borrowed_bytes(self.data),
            },
            TextMode::Latin1 => self.visit_text(visitor),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, MessageError> {
        self.visit_text(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, MessageError> {
        self.visit_text(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, MessageError> {
        visitor.visit_borrowed_bytes(self.data)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, MessageError> {
        visitor.visit_borrowed_bytes(self.data)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, MessageError> {
        let seq: SeqDeserializer<_, MessageError> = SeqDeserializer::new(self.data.iter().copied());
        serde::Deserializer::deserialize_any(seq, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, MessageError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, MessageError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, MessageError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, MessageError> {
        // A body that is a variant name selects that unit variant (like a JSON string would).
        match &self.mode {
            TextMode::Latin1 => {
                let text: String = self.data.iter().map(|&b| char::from(b)).collect();
                visitor.visit_enum(text.into_deserializer())
            }
            _ => match std::str::from_utf8(self.data) {
                Ok(s) => visitor.visit_enum(s.into_deserializer()),
                Err(e) => Err(MessageError(format!("body is not valid UTF-8: {e}"))),
            },
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, MessageError> {
        visitor.visit_unit()
    }

    fn is_human_readable(&self) -> bool {
        false
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char
        unit unit_struct tuple_struct map struct identifier
    }
}

/// Deserializes `T` from a [`BodyDeserializer`] (the typed twin of [`visit_body`]).
pub(crate) fn decode_body<T: serde::de::DeserializeOwned>(
    data: &[u8],
    mode: TextMode,
    content_type: &str,
) -> Result<T> {
    T::deserialize(BodyDeserializer::new(data, mode)).map_err(|e| Error::Decode {
        content_type: content_type.to_owned(),
        source: Box::new(e),
    })
}

/// Runs `visit` with a [`BodyDeserializer`] and maps errors to [`Error::Decode`].
pub(crate) fn visit_body(
    data: &[u8],
    mode: TextMode,
    content_type: &str,
    visit: &mut Visit<'_>,
) -> Result<()> {
    let de = BodyDeserializer::new(data, mode);
    let mut erased = <dyn erased_serde::Deserializer>::erase(de);
    visit(&mut erased).map_err(|e| Error::Decode {
        content_type: content_type.to_owned(),
        source: Box::new(e),
    })
}

// ---------------------------------------------------------------------------------------------
// The serializers
// ---------------------------------------------------------------------------------------------

/// The `raw` serializer: content type `application/data`.
///
/// Encodes values that serialize as bytes (`bytes::Bytes`, `serde_bytes::ByteBuf`, and also
/// sequences of `u8` such as `Vec<u8>` or `[u8; N]`) with content encoding `binary`, and values
/// that serialize as a string with content encoding `utf-8` (kombu's `raw_encode`). Anything else
/// fails with [`Error::Encode`].
///
/// [`Serializer::decode`] offers the body as bytes (or as text when the target asks for a
/// string); through [`Registry::decode`](crate::Registry::decode) the content encoding decides,
/// as in kombu: text unless it is `binary` / `ascii-8bit`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawSerializer;

impl Serializer for RawSerializer {
    fn name(&self) -> &str {
        "raw"
    }

    fn content_type(&self) -> &str {
        RAW_CONTENT_TYPE
    }

    fn content_encoding(&self) -> &str {
        "binary"
    }

    fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>> {
        Ok(self.encode_with_encoding(value)?.0)
    }

    fn encode_with_encoding(
        &self,
        value: &dyn erased_serde::Serialize,
    ) -> Result<(Vec<u8>, String)> {
        let (body, encoding) = encode_raw(value)?;
        Ok((body, encoding.to_owned()))
    }

    fn builtin(&self) -> Option<crate::serializer::Builtin> {
        Some(crate::serializer::Builtin::Raw)
    }

    fn decode(&self, data: &[u8], visit: &mut Visit<'_>) -> Result<()> {
        visit_body(data, TextMode::Binary, RAW_CONTENT_TYPE, visit)
    }

    fn decode_with_encoding(
        &self,
        data: &[u8],
        content_encoding: Option<&str>,
        visit: &mut Visit<'_>,
    ) -> Result<()> {
        let mode = TextMode::from_content_encoding(content_encoding);
        visit_body(data, mode, RAW_CONTENT_TYPE, visit)
    }
}

/// The `text` serializer: content type `text/plain`, encoding `utf-8` (what kombu uses for a
/// `str` body published without a serializer). Encodes only values that serialize as a string
/// (or a `char`); decodes the body as text (see [`RawSerializer`] for how the content encoding is
/// applied through [`Registry::decode`](crate::Registry::decode)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TextSerializer;

impl Serializer for TextSerializer {
    fn name(&self) -> &str {
        "text"
    }

    fn content_type(&self) -> &str {
        TEXT_CONTENT_TYPE
    }

    fn content_encoding(&self) -> &str {
        "utf-8"
    }

    fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>> {
        encode_text(value)
    }

    fn builtin(&self) -> Option<crate::serializer::Builtin> {
        Some(crate::serializer::Builtin::Text)
    }

    fn decode(&self, data: &[u8], visit: &mut Visit<'_>) -> Result<()> {
        visit_body(data, TextMode::Utf8, TEXT_CONTENT_TYPE, visit)
    }

    fn decode_with_encoding(
        &self,
        data: &[u8],
        content_encoding: Option<&str>,
        visit: &mut Visit<'_>,
    ) -> Result<()> {
        let mode = TextMode::from_content_encoding(content_encoding);
        visit_body(data, mode, TEXT_CONTENT_TYPE, visit)
    }
}
