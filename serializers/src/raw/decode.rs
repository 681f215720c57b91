//! Decoding for `raw`, `text` and bodies with no registered decoder: the body offered as bytes
//! or as text, as the content encoding (or the target type) asks.

use serde::de::value::SeqDeserializer;
use serde::de::{IntoDeserializer, Visitor};

use crate::error::{Error, MessageError, Result};

use super::Visit;

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
