//! The [`Serializer`] trait: what the registry calls to encode and decode a message body.

use crate::error::Result;

/// Object-safe serializer. Registered under a name, a content type and a content encoding.
pub trait Serializer: Send + Sync + std::fmt::Debug + 'static {
    /// The serializer's name, e.g. `"json"`.
    fn name(&self) -> &str;

    /// The MIME type of its output, e.g. `"application/json"`.
    fn content_type(&self) -> &str;

    /// The character set of its output, e.g. `"utf-8"` or `"binary"`.
    fn content_encoding(&self) -> &str;

    /// Whether a consumer with no accept list may decode it (kombu: only json; we also allow
    /// raw/text).
    fn enabled_by_default(&self) -> bool {
        true
    }

    /// Whether this serializer authenticates what it decodes (a signature or MAC checked before
    /// the body is deserialized), like Celery's `auth`. An accept list that names only signing
    /// serializers is [strict](crate::Accept::strict): it does not let the always-trusted
    /// content types through, so a consumer that requires signatures refuses unsigned messages.
    fn is_signing(&self) -> bool {
        false
    }

    /// Serializes `value`.
    fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>>;

    /// Built-in serializers name themselves here so
    /// [`Registry::encode`](crate::Registry::encode) and
    /// [`Registry::decode`](crate::Registry::decode) can call them without type erasure (several
    /// times faster). Custom serializers keep the default, `None`.
    #[doc(hidden)]
    fn builtin(&self) -> Option<Builtin> {
        None
    }

    /// Serializes `value` and returns the content encoding that describes this particular
    /// output. The default returns [`content_encoding`](Self::content_encoding); `raw`
    /// overrides it to say `utf-8` for a string and `binary` for bytes, like kombu.
    /// [`Registry::encode`](crate::Registry::encode) calls this.
    fn encode_with_encoding(
        &self,
        value: &dyn erased_serde::Serialize,
    ) -> Result<(Vec<u8>, String)> {
        Ok((self.encode(value)?, self.content_encoding().to_owned()))
    }

    /// Calls `visit` once with a deserializer over `data`.
    fn decode(
        &self,
        data: &[u8],
        visit: &mut dyn FnMut(
            &mut dyn erased_serde::Deserializer<'_>,
        ) -> Result<(), erased_serde::Error>,
    ) -> Result<()>;

    /// Like [`decode`](Self::decode), knowing the message's content encoding (`None` when the
    /// message had none). The default ignores the encoding; `raw` and `text` use it to decide
    /// between text and bytes. [`Registry::decode`](crate::Registry::decode) calls this.
    fn decode_with_encoding(
        &self,
        data: &[u8],
        content_encoding: Option<&str>,
        visit: &mut dyn FnMut(
            &mut dyn erased_serde::Deserializer<'_>,
        ) -> Result<(), erased_serde::Error>,
    ) -> Result<()> {
        let _ = content_encoding;
        self.decode(data, visit)
    }
}

/// Serializers the registry calls directly, without type erasure.
#[doc(hidden)]
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// [`JsonSerializer`](crate::JsonSerializer).
    Json,
    /// [`MsgpackSerializer`](crate::MsgpackSerializer).
    Msgpack,
    /// [`RawSerializer`](crate::RawSerializer).
    Raw,
    /// [`TextSerializer`](crate::TextSerializer).
    Text,
}
