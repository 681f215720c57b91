//! The `yaml` serializer (YAML through `serde_norway`, the maintained fork of the archived
//! `serde_yaml`), compatible with Python kombu's `yaml.safe_dump` / `yaml.safe_load`.

use std::io;

use serde_json::ser::Formatter;
use serde_norway::Value;

use crate::error::{Error, Result};
use crate::registry::Serializer;

/// Content type of the `yaml` serializer.
pub const YAML_CONTENT_TYPE: &str = "application/x-yaml";

/// The `yaml` serializer: content type `application/x-yaml`, content encoding `utf-8`.
///
/// Encodes YAML in *flow style* (one line, JSON-like: `{"a": 1, "b": ["x", "y"]}` plus a
/// newline), which PyYAML's `safe_load` reads exactly: every string is double-quoted, so no
/// string can be misread by YAML 1.1's implicit typing (`yes` / `on` as booleans, `1:20` as a
/// sexagesimal integer, `2024-01-02` as a date, which a plain block-style emitter such as
/// `serde_norway`'s would leave unquoted); floats are written as PyYAML writes them
/// (`repr()`, with `.0` added before an exponent: `1.0e+16`); characters PyYAML does not accept
/// raw (C1 controls, DEL, U+FFFE/U+FFFF, and the YAML 1.1 line breaks U+0085, U+2028, U+2029)
/// are `\u` escapes. NaN and infinities are written as `null` (as by the `json` serializer).
///
/// Decodes one YAML document with `serde_norway`, as `safe_load` would for the usual data: maps,
/// lists, strings, integers, floats, booleans and `null`, in block or flow style.
///
/// Bytes are not a YAML-native type on either side: byte buffers (`bytes::Bytes`,
/// `serde_bytes::ByteBuf`) are *encoded* as a list of integers, which Python reads as a `list`, and such a list decodes back into a byte target.
/// Python `bytes`, which `safe_dump` writes as a `!!binary` base64 scalar, are **not** decoded:
/// `serde_norway` drops the `!!binary` tag, so the target receives the base64 text (with its
/// line breaks); decode it yourself if you exchange bytes with Python over YAML.
///
/// Differences from PyYAML to keep in mind: `serde_norway` follows the YAML 1.2 core schema, so
/// the YAML 1.1 words `yes` / `no` / `on` / `off` decode as strings, not booleans; arbitrary
/// Python tags (`!!python/...`) are never constructed (like `safe_load`, which rejects them).
/// A body with more than one document is an error (`safe_load` also refuses it).
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
/// // yaml.safe_dump({"a": 1, "b": ["x", "y"]})
/// let body = b"a: 1\nb:\n- x\n- y\n";
/// let back: BTreeMap<String, serde_json::Value> =
///     registry.decode(body, Some("application/x-yaml"), Some("utf-8"), Some(&accept))?;
/// assert_eq!(back["b"], serde_json::json!(["x", "y"]));
/// let encoded = registry.encode(&back, "yaml")?;
/// assert_eq!(&encoded.body[..], b"{\"a\": 1, \"b\": [\"x\", \"y\"]}\n");
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
        let mut out = Vec::with_capacity(128);
        let mut ser = serde_json::Serializer::with_formatter(&mut out, YamlFlowFormatter);
        erased_serde::serialize(value, &mut ser).map_err(|e| Error::Encode {
            serializer: "yaml".to_owned(),
            source: Box::new(e),
        })?;
        out.push(b'\n');
        Ok(out)
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

/// Writes YAML flow style through `serde_json`: JSON with `", "` / `": "` separators, raw UTF-8,
/// PyYAML's float format, and `\u` escapes for what PyYAML does not accept raw.
#[derive(Debug, Clone, Copy)]
struct YamlFlowFormatter;

/// Characters that must not appear raw inside a double-quoted scalar read by PyYAML: outside
/// its printable set, or line breaks in YAML 1.1 (which would be folded).
fn needs_escape(ch: char) -> bool {
    matches!(
        ch,
        '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{fffe}' | '\u{ffff}'
    )
}

/// Writes a float as PyYAML's `represent_float`: `repr()`, with `.0` inserted before the
/// exponent when there is no decimal point (`1e+16` → `1.0e+16`; YAML 1.1 needs the point).
fn write_yaml_float<W: ?Sized + io::Write>(
    writer: &mut W,
    value: impl std::fmt::LowerExp,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(32);
    crate::json::write_python_float(&mut buf, value)?;
    match buf.iter().position(|&b| b == b'e') {
        Some(e) if !buf.contains(&b'.') => {
            writer.write_all(&buf[..e])?;
            writer.write_all(b".0")?;
            writer.write_all(&buf[e..])
        }
        _ => writer.write_all(&buf),
    }
}

impl Formatter for YamlFlowFormatter {
    crate::json::python_separators!();

    fn write_f32<W>(&mut self, writer: &mut W, value: f32) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        write_yaml_float(writer, value)
    }

    fn write_f64<W>(&mut self, writer: &mut W, value: f64) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        write_yaml_float(writer, value)
    }

    fn write_string_fragment<W>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        let mut rest = fragment;
        while let Some((i, ch)) = rest.char_indices().find(|&(_, ch)| needs_escape(ch)) {
            writer.write_all(&rest.as_bytes()[..i])?;
            write!(writer, "\\u{:04x}", u32::from(ch))?;
            rest = &rest[i + ch.len_utf8()..];
        }
        writer.write_all(rest.as_bytes())
    }
}
