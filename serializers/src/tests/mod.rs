//! Unit tests. Expected JSON strings were produced by CPython's `json.dumps` (3.x, defaults).

mod compression;
mod compression_others;
mod json;
mod msgpack;
#[cfg(feature = "pickle")]
mod pickle;
mod raw;
mod registry;
#[cfg(feature = "auth")]
mod signing_auth;
#[cfg(feature = "hmac")]
mod signing_hmac;
#[cfg(all(feature = "chrono", feature = "uuid", feature = "decimal"))]
mod tagged;
mod yaml;

/// An error with its causes, as a reporter prints it (an error's own `Display` does not repeat
/// its source).
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// Decodes a lowercase hex string (test fixtures produced by Python's `bytes.hex()`).
pub(crate) fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A deserialize target that records whether the deserializer offered a string or bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    Str(String),
    Bytes(Vec<u8>),
}

impl<'de> serde::Deserialize<'de> for Seen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Seen;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Seen, E> {
                Ok(Seen::Str(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Seen, E> {
                Ok(Seen::Str(v))
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Seen, E> {
                Ok(Seen::Bytes(v.to_vec()))
            }
        }
        d.deserialize_any(V)
    }
}
