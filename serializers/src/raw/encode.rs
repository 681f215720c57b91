//! Encoding for `raw` and `text`: a value that serializes as bytes or a string becomes the body
//! (a sequence of `u8` counts as bytes); anything else is an encode error.

use serde::ser::{Impossible, SerializeSeq, SerializeTuple};

use crate::error::{Error, MessageError, Result};

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
