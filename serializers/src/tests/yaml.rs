//! `yaml` tests. Expected texts were produced by PyYAML 6 (`yaml.safe_dump`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{Error, Registry, Serializer, YamlSerializer};

mod corpus;

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
    // yaml.safe_dump({'name': 'wörld: yes', 'count': 3, 'ratio': 1.5, 'ok': True,
    //   'missing': None, 'present': False, 'tags': ['a', 'yes', '1'],
    //   'nested': {'x': 1, 'y': [-1, 300]}, 'map': {'k': 0.1}, 'blob': [0, 255]})
    // (keys sorted, bytes as a list of integers).
    assert_eq!(
        text,
        "blob:\n- 0\n- 255\ncount: 3\nmap:\n  k: 0.1\nmissing: null\nname: \"w\\xF6rld: yes\"\n\
         nested:\n  x: 1\n  y:\n  - -1\n  - 300\nok: true\npresent: false\nratio: 1.5\ntags:\n\
         - a\n- 'yes'\n- '1'\n"
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
    // Strings that YAML 1.1 (PyYAML) would type implicitly if left plain are quoted.
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
    // yaml.safe_dump([...the same strings...])
    assert_eq!(
        &encoded.body[..],
        b"- 'yes'\n- 'No'\n- 'on'\n- 'OFF'\n- '~'\n- 'null'\n- '1:20'\n- 0o17\n- '017'\n- '1_000'\n- '2024-01-02'\n- '2024-01-02T03:04:05Z'\n- '.inf'\n- '<<'\n- '='\n- '- x'\n- 'a: b'\n- '#c'\n- ''\n"
    );
    // `0o17` is not an int in YAML 1.1, so PyYAML leaves it plain (and reads it back as a
    // string); serde_norway (YAML 1.2) reads it as 15 (documented difference).
    let back: Vec<serde_json::Value> = decode(&encoded.body).unwrap();
    for (got, want) in back.iter().zip(strings) {
        if want == "0o17" {
            assert_eq!(got, &serde_json::json!(15));
        } else {
            assert_eq!(got, &serde_json::json!(want));
        }
    }
    // PyYAML's float format (repr with ".0" before an exponent).
    let floats = [1e16, 1e-5, 0.1, -2.5, 100.0, 1.5e300];
    let encoded = r.encode(&floats, "yaml").unwrap();
    assert_eq!(
        &encoded.body[..],
        b"- 1.0e+16\n- 1.0e-05\n- 0.1\n- -2.5\n- 100.0\n- 1.5e+300\n"
    );
    let back: Vec<f64> = decode(&encoded.body).unwrap();
    assert_eq!(back, floats);
    // Non-printable and non-ASCII characters are escaped as PyYAML escapes them.
    let odd = "a\u{7f}\u{85}\u{9f}\u{a0}\u{2028}\u{fffe}é😀\n\t\"\\";
    let encoded = r.encode(odd, "yaml").unwrap();
    assert_eq!(
        &encoded.body[..],
        b"\"a\\x7F\\N\\x9F\\_\\L\\uFFFE\\xE9\\U0001F600\\n\\t\\\"\\\\\"\n"
    );
    let back: String = decode(&encoded.body).unwrap();
    assert_eq!(back, odd);
}

fn encode_yaml<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    YamlSerializer
        .encode(&value as &dyn erased_serde::Serialize)
        .unwrap()
}

#[track_caller]
fn check<T: Serialize + ?Sized>(value: &T, expected: &[u8]) {
    let got = encode_yaml(value);
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expected),
        "bytes differ from PyYAML's"
    );
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Shape {
    Unit,
    New(i32),
    Tup(i32, i32),
    Rec { w: i32, h: Vec<i32> },
}

/// Field order differs from the sorted order PyYAML writes.
#[derive(Serialize)]
struct Unordered {
    zz: i32,
    aa: Vec<String>,
    mm: Option<i32>,
    bb: Option<BTreeMap<String, i32>>,
}

/// Map keys of different kinds, as a Python dict may hold.
#[derive(Serialize)]
#[serde(untagged)]
enum Key {
    S(String),
    I(i64),
    F(f64),
    B(bool),
    N,
}

/// A map serialized in insertion order.
struct Pairs(Vec<(Key, i32)>);

impl Serialize for Pairs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

fn serde_bytes_like() -> Bytes {
    Bytes::new()
}

#[test]
fn typed_values_byte_identical_to_pyyaml() {
    // Expected bytes: yaml.safe_dump of the Python equivalent (ints, float('inf'), None,
    // lists for tuples and bytes, dicts for maps / structs / variants).
    check(&u64::MAX, b"18446744073709551615\n...\n");
    check(&(1u64 << 63), b"9223372036854775808\n...\n");
    check(&i64::MIN, b"-9223372036854775808\n...\n");
    check(&(1u128 << 64), b"18446744073709551616\n...\n");
    check(
        &u128::MAX,
        b"340282366920938463463374607431768211455\n...\n",
    );
    check(
        &i128::MIN,
        b"-170141183460469231731687303715884105728\n...\n",
    );
    check(&f64::INFINITY, b".inf\n...\n");
    check(&f64::NEG_INFINITY, b"-.inf\n...\n");
    check(&f64::NAN, b".nan\n...\n");
    check(
        &vec![f64::NAN, f64::INFINITY, -0.0, 1e17],
        b"- .nan\n- .inf\n- -0.0\n- 1.0e+17\n",
    );
    check(&Option::<i32>::None, b"null\n...\n");
    check(&Some(5), b"5\n...\n");
    check(&(), b"null\n...\n");
    check(&'x', b"x\n...\n");
    check(&(1, "a", true), b"- 1\n- a\n- true\n");
    check(&bytes::Bytes::from_static(b"\x00\xff"), b"- 0\n- 255\n");
    check(&serde_bytes_like(), b"[]\n");
    check(
        &BTreeMap::from([(-1i64, "a"), (10, "b"), (2, "c")]),
        b"-1: a\n2: c\n10: b\n",
    );
    check(
        &BTreeMap::from([(true, 1), (false, 0)]),
        b"false: 0\ntrue: 1\n",
    );
    check(
        &Pairs(vec![(Key::I(3), 1), (Key::F(1.5), 2), (Key::B(true), 3)]),
        b"true: 3\n1.5: 2\n3: 1\n",
    );
    check(
        &Pairs(vec![
            (Key::S("b".into()), 1),
            (Key::I(1), 2),
            (Key::S("a".into()), 3),
        ]),
        b"b: 1\n1: 2\na: 3\n",
    );
    check(&Pairs(vec![(Key::N, 1)]), b"null: 1\n");
    check(
        &Pairs(vec![(Key::S("z".into()), 1), (Key::N, 2)]),
        b"z: 1\nnull: 2\n",
    );
    check(&Shape::Unit, b"Unit\n...\n");
    check(&Shape::New(5), b"New: 5\n");
    check(&Shape::Tup(1, 2), b"Tup:\n- 1\n- 2\n");
    check(&Shape::Rec { w: 1, h: vec![] }, b"Rec:\n  h: []\n  w: 1\n");
    check(&vec![Shape::Unit, Shape::New(-1)], b"- Unit\n- New: -1\n");
    check(
        &Unordered {
            zz: 1,
            aa: vec!["x".into()],
            mm: None,
            bb: Some(BTreeMap::new()),
        },
        b"aa:\n- x\nbb: {}\nmm: null\nzz: 1\n",
    );
    // Exactly halfway between two shortest candidates (…760.25): Python's repr takes the even
    // digit, Rust's `{:e}` the upper one.
    check(
        &[1724393011044760.2, 768829292347080.2],
        b"- 1724393011044760.2\n- 768829292347080.2\n",
    );
    // f32 is written with its own shortest repr (Python has no f32).
    check(&0.1f32, b"0.1\n...\n");
    // Map keys must be scalars.
    let bad = BTreeMap::from([(vec![1], 2)]);
    assert!(matches!(
        YamlSerializer.encode(&bad),
        Err(Error::Encode { ref serializer, .. }) if serializer == "yaml"
    ));
}
