//! The `msgpack` serializer (MessagePack through `rmp-serde`), compatible with Python's
//! `msgpack.packb(use_bin_type=True)` / `msgpack.unpackb(raw=False)` as kombu calls them.

use crate::error::{Error, Result};
use crate::serializer::Serializer;

/// Content type of the `msgpack` serializer.
pub const MSGPACK_CONTENT_TYPE: &str = "application/x-msgpack";

/// Nesting depth past which decoding fails. `rmp-serde` allows 1024 by default, which overflows
/// a 2 MiB thread stack through the type-erased visitor; 128 is `serde_json`'s and
/// `serde_norway`'s limit and far beyond any real message.
const MAX_DEPTH: usize = 128;

/// The `msgpack` serializer: content type `application/x-msgpack`, content encoding `binary`.
///
/// Output matches what Python kombu writes with `msgpack.packb(use_bin_type=True)`:
///
/// * structs and maps are MessagePack **maps keyed by field name** (`rmp-serde`'s struct-map
///   mode, not its default of positional arrays), so Python sees a `dict`;
/// * strings are `str` (Python `unpackb(raw=False)` gives `str`);
/// * byte buffers (`bytes::Bytes`, `serde_bytes::ByteBuf`, ...) are `bin` (Python `bytes`),
///   whereas a `Vec<u8>` without `serde_bytes` is an array of integers, as in serde generally;
/// * integers use the smallest representation, floats `f64` (`f32` stays `float 32`);
/// * unit enum variants are the variant name as a string.
///
/// Decoding accepts both map and array forms for structs, fails on trailing bytes (like
/// `unpackb`'s `ExtraData`) and on nesting deeper than 128 levels. Lengths in the input are
/// never trusted for allocation beyond the bytes actually present.
///
/// **Not enabled by default** ([`enabled_by_default`](Serializer::enabled_by_default) is
/// `false`): kombu disables every serializer but JSON at import time, so a consumer with no
/// accept list refuses `application/x-msgpack` with
/// [`Error::ContentDisallowed`]; name it in the accept list (`registry.accept(["msgpack"])`)
/// to decode it. This keeps Rust and Python consumers agreeing on what they refuse.
///
/// ```
/// use kombu_serializers::Registry;
/// let registry = Registry::default();
/// let encoded = registry.encode(&[("a", 1)].into_iter().collect::<std::collections::BTreeMap<_, _>>(), "msgpack")?;
/// assert_eq!(&encoded.body[..], b"\x81\xa1a\x01"); // msgpack.packb({"a": 1})
/// assert_eq!(encoded.content_type, "application/x-msgpack");
/// assert_eq!(encoded.content_encoding, "binary");
/// let accept = registry.accept(["msgpack"])?;
/// let back: std::collections::BTreeMap<String, i32> =
///     registry.decode(&encoded.body, Some("application/x-msgpack"), Some("binary"), Some(&accept))?;
/// assert_eq!(back["a"], 1);
/// # Ok::<(), kombu_serializers::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsgpackSerializer;

impl Serializer for MsgpackSerializer {
    fn name(&self) -> &str {
        "msgpack"
    }

    fn content_type(&self) -> &str {
        MSGPACK_CONTENT_TYPE
    }

    fn content_encoding(&self) -> &str {
        "binary"
    }

    /// `false`: kombu disables msgpack for consumers without an accept list.
    fn enabled_by_default(&self) -> bool {
        false
    }

    fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>> {
        encode_msgpack(value)
    }

    fn builtin(&self) -> Option<crate::serializer::Builtin> {
        Some(crate::serializer::Builtin::Msgpack)
    }

    fn decode(
        &self,
        data: &[u8],
        visit: &mut dyn FnMut(
            &mut dyn erased_serde::Deserializer<'_>,
        ) -> Result<(), erased_serde::Error>,
    ) -> Result<()> {
        let mut de = rmp_serde::Deserializer::from_read_ref(data);
        de.set_max_depth(MAX_DEPTH);
        {
            let mut erased = <dyn erased_serde::Deserializer>::erase(&mut de);
            visit(&mut erased).map_err(|e| decode_err(Box::new(e)))?;
        }
        check_consumed(&mut de)
    }
}

fn decode_err(source: Box<dyn std::error::Error + Send + Sync>) -> Error {
    Error::Decode {
        content_type: MSGPACK_CONTENT_TYPE.to_owned(),
        source,
    }
}

type SliceDeserializer<'a> = rmp_serde::Deserializer<rmp_serde::decode::ReadRefReader<'a, [u8]>>;

/// Fails when anything follows the value just decoded (Python's `unpackb` raises `ExtraData`):
/// reading one more value must hit the end of the input at once.
fn check_consumed(de: &mut SliceDeserializer<'_>) -> Result<()> {
    use serde::Deserialize as _;
    match serde::de::IgnoredAny::deserialize(&mut *de) {
        Err(rmp_serde::decode::Error::InvalidMarkerRead(e))
            if e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            Ok(())
        }
        _ => Err(decode_err("extra data after the msgpack value".into())),
    }
}

/// Encodes `value` (plain or type-erased) as Python's `msgpack.packb(use_bin_type=True)` does.
pub(crate) fn encode_msgpack<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(value).map_err(|e| Error::Encode {
        serializer: "msgpack".to_owned(),
        source: Box::new(e),
    })
}

/// The typed twin of [`MsgpackSerializer::decode`]: same depth limit and trailing-bytes check.
pub(crate) fn decode_msgpack<T: serde::de::DeserializeOwned>(data: &[u8]) -> Result<T> {
    let mut de = rmp_serde::Deserializer::from_read_ref(data);
    de.set_max_depth(MAX_DEPTH);
    let value = T::deserialize(&mut de).map_err(|e| decode_err(Box::new(e)))?;
    check_consumed(&mut de)?;
    Ok(value)
}
