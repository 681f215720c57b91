//! The `yaml` serializer: encodes byte for byte as PyYAML's `yaml.safe_dump` (a port of the
//! relevant parts of PyYAML's representer, resolver and emitter), decodes through
//! `serde_norway` (the maintained fork of the archived `serde_yaml`) with its hostile-input
//! limits.

use serde_norway::Value;

use crate::error::{Error, Result};
use crate::serializer::Serializer;

mod emitter;
mod resolver;
mod tree;

use emitter::Emitter;
use tree::TreeSerializer;

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
