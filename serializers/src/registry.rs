//! The [`Registry`] that holds serializers and compressors by name, content type and alias.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;

use crate::accept::{ALWAYS_TRUSTED, Accept};
use crate::compression::{
    BrotliCompressor, Bzip2Compressor, Compressor, LzmaCompressor, ZlibCompressor, ZstdCompressor,
};
use crate::error::{Error, Result};
use crate::json::JsonSerializer;
use crate::msgpack::MsgpackSerializer;
use crate::raw::{RAW_CONTENT_TYPE, RawSerializer, TextMode, TextSerializer, visit_body};
use crate::serializer::{Builtin, Serializer};
use crate::yaml::YamlSerializer;

/// Maximum decompressed size used when a caller does not choose one: 64 MiB.
pub const DEFAULT_MAX_DECOMPRESSED_SIZE: usize = 64 * 1024 * 1024;

/// Result of encoding a value.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// The serialized bytes.
    pub body: Bytes,
    /// MIME type of `body`, e.g. `application/json` (borrowed for the built-in serializers, so
    /// encoding allocates nothing but the body).
    pub content_type: Cow<'static, str>,
    /// Character set of `body`, e.g. `utf-8` or `binary`.
    pub content_encoding: Cow<'static, str>,
}

#[derive(Debug, Clone, Default)]
struct Inner {
    /// In registration order; lookups by content type prefer the most recent.
    serializers: Vec<Arc<dyn Serializer>>,
    compressors: Vec<Arc<dyn Compressor>>,
    /// Content types whose decoder (the most recent serializer of that type) is a built-in,
    /// rebuilt on every registration: decoding the common types skips the scan and the
    /// virtual calls.
    builtin_types: Vec<(String, Builtin)>,
}

impl Inner {
    fn rebuild_builtin_types(&mut self) {
        let mut seen: Vec<&str> = Vec::new();
        let mut table = Vec::new();
        for s in self.serializers.iter().rev() {
            let content_type = s.content_type();
            if seen.contains(&content_type) {
                continue; // a later serializer decodes this type
            }
            seen.push(content_type);
            if let Some(builtin) = s.builtin() {
                table.push((content_type.to_owned(), builtin));
            }
        }
        self.builtin_types = table;
    }

    fn builtin_for(&self, content_type: &str) -> Option<Builtin> {
        self.builtin_types
            .iter()
            .find(|(t, _)| t == content_type)
            .map(|(_, b)| *b)
    }
}

/// The set of serializers and compressors known to a connection, with kombu's lookup, accept
/// and decode rules.
///
/// Cheap to clone (an `Arc` inside; registering on a shared clone copies it first).
/// [`Registry::default`] holds the `json`, `raw`, `text`, `msgpack` and `yaml` serializers
/// (`msgpack` and `yaml` are not enabled by default: a consumer must put them in its accept
/// list), with the cargo feature `pickle` also the decode-only `pickle` serializer (not enabled
/// by default either), and the `zlib`, `bzip2`, `lzma`, `brotli` and `zstd` compressors.
///
/// ```
/// use kombu_serializers::Registry;
/// let registry = Registry::default();
/// let encoded = registry.encode(&vec![1, 2, 3], "json")?;
/// assert_eq!(&encoded.body[..], b"[1, 2, 3]");
/// let back: Vec<i32> = registry
///     .decode(&encoded.body, Some("application/json"), Some("utf-8"), None)?;
/// assert_eq!(back, [1, 2, 3]);
/// # Ok::<(), kombu_serializers::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl Default for Registry {
    fn default() -> Self {
        let mut registry = Registry::empty();
        registry.register_serializer(JsonSerializer);
        registry.register_serializer(RawSerializer);
        registry.register_serializer(TextSerializer);
        registry.register_serializer(MsgpackSerializer);
        registry.register_serializer(YamlSerializer);
        #[cfg(feature = "pickle")]
        registry.register_serializer(crate::pickle::PickleSerializer);
        registry.register_compressor(ZlibCompressor);
        registry.register_compressor(Bzip2Compressor);
        registry.register_compressor(LzmaCompressor);
        registry.register_compressor(BrotliCompressor);
        registry.register_compressor(ZstdCompressor);
        registry
    }
}

/// Lets an unsized `T: serde::Serialize` be passed as `&dyn erased_serde::Serialize`.
struct SerializeRef<'a, T: ?Sized>(&'a T);

impl<T: ?Sized + serde::Serialize> serde::Serialize for SerializeRef<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl Registry {
    /// A registry with no serializers and no compressors.
    pub fn empty() -> Self {
        Registry {
            inner: Arc::new(Inner::default()),
        }
    }

    /// Registers a serializer, replacing one with the same name. A serializer registered later
    /// takes over lookups by content type from earlier ones with the same content type (as
    /// kombu's decoder table does).
    pub fn register_serializer(&mut self, s: impl Serializer) {
        let inner = Arc::make_mut(&mut self.inner);
        inner.serializers.retain(|old| old.name() != s.name());
        inner.serializers.push(Arc::new(s));
        inner.rebuild_builtin_types();
    }

    /// Registers a compressor, replacing any with the same name or a shared alias.
    pub fn register_compressor(&mut self, c: impl Compressor) {
        let inner = Arc::make_mut(&mut self.inner);
        inner.compressors.retain(|old| {
            old.name() != c.name()
                && !old
                    .aliases()
                    .iter()
                    .any(|a| *a == c.name() || c.aliases().contains(a))
        });
        inner.compressors.push(Arc::new(c));
    }

    /// The registered serializers, in registration order.
    pub fn serializers(&self) -> impl Iterator<Item = &dyn Serializer> {
        self.inner.serializers.iter().map(|s| &**s)
    }

    /// The registered compressors, in registration order.
    pub fn compressors(&self) -> impl Iterator<Item = &dyn Compressor> {
        self.inner.compressors.iter().map(|c| &**c)
    }

    fn by_content_type(&self, content_type: &str) -> Option<&dyn Serializer> {
        self.inner
            .serializers
            .iter()
            .rev()
            .find(|s| s.content_type() == content_type)
            .map(|s| &**s)
    }

    /// Looks a serializer up by name (`"json"`) or content type (`"application/json"`).
    pub fn serializer(&self, name_or_content_type: &str) -> Result<&dyn Serializer> {
        self.inner
            .serializers
            .iter()
            .find(|s| s.name() == name_or_content_type)
            .map(|s| &**s)
            .or_else(|| self.by_content_type(name_or_content_type))
            .ok_or_else(|| Error::UnknownSerializer {
                name: name_or_content_type.to_owned(),
            })
    }

    /// Looks a compressor up by alias (`"zlib"`, `"gzip"`) or content type
    /// (`"application/x-gzip"`).
    pub fn compressor(&self, name_or_content_type: &str) -> Result<&dyn Compressor> {
        self.inner
            .compressors
            .iter()
            .rev()
            .find(|c| {
                c.name() == name_or_content_type
                    || c.aliases().contains(&name_or_content_type)
                    || c.content_type() == name_or_content_type
            })
            .map(|c| &**c)
            .ok_or_else(|| Error::UnknownCompression {
                name: name_or_content_type.to_owned(),
            })
    }

    /// Serializes `value` with the serializer named (or typed) `serializer`.
    pub fn encode<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
        serializer: &str,
    ) -> Result<Encoded> {
        let s = self.serializer(serializer)?;
        let (body, content_type, content_encoding): (Vec<u8>, &'static str, &'static str) =
            match s.builtin() {
                Some(Builtin::Json) => (
                    crate::json::to_python_json(value).map_err(|e| Error::Encode {
                        serializer: s.name().to_owned(),
                        source: Box::new(e),
                    })?,
                    crate::json::JSON_CONTENT_TYPE,
                    "utf-8",
                ),
                Some(Builtin::Msgpack) => (
                    crate::msgpack::encode_msgpack(value)?,
                    crate::msgpack::MSGPACK_CONTENT_TYPE,
                    "binary",
                ),
                Some(Builtin::Raw) => {
                    let (body, encoding) = crate::raw::encode_raw(value)?;
                    (body, RAW_CONTENT_TYPE, encoding)
                }
                Some(Builtin::Text) => (
                    crate::raw::encode_text(value)?,
                    crate::raw::TEXT_CONTENT_TYPE,
                    "utf-8",
                ),
                None => {
                    let (body, content_encoding) = s.encode_with_encoding(&SerializeRef(value))?;
                    return Ok(Encoded {
                        body: Bytes::from(body),
                        content_type: known(s.content_type()),
                        content_encoding: known(&content_encoding),
                    });
                }
            };
        Ok(Encoded {
            // An exactly-sized buffer becomes `Bytes` without a second allocation (a `Vec` with
            // spare capacity would need a shared header); shrinking in place is cheaper.
            body: Bytes::from(body.into_boxed_slice()),
            content_type: Cow::Borrowed(content_type),
            content_encoding: Cow::Borrowed(content_encoding),
        })
    }

    /// Compresses `data`; returns the compressed bytes and the content type to put in the
    /// `compression` header (never the alias, as kombu does).
    pub fn compress(&self, data: &[u8], compression: &str) -> Result<(Bytes, String)> {
        let c = self.compressor(compression)?;
        let body = c.compress(data)?;
        Ok((Bytes::from(body), c.content_type().to_owned()))
    }

    /// Decompresses `data` with the compressor named by alias or content type (the value of a
    /// `compression` header), failing with [`Error::TooLarge`] past `limit` bytes.
    pub fn decompress(&self, data: &[u8], compression: &str, limit: usize) -> Result<Bytes> {
        let c = self.compressor(compression)?;
        Ok(Bytes::from(c.decompress(data, limit)?))
    }

    /// The accept check of [`decode`](Self::decode), without touching the body.
    ///
    /// * No content type means `application/data`.
    /// * With an accept list: the type must be in it or be one of [`ALWAYS_TRUSTED`].
    /// * Without one: a type whose registered serializer is not
    ///   [enabled by default](Serializer::enabled_by_default) is refused; types with no
    ///   registered serializer are allowed (they decode to text or bytes), as in kombu.
    pub fn check_accept(&self, content_type: Option<&str>, accept: Option<&Accept>) -> Result<()> {
        let content_type = content_type.unwrap_or(RAW_CONTENT_TYPE);
        match accept {
            Some(accept) => {
                if accept.allows(content_type) {
                    Ok(())
                } else {
                    Err(Error::ContentDisallowed {
                        content_type: content_type.to_owned(),
                        allowed: accept.content_types().map(str::to_owned).collect(),
                    })
                }
            }
            None => {
                let disabled = !ALWAYS_TRUSTED.contains(&content_type)
                    && self
                        .by_content_type(content_type)
                        .is_some_and(|s| !s.enabled_by_default());
                if disabled {
                    Err(Error::ContentDisallowed {
                        content_type: content_type.to_owned(),
                        allowed: self.default_allowed(),
                    })
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Content types a consumer without an accept list may decode: those of serializers
    /// enabled by default plus [`ALWAYS_TRUSTED`], sorted and deduplicated.
    fn default_allowed(&self) -> Vec<String> {
        let mut allowed: Vec<String> = self
            .inner
            .serializers
            .iter()
            .filter(|s| s.enabled_by_default())
            .map(|s| s.content_type().to_owned())
            .chain(ALWAYS_TRUSTED.iter().map(|s| (*s).to_owned()))
            .collect();
        allowed.sort();
        allowed.dedup();
        allowed
    }

    /// kombu's `loads()`.
    ///
    /// 1. No content type means `application/data`.
    /// 2. The accept check of [`check_accept`](Self::check_accept).
    /// 3. An empty body is not given to a decoder (kombu returns it as it is): it is offered to
    ///    `T` as an empty string or empty bytes.
    /// 4. A serializer registered for the content type decodes the body.
    /// 5. Otherwise the body is offered to `T` as text, decoded with `content_encoding`
    ///    (default `utf-8`), unless the encoding is `binary` / `ascii-8bit`, in which case it is
    ///    offered as bytes. `String`, `Vec<u8>`, `bytes::Bytes` and `serde_bytes::ByteBuf` all
    ///    work as `T`.
    ///
    /// Decoding failures are [`Error::Decode`].
    pub fn decode<T: serde::de::DeserializeOwned>(
        &self,
        body: &[u8],
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        accept: Option<&Accept>,
    ) -> Result<T> {
        self.check_accept(content_type, accept)?;
        let content_type = content_type.unwrap_or(RAW_CONTENT_TYPE);

        if !body.is_empty() {
            match self.inner.builtin_for(content_type) {
                Some(Builtin::Json) => {
                    // Strict first; what Python's json.dumps adds (NaN, lone surrogates) after.
                    return crate::python_json::from_python_json(body).map_err(|e| Error::Decode {
                        content_type: content_type.to_owned(),
                        source: Box::new(e),
                    });
                }
                Some(Builtin::Msgpack) => return crate::msgpack::decode_msgpack(body),
                Some(Builtin::Raw | Builtin::Text) => {
                    let mode = TextMode::from_content_encoding(content_encoding);
                    return crate::raw::decode_body(body, mode, content_type);
                }
                None => {}
            }
        }
        let mut out: Option<T> = None;
        {
            let mut visit = |de: &mut dyn erased_serde::Deserializer<'_>| {
                out = Some(erased_serde::deserialize::<T>(de)?);
                Ok(())
            };
            self.decode_forced(body, content_type, content_encoding, &mut visit)?;
        }
        out.ok_or_else(|| Error::Decode {
            content_type: content_type.to_owned(),
            source: "the decoder did not produce a value".into(),
        })
    }

    /// Steps 3 to 5 of [`decode`](Self::decode), without the accept check (kombu's
    /// `loads(..., force=True)`): the signing serializers decode their verified inner body
    /// with it.
    pub(crate) fn decode_forced(
        &self,
        body: &[u8],
        content_type: &str,
        content_encoding: Option<&str>,
        visit: &mut dyn FnMut(
            &mut dyn erased_serde::Deserializer<'_>,
        ) -> Result<(), erased_serde::Error>,
    ) -> Result<()> {
        match self.by_content_type(content_type) {
            Some(s) if !body.is_empty() => s.decode_with_encoding(body, content_encoding, visit),
            _ => {
                let mode = TextMode::from_content_encoding(content_encoding);
                visit_body(body, mode, content_type, visit)
            }
        }
    }

    /// Builds an accept set from serializer names (`"json"`) or content types (anything with a
    /// `/`, taken as it is). An unknown name fails with [`Error::UnknownSerializer`].
    ///
    /// When every entry is a [signing](Serializer::is_signing) serializer (`"auth"`, `"hmac"`,
    /// or their content types), the set is [strict](Accept::strict): the always-trusted types
    /// are not let through, so only authenticated messages decode.
    ///
    /// ```
    /// use kombu_serializers::Registry;
    /// let registry = Registry::default();
    /// assert!(registry.accept(["json"])?.allows("application/text")); // kombu's rule
    /// # #[cfg(feature = "hmac")] {
    /// let mut registry = registry.clone();
    /// registry.register_serializer(kombu_serializers::HmacSerializer::new("k1", [7u8; 32])?);
    /// let signed_only = registry.accept(["hmac"])?;
    /// assert!(signed_only.is_strict());
    /// assert!(!signed_only.allows("application/text"));
    /// # }
    /// # Ok::<(), kombu_serializers::Error>(())
    /// ```
    pub fn accept<I, S>(&self, names: I) -> Result<Accept>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut accept = Accept::default();
        let mut all_signing = true;
        for name in names {
            let name = name.as_ref();
            if name.contains('/') {
                accept.insert(name);
                all_signing &= self.by_content_type(name).is_some_and(|s| s.is_signing());
            } else {
                let s = self
                    .inner
                    .serializers
                    .iter()
                    .find(|s| s.name() == name)
                    .ok_or_else(|| Error::UnknownSerializer {
                        name: name.to_owned(),
                    })?;
                accept.insert(s.content_type());
                all_signing &= s.is_signing();
            }
        }
        if all_signing && !accept.is_empty() {
            accept = accept.strict();
        }
        Ok(accept)
    }
}

/// A content type or encoding as a `Cow`: borrowed from a static for the common ones (no
/// allocation per message), owned otherwise.
pub fn known(name: &str) -> Cow<'static, str> {
    const KNOWN: [&str; 13] = [
        "application/json",
        "utf-8",
        "binary",
        "application/data",
        "text/plain",
        "application/x-msgpack",
        "application/x-yaml",
        "application/x-python-serialize",
        "application/x-gzip",
        "application/x-bz2",
        "application/x-lzma",
        "application/x-brotli",
        "application/zstd",
    ];
    match KNOWN.iter().find(|k| **k == name) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(name.to_owned()),
    }
}
