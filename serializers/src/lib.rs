//! Serializers, compressors and accept lists for kombu-rs, named and encoded exactly as Python
//! kombu does, so messages interoperate with kombu and Celery on a shared broker.
//!
//! * [`JsonSerializer`] (`json`, `application/json`, `utf-8`): output byte-identical to Python's
//!   `json.dumps` defaults (`", "` / `": "` separators, `ensure_ascii=True`, Python float repr),
//!   through [`PythonFormatter`].
//! * [`RawSerializer`] (`raw`, `application/data`, `binary`): bytes or strings as they are.
//! * [`TextSerializer`] (`text`, `text/plain`, `utf-8`): strings as they are.
//! * [`MsgpackSerializer`] (`msgpack`, `application/x-msgpack`, `binary`): MessagePack as
//!   Python's `msgpack.packb(use_bin_type=True)` writes it (structs as maps with string keys).
//! * [`YamlSerializer`] (`yaml`, `application/x-yaml`, `utf-8`): YAML readable by PyYAML's
//!   `safe_load`, decoded with alias-expansion and recursion limits.
//!
//! * `PickleSerializer` (feature `pickle`; `pickle`, `application/x-python-serialize`,
//!   `binary`): **decode only**, plain data only (no Python globals, no object construction,
//!   nothing executed); `encode` always fails.
//!
//!   These are registered but, as in kombu, **not enabled by default**: a consumer must name
//!   them in its accept list to decode them.
//! * [`ZlibCompressor`] (`zlib` / `gzip`, header value `application/x-gzip`): a zlib stream at
//!   level 6, with bounded decompression.
//! * [`Bzip2Compressor`] (`bzip2` / `bzip`, `application/x-bz2`), [`LzmaCompressor`] (`lzma` /
//!   `xz`, `application/x-lzma`, an XZ container), [`BrotliCompressor`] (`brotli`,
//!   `application/x-brotli`) and [`ZstdCompressor`] (`zstd` / `zstandard`, `application/zstd`):
//!   the other algorithms kombu knows, all with bounded decompression.
//! * [`HmacSerializer`] (feature `hmac`, default; `hmac`,
//!   `application/x-kombu-hmac-sha256`): bodies signed with HMAC-SHA256 under a shared secret.
//! * `auth::AuthSerializer` (feature `auth`; `auth`, `application/data`): Celery's message
//!   signing (RSA-PSS, X.509 certificate store), wire-compatible with Celery.
//! * [`tagged`]: serde `with`-modules writing and reading kombu's JSON type tags
//!   (`{"__type__": "datetime", "__value__": ...}`) for dates, times, decimals, UUIDs and bytes.
//! * [`Registry`]: lookups by name or content type, [`Accept`] lists, and kombu's decode rules.
//!
//! # Example
//!
//! ```
//! use kombu_serializers::{Registry, DEFAULT_MAX_DECOMPRESSED_SIZE};
//! use std::collections::BTreeMap;
//!
//! let registry = Registry::default();
//!
//! // Producer side: serialize, then (optionally) compress.
//! let mut value = BTreeMap::new();
//! value.insert("hello", "wörld");
//! let encoded = registry.encode(&value, "json")?;
//! assert_eq!(&encoded.body[..], br#"{"hello": "w\u00f6rld"}"#);
//! assert_eq!(encoded.content_type, "application/json");
//! assert_eq!(encoded.content_encoding, "utf-8");
//! let (compressed, header) = registry.compress(&encoded.body, "zlib")?;
//! assert_eq!(header, "application/x-gzip");
//!
//! // Consumer side: decompress by the header value, check the accept list, deserialize.
//! let body = registry.decompress(&compressed, &header, DEFAULT_MAX_DECOMPRESSED_SIZE)?;
//! let accept = registry.accept(["json"])?;
//! let decoded: BTreeMap<String, String> = registry.decode(
//!     &body,
//!     Some(&encoded.content_type),
//!     Some(&encoded.content_encoding),
//!     Some(&accept),
//! )?;
//! assert_eq!(decoded["hello"], "wörld");
//!
//! // Content outside the accept list is refused before it is deserialized.
//! let refused = registry.check_accept(Some("application/x-python-serialize"), Some(&accept));
//! assert!(refused.unwrap_err().to_string().contains("Refusing to deserialize untrusted content"));
//! # Ok::<(), kombu_serializers::Error>(())
//! ```

mod accept;
mod compression;
mod error;
mod json;
mod msgpack;
#[cfg(feature = "pickle")]
mod pickle;
mod python_json;
mod raw;
mod registry;
mod serializer;
#[cfg(any(feature = "auth", feature = "hmac"))]
mod signing;
pub mod tagged;
mod yaml;

#[cfg(test)]
mod tests;

pub use bytes::Bytes;

pub use accept::{ALWAYS_TRUSTED, Accept};
pub use compression::{
    BROTLI_CONTENT_TYPE, BZIP2_CONTENT_TYPE, BrotliCompressor, Bzip2Compressor, Compressor,
    LZMA_CONTENT_TYPE, LzmaCompressor, ZLIB_CONTENT_TYPE, ZSTD_CONTENT_TYPE, ZlibCompressor,
    ZstdCompressor,
};
pub use error::{Error, Result};
pub use json::{
    JSON_CONTENT_TYPE, JsonSerializer, PythonFormatter, to_python_json, to_python_json_string,
};
pub use msgpack::{MSGPACK_CONTENT_TYPE, MsgpackSerializer};
#[cfg(feature = "pickle")]
pub use pickle::{PICKLE_CONTENT_TYPE, PickleSerializer};
pub use python_json::{PythonJson, from_python_json, parse_python_json};
pub use raw::{RAW_CONTENT_TYPE, RawSerializer, TEXT_CONTENT_TYPE, TextSerializer};
pub use registry::{DEFAULT_MAX_DECOMPRESSED_SIZE, Encoded, Registry, known};
pub use serializer::Serializer;
#[cfg(feature = "auth")]
pub use signing::auth;
#[cfg(feature = "hmac")]
pub use signing::hmac::{HMAC_CONTENT_TYPE, HMAC_MIN_SECRET_LEN, HmacSerializer};
pub use yaml::{YAML_CONTENT_TYPE, YamlSerializer};
