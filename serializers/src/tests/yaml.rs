//! `yaml` tests. Expected texts were produced by PyYAML 6 (`yaml.safe_dump`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{Error, Registry, Serializer, YamlSerializer};

const CT: &str = "application/x-yaml";

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Nested {
    x: i64,
    y: Vec<i64>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Doc {
    name: String,
    count: u32,
    ratio: f64,
    ok: bool,
    missing: Option<String>,
    present: Option<bool>,
    tags: Vec<String>,
    nested: Nested,
    map: BTreeMap<String, f64>,
    blob: Bytes,
}

fn doc() -> Doc {
    Doc {
        name: "wörld: yes".into(),
        count: 3,
        ratio: 1.5,
        ok: true,
        missing: None,
        present: Some(false),
        tags: vec!["a".into(), "yes".into(), "1".into()],
        nested: Nested {
            x: 1,
            y: vec![-1, 300],
        },
        map: [("k".to_owned(), 0.1)].into_iter().collect(),
        blob: Bytes::from_static(b"\x00\xff"),
    }
}

fn accept_yaml(r: &Registry) -> crate::Accept {
    r.accept(["yaml"]).unwrap()
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> crate::Result<T> {
    let r = Registry::default();
    r.decode(body, Some(CT), Some("utf-8"), Some(&accept_yaml(&r)))
}

#[test]
fn metadata_and_disabled_by_default() {
    let s = YamlSerializer;
    assert_eq!(s.name(), "yaml");
    assert_eq!(s.content_type(), CT);
    assert_eq!(s.content_encoding(), "utf-8");
    assert!(!s.enabled_by_default());
}

#[test]
fn round_trip_struct() {
    let r = Registry::default();
    let encoded = r.encode(&doc(), "yaml").unwrap();
    assert_eq!(encoded.content_type, CT);
    assert_eq!(encoded.content_encoding, "utf-8");
    let text = std::str::from_utf8(&encoded.body).unwrap();
    // Flow style with field names as keys, every string quoted; bytes as a list of integers.
    // PyYAML 6 `yaml.safe_load` of this text gives {'name': 'wörld: yes', 'count': 3,
    // 'ratio': 1.5, 'ok': True, 'missing': None, 'present': False, 'tags': ['a', 'yes', '1'],
    // 'nested': {'x': 1, 'y': [-1, 300]}, 'map': {'k': 0.1}, 'blob': [0, 255]}.
    assert_eq!(
        text,
        "{\"name\": \"wörld: yes\", \"count\": 3, \"ratio\": 1.5, \"ok\": true, \
         \"missing\": null, \"present\": false, \"tags\": [\"a\", \"yes\", \"1\"], \
         \"nested\": {\"x\": 1, \"y\": [-1, 300]}, \"map\": {\"k\": 0.1}, \"blob\": [0, 255]}\n"
    );
    let back: Doc = r
        .decode(
            &encoded.body,
            Some(&encoded.content_type),
            Some(&encoded.content_encoding),
            Some(&accept_yaml(&r)),
        )
        .unwrap();
    assert_eq!(back, doc());
}

#[test]
fn decodes_python_safe_dump() {
    // yaml.safe_dump({"a": 1, "b": ["x", "y"]}) (block style, PyYAML >= 5.1 default)
    let v: serde_json::Value = decode(b"a: 1\nb:\n- x\n- y\n").unwrap();
    assert_eq!(v, serde_json::json!({"a": 1, "b": ["x", "y"]}));
    // Flow style and the brief's form.
    let v: serde_json::Value = decode(b"{a: 1, b: [x, y]}\n").unwrap();
    assert_eq!(v, serde_json::json!({"a": 1, "b": ["x", "y"]}));
    let v: serde_json::Value = decode(b"a: 1\nb: [x, y]\n").unwrap();
    assert_eq!(v, serde_json::json!({"a": 1, "b": ["x", "y"]}));

    // yaml.safe_dump({"name": "wörld", "count": 3, "ratio": 1.5, "ok": True, "missing": None,
    //   "tags": ["a", "b"], "nested": {"x": 1, "y": [-1, 300]}})
    let py = "count: 3\nmissing: null\nname: \"w\\xF6rld\"\nnested:\n  x: 1\n  y:\n  - -1\n  - 300\nok: true\nratio: 1.5\ntags:\n- a\n- b\n";
    let v: serde_json::Value = decode(py.as_bytes()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"count": 3, "missing": null, "name": "wörld",
            "nested": {"x": 1, "y": [-1, 300]}, "ok": true, "ratio": 1.5, "tags": ["a", "b"]})
    );

    // yaml.safe_dump([1, "two", 3.25, None, False])
    let v: (u8, String, f64, Option<i32>, bool) =
        decode(b"- 1\n- two\n- 3.25\n- null\n- false\n").unwrap();
    assert_eq!(v, (1, "two".to_owned(), 3.25, None, false));

    // yaml.safe_dump({"blob": b"\x00\xff"}): Python bytes are a !!binary scalar, which is not
    // decoded (documented limitation): the target gets the base64 text.
    let v: BTreeMap<String, String> = decode(b"blob: !!binary |\n  AP8=\n").unwrap();
    assert_eq!(v["blob"], "AP8=\n");
}

#[test]
fn refused_without_accept_list_allowed_with_it() {
    let r = Registry::default();
    let body = b"a: 1\nb: [x, y]\n";
    let err = r
        .decode::<serde_json::Value>(body, Some(CT), Some("utf-8"), None)
        .unwrap_err();
    assert!(
        matches!(err, Error::ContentDisallowed { ref content_type, ref allowed }
            if content_type == CT && !allowed.iter().any(|a| a == CT)),
        "{err:?}"
    );
    let json_only = r.accept(["json"]).unwrap();
    assert!(matches!(
        r.decode::<serde_json::Value>(body, Some(CT), None, Some(&json_only)),
        Err(Error::ContentDisallowed { .. })
    ));
    let ok: serde_json::Value = r
        .decode(body, Some(CT), Some("utf-8"), Some(&accept_yaml(&r)))
        .unwrap();
    assert_eq!(ok["b"][1], "y");
}

#[test]
fn malformed_input_is_a_decode_error() {
    let cases: [&[u8]; 6] = [
        b"a: [1, 2\n",             // unterminated flow sequence
        b"a: 1\n a: 2\n  - x\n",   // bad indentation
        b"\xff\xfe\x00garbage: [", // not UTF-8 / broken
        b"a: *nope\n",             // unknown alias
        b"--- 1\n--- 2\n",         // two documents (safe_load refuses too)
        b"{a: 1\n",                // unterminated flow mapping
    ];
    for body in cases {
        let err = decode::<serde_json::Value>(body).unwrap_err();
        assert!(
            matches!(err, Error::Decode { ref content_type, .. } if content_type == CT),
            "{:?}: {err:?}",
            String::from_utf8_lossy(body)
        );
    }
    // Type mismatch against the target.
    assert!(matches!(
        decode::<Doc>(b"a: 1\n"),
        Err(Error::Decode { .. })
    ));
    // Deep nesting fails instead of overflowing the stack.
    let deep = "[".repeat(100_000);
    assert!(matches!(
        decode::<serde_json::Value>(deep.as_bytes()),
        Err(Error::Decode { .. })
    ));
}

#[test]
fn billion_laughs_is_bounded() {
    // 10^9 "lol" if every alias were expanded.
    let body = "\
a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
";
    let start = Instant::now();
    let err = decode::<serde_json::Value>(body.as_bytes()).unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    assert!(
        err.to_string().contains("repetition limit") || format!("{err:?}").contains("repetition"),
        "{err:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    // Into an ignored target too (the limit applies while parsing, whatever the target).
    assert!(matches!(
        decode::<serde::de::IgnoredAny>(body.as_bytes()),
        Err(Error::Decode { .. })
    ));
    // A few aliases (normal use) still work.
    let v: serde_json::Value = decode(b"base: &b {x: 1}\nuse: *b\n").unwrap();
    assert_eq!(v["use"]["x"], 1);
}

#[test]
fn encoded_strings_and_floats_read_back_as_python_would() {
    let r = Registry::default();
    // Strings that YAML 1.1 (PyYAML) would type implicitly if left plain.
    let strings = [
        "yes",
        "No",
        "on",
        "OFF",
        "~",
        "null",
        "1:20",
        "0o17",
        "017",
        "1_000",
        "2024-01-02",
        "2024-01-02T03:04:05Z",
        ".inf",
        "<<",
        "=",
        "- x",
        "a: b",
        "#c",
        "",
    ];
    let encoded = r.encode(&strings, "yaml").unwrap();
    let back: Vec<String> = decode(&encoded.body).unwrap();
    assert_eq!(back, strings);
    assert!(encoded.body.starts_with(b"[\"yes\", \"No\", "));
    // PyYAML's float format (repr with ".0" before an exponent).
    let floats = [1e16, 1e-5, 0.1, -2.5, 100.0, 1.5e300];
    let encoded = r.encode(&floats, "yaml").unwrap();
    assert_eq!(
        std::str::from_utf8(&encoded.body).unwrap(),
        "[1.0e+16, 1.0e-05, 0.1, -2.5, 100.0, 1.5e+300]\n"
    );
    let back: Vec<f64> = decode(&encoded.body).unwrap();
    assert_eq!(back, floats);
    // Characters PyYAML refuses raw, or would fold as line breaks, are escaped.
    let odd = "a\u{7f}\u{85}\u{9f}\u{a0}\u{2028}\u{fffe}é😀\n\t\"\\";
    let encoded = r.encode(odd, "yaml").unwrap();
    assert_eq!(
        std::str::from_utf8(&encoded.body).unwrap(),
        "\"a\\u007f\\u0085\\u009f\u{a0}\\u2028\\ufffeé😀\\n\\t\\\"\\\\\"\n"
    );
    let back: String = decode(&encoded.body).unwrap();
    assert_eq!(back, odd);
}
