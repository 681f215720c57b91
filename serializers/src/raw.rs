//! The `raw` (`application/data`) and `text` (`text/plain`) serializers, and the deserializer
//! that offers a body as bytes or text (also used when no decoder is registered for a content
//! type).

mod decode;
mod encode;

#[cfg(test)]
pub(crate) use decode::BodyDeserializer;
pub(crate) use decode::{TextMode, decode_body, visit_body};
pub(crate) use encode::{encode_raw, encode_text};

use crate::error::Result;
use crate::serializer::Serializer;

/// Content type of the `raw` serializer (and of a message with no content type).
pub const RAW_CONTENT_TYPE: &str = "application/data";
/// Content type of the `text` serializer.
pub const TEXT_CONTENT_TYPE: &str = "text/plain";

type Visit<'v> =
    dyn FnMut(&mut dyn erased_serde::Deserializer<'_>) -> Result<(), erased_serde::Error> + 'v;

// ---------------------------------------------------------------------------------------------
// The serializers
// ---------------------------------------------------------------------------------------------

/// The `raw` serializer: content type `application/data`.
///
/// Encodes values that serialize as bytes (`bytes::Bytes`, `serde_bytes::ByteBuf`, and also
/// sequences of `u8` such as `Vec<u8>` or `[u8; N]`) with content encoding `binary`, and values
/// that serialize as a string with content encoding `utf-8` (kombu's `raw_encode`). Anything else
/// fails with [`Error::Encode`](crate::Error::Encode).
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
