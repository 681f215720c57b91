//! The messages the transports' Python-interop tests exchange with Python kombu, on the Rust
//! side: the same values the tests' Python scripts publish and expect, and small readers of
//! deliveries. Each case is named in a `case` header.

use serde_json::{Value as Json, json};

use crate::channel::Delivery;
use crate::value::{Headers, Value};

/// The `text` case's body (`text/plain`, UTF-8).
pub const TEXT: &str = "h\u{e9}llo \u{2713} plain text";
/// The `bytes` case's body (`application/data`, binary).
pub const BYTES: &[u8] = b"\x00\xff\x01binary\x80";
/// Every compression kombu names, with its content type (the `compression` header).
pub const COMPRESSIONS: [(&str, &str); 5] = [
    ("zlib", "application/x-gzip"),
    ("bzip2", "application/x-bz2"),
    ("lzma", "application/x-lzma"),
    ("brotli", "application/x-brotli"),
    ("zstd", "application/zstd"),
];
/// Every case both sides publish, sorted.
pub const CASES: [&str; 10] = [
    "brotli", "bytes", "bzip2", "json", "lzma", "msgpack", "text", "yaml", "zlib", "zstd",
];

/// A delivery's `case` header. Panics without one (a test helper).
pub fn case_of(d: &Delivery) -> String {
    d.headers()
        .get("case")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("delivery without a case header: {d:?}"))
        .to_owned()
}

/// Headers as JSON, to compare with what Python sent.
pub fn headers_json(h: &Headers) -> Json {
    serde_json::to_value(h).expect("headers serialize") // ok: a test helper; headers always serialize
}

/// The `json` case's body: nesting, every JSON type, non-ASCII text, a large integer.
pub fn nested() -> Json {
    json!({
        "id": 1,
        "nested": {
            "list": [1, 2.5, "three", null, true, false],
            "map": {"a": {"b": [{}, [], {"c": -7}]}},
            "unicode": "h\u{e9}llo \u{2713} \u{1f600}",
        },
        "big": 12_345_678_901_234_i64,
    })
}

/// The `json` case's headers.
pub fn json_headers() -> Json {
    json!({
        "h-str": "v",
        "h-int": 42,
        "h-list": [1, "x", null],
        "h-map": {"k": "v"},
        "h-bool": true,
        "case": "json",
    })
}

/// The `msgpack` case's body.
pub fn msgpack_value() -> Json {
    json!({"id": 4, "kind": "msgpack", "list": [1, 2, 3], "f": 1.5, "s": "\u{e9}"})
}

/// The `yaml` case's body.
pub fn yaml_value() -> Json {
    json!({"id": 5, "kind": "yaml", "list": [1, "two", null], "map": {"k": "v"}})
}

/// The body of the case of compression `kind`.
pub fn compressed_value(kind: &str) -> Json {
    json!({"kind": kind, "data": "x".repeat(2000), "n": [1, 2, 3]})
}

/// The content type of compression `kind`. Panics for a kind not in [`COMPRESSIONS`].
pub fn compression_type(kind: &str) -> &'static str {
    COMPRESSIONS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, t)| *t)
        .unwrap_or_else(|| panic!("no compression {kind}"))
}

/// `v`, sorted.
pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}
