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

/// `(value, yaml.safe_dump(value))`; the expected bytes were produced by PyYAML 6.0.3.
fn pyyaml_corpus() -> Vec<(serde_json::Value, &'static [u8])> {
    use serde_json::json;
    let mut cases: Vec<(serde_json::Value, &'static [u8])> = Vec::new();
    let mut c = |value, expected: &'static [u8]| cases.push((value, expected));
    c(json!("plain"), b"plain\n...\n");
    c(json!({"k": "plain"}), b"k: plain\n");
    c(json!(["plain"]), b"- plain\n");
    c(json!({"plain": 1}), b"plain: 1\n");
    c(json!("two words"), b"two words\n...\n");
    c(json!({"k": "two words"}), b"k: two words\n");
    c(json!(["two words"]), b"- two words\n");
    c(json!({"two words": 1}), b"two words: 1\n");
    c(json!("yes"), b"'yes'\n");
    c(json!({"k": "yes"}), b"k: 'yes'\n");
    c(json!(["yes"]), b"- 'yes'\n");
    c(json!({"yes": 1}), b"'yes': 1\n");
    c(json!("No"), b"'No'\n");
    c(json!({"k": "No"}), b"k: 'No'\n");
    c(json!(["No"]), b"- 'No'\n");
    c(json!({"No": 1}), b"'No': 1\n");
    c(json!("on"), b"'on'\n");
    c(json!({"k": "on"}), b"k: 'on'\n");
    c(json!(["on"]), b"- 'on'\n");
    c(json!({"on": 1}), b"'on': 1\n");
    c(json!("OFF"), b"'OFF'\n");
    c(json!({"k": "OFF"}), b"k: 'OFF'\n");
    c(json!(["OFF"]), b"- 'OFF'\n");
    c(json!({"OFF": 1}), b"'OFF': 1\n");
    c(json!("y"), b"y\n...\n");
    c(json!({"k": "y"}), b"k: y\n");
    c(json!(["y"]), b"- y\n");
    c(json!({"y": 1}), b"y: 1\n");
    c(json!("n"), b"n\n...\n");
    c(json!({"k": "n"}), b"k: n\n");
    c(json!(["n"]), b"- n\n");
    c(json!({"n": 1}), b"n: 1\n");
    c(json!("true"), b"'true'\n");
    c(json!({"k": "true"}), b"k: 'true'\n");
    c(json!(["true"]), b"- 'true'\n");
    c(json!({"true": 1}), b"'true': 1\n");
    c(json!("False"), b"'False'\n");
    c(json!({"k": "False"}), b"k: 'False'\n");
    c(json!(["False"]), b"- 'False'\n");
    c(json!({"False": 1}), b"'False': 1\n");
    c(json!("null"), b"'null'\n");
    c(json!({"k": "null"}), b"k: 'null'\n");
    c(json!(["null"]), b"- 'null'\n");
    c(json!({"null": 1}), b"'null': 1\n");
    c(json!("Null"), b"'Null'\n");
    c(json!({"k": "Null"}), b"k: 'Null'\n");
    c(json!(["Null"]), b"- 'Null'\n");
    c(json!({"Null": 1}), b"'Null': 1\n");
    c(json!("~"), b"'~'\n");
    c(json!({"k": "~"}), b"k: '~'\n");
    c(json!(["~"]), b"- '~'\n");
    c(json!({"~": 1}), b"'~': 1\n");
    c(json!(""), b"''\n");
    c(json!({"k": ""}), b"k: ''\n");
    c(json!([""]), b"- ''\n");
    c(json!({"": 1}), b"? ''\n: 1\n");
    c(json!("1:20"), b"'1:20'\n");
    c(json!({"k": "1:20"}), b"k: '1:20'\n");
    c(json!(["1:20"]), b"- '1:20'\n");
    c(json!({"1:20": 1}), b"'1:20': 1\n");
    c(json!("190:20:30"), b"'190:20:30'\n");
    c(json!({"k": "190:20:30"}), b"k: '190:20:30'\n");
    c(json!(["190:20:30"]), b"- '190:20:30'\n");
    c(json!({"190:20:30": 1}), b"'190:20:30': 1\n");
    c(json!("2024-01-02"), b"'2024-01-02'\n");
    c(json!({"k": "2024-01-02"}), b"k: '2024-01-02'\n");
    c(json!(["2024-01-02"]), b"- '2024-01-02'\n");
    c(json!({"2024-01-02": 1}), b"'2024-01-02': 1\n");
    c(json!("2024-01-02T03:04:05Z"), b"'2024-01-02T03:04:05Z'\n");
    c(
        json!({"k": "2024-01-02T03:04:05Z"}),
        b"k: '2024-01-02T03:04:05Z'\n",
    );
    c(
        json!(["2024-01-02T03:04:05Z"]),
        b"- '2024-01-02T03:04:05Z'\n",
    );
    c(
        json!({"2024-01-02T03:04:05Z": 1}),
        b"'2024-01-02T03:04:05Z': 1\n",
    );
    c(
        json!("2001-12-14 21:59:43.10 -5"),
        b"'2001-12-14 21:59:43.10 -5'\n",
    );
    c(
        json!({"k": "2001-12-14 21:59:43.10 -5"}),
        b"k: '2001-12-14 21:59:43.10 -5'\n",
    );
    c(
        json!(["2001-12-14 21:59:43.10 -5"]),
        b"- '2001-12-14 21:59:43.10 -5'\n",
    );
    c(
        json!({"2001-12-14 21:59:43.10 -5": 1}),
        b"'2001-12-14 21:59:43.10 -5': 1\n",
    );
    c(json!("0x1F"), b"'0x1F'\n");
    c(json!({"k": "0x1F"}), b"k: '0x1F'\n");
    c(json!(["0x1F"]), b"- '0x1F'\n");
    c(json!({"0x1F": 1}), b"'0x1F': 1\n");
    c(json!("0b101"), b"'0b101'\n");
    c(json!({"k": "0b101"}), b"k: '0b101'\n");
    c(json!(["0b101"]), b"- '0b101'\n");
    c(json!({"0b101": 1}), b"'0b101': 1\n");
    c(json!("017"), b"'017'\n");
    c(json!({"k": "017"}), b"k: '017'\n");
    c(json!(["017"]), b"- '017'\n");
    c(json!({"017": 1}), b"'017': 1\n");
    c(json!("0o17"), b"0o17\n...\n");
    c(json!({"k": "0o17"}), b"k: 0o17\n");
    c(json!(["0o17"]), b"- 0o17\n");
    c(json!({"0o17": 1}), b"0o17: 1\n");
    c(json!("1e3"), b"1e3\n...\n");
    c(json!({"k": "1e3"}), b"k: 1e3\n");
    c(json!(["1e3"]), b"- 1e3\n");
    c(json!({"1e3": 1}), b"1e3: 1\n");
    c(json!("1.5e3"), b"1.5e3\n...\n");
    c(json!({"k": "1.5e3"}), b"k: 1.5e3\n");
    c(json!(["1.5e3"]), b"- 1.5e3\n");
    c(json!({"1.5e3": 1}), b"1.5e3: 1\n");
    c(json!("1.0e+3"), b"'1.0e+3'\n");
    c(json!({"k": "1.0e+3"}), b"k: '1.0e+3'\n");
    c(json!(["1.0e+3"]), b"- '1.0e+3'\n");
    c(json!({"1.0e+3": 1}), b"'1.0e+3': 1\n");
    c(json!("1_000"), b"'1_000'\n");
    c(json!({"k": "1_000"}), b"k: '1_000'\n");
    c(json!(["1_000"]), b"- '1_000'\n");
    c(json!({"1_000": 1}), b"'1_000': 1\n");
    c(json!("+1"), b"'+1'\n");
    c(json!({"k": "+1"}), b"k: '+1'\n");
    c(json!(["+1"]), b"- '+1'\n");
    c(json!({"+1": 1}), b"'+1': 1\n");
    c(json!("-1"), b"'-1'\n");
    c(json!({"k": "-1"}), b"k: '-1'\n");
    c(json!(["-1"]), b"- '-1'\n");
    c(json!({"-1": 1}), b"'-1': 1\n");
    c(json!("1."), b"'1.'\n");
    c(json!({"k": "1."}), b"k: '1.'\n");
    c(json!(["1."]), b"- '1.'\n");
    c(json!({"1.": 1}), b"'1.': 1\n");
    c(json!(".5"), b"'.5'\n");
    c(json!({"k": ".5"}), b"k: '.5'\n");
    c(json!([".5"]), b"- '.5'\n");
    c(json!({".5": 1}), b"'.5': 1\n");
    c(json!(".inf"), b"'.inf'\n");
    c(json!({"k": ".inf"}), b"k: '.inf'\n");
    c(json!([".inf"]), b"- '.inf'\n");
    c(json!({".inf": 1}), b"'.inf': 1\n");
    c(json!("-.Inf"), b"'-.Inf'\n");
    c(json!({"k": "-.Inf"}), b"k: '-.Inf'\n");
    c(json!(["-.Inf"]), b"- '-.Inf'\n");
    c(json!({"-.Inf": 1}), b"'-.Inf': 1\n");
    c(json!(".nan"), b"'.nan'\n");
    c(json!({"k": ".nan"}), b"k: '.nan'\n");
    c(json!([".nan"]), b"- '.nan'\n");
    c(json!({".nan": 1}), b"'.nan': 1\n");
    c(json!("NaN"), b"NaN\n...\n");
    c(json!({"k": "NaN"}), b"k: NaN\n");
    c(json!(["NaN"]), b"- NaN\n");
    c(json!({"NaN": 1}), b"NaN: 1\n");
    c(json!("inf"), b"inf\n...\n");
    c(json!({"k": "inf"}), b"k: inf\n");
    c(json!(["inf"]), b"- inf\n");
    c(json!({"inf": 1}), b"inf: 1\n");
    c(json!("-"), b"'-'\n");
    c(json!({"k": "-"}), b"k: '-'\n");
    c(json!(["-"]), b"- '-'\n");
    c(json!({"-": 1}), b"'-': 1\n");
    c(json!("- x"), b"'- x'\n");
    c(json!({"k": "- x"}), b"k: '- x'\n");
    c(json!(["- x"]), b"- '- x'\n");
    c(json!({"- x": 1}), b"'- x': 1\n");
    c(json!("-x"), b"-x\n...\n");
    c(json!({"k": "-x"}), b"k: -x\n");
    c(json!(["-x"]), b"- -x\n");
    c(json!({"-x": 1}), b"-x: 1\n");
    c(json!(": x"), b"': x'\n");
    c(json!({"k": ": x"}), b"k: ': x'\n");
    c(json!([": x"]), b"- ': x'\n");
    c(json!({": x": 1}), b"': x': 1\n");
    c(json!("a: b"), b"'a: b'\n");
    c(json!({"k": "a: b"}), b"k: 'a: b'\n");
    c(json!(["a: b"]), b"- 'a: b'\n");
    c(json!({"a: b": 1}), b"'a: b': 1\n");
    c(json!("a:b"), b"a:b\n...\n");
    c(json!({"k": "a:b"}), b"k: a:b\n");
    c(json!(["a:b"]), b"- a:b\n");
    c(json!({"a:b": 1}), b"a:b: 1\n");
    c(json!("?"), b"'?'\n");
    c(json!({"k": "?"}), b"k: '?'\n");
    c(json!(["?"]), b"- '?'\n");
    c(json!({"?": 1}), b"'?': 1\n");
    c(json!("? x"), b"'? x'\n");
    c(json!({"k": "? x"}), b"k: '? x'\n");
    c(json!(["? x"]), b"- '? x'\n");
    c(json!({"? x": 1}), b"'? x': 1\n");
    c(json!("#x"), b"'#x'\n");
    c(json!({"k": "#x"}), b"k: '#x'\n");
    c(json!(["#x"]), b"- '#x'\n");
    c(json!({"#x": 1}), b"'#x': 1\n");
    c(json!("a #b"), b"'a #b'\n");
    c(json!({"k": "a #b"}), b"k: 'a #b'\n");
    c(json!(["a #b"]), b"- 'a #b'\n");
    c(json!({"a #b": 1}), b"'a #b': 1\n");
    c(json!("a#b"), b"a#b\n...\n");
    c(json!({"k": "a#b"}), b"k: a#b\n");
    c(json!(["a#b"]), b"- a#b\n");
    c(json!({"a#b": 1}), b"a#b: 1\n");
    c(json!("<<"), b"'<<'\n");
    c(json!({"k": "<<"}), b"k: '<<'\n");
    c(json!(["<<"]), b"- '<<'\n");
    c(json!({"<<": 1}), b"'<<': 1\n");
    c(json!("="), b"'='\n");
    c(json!({"k": "="}), b"k: '='\n");
    c(json!(["="]), b"- '='\n");
    c(json!({"=": 1}), b"'=': 1\n");
    c(json!("!"), b"'!'\n");
    c(json!({"k": "!"}), b"k: '!'\n");
    c(json!(["!"]), b"- '!'\n");
    c(json!({"!": 1}), b"'!': 1\n");
    c(json!("&a"), b"'&a'\n");
    c(json!({"k": "&a"}), b"k: '&a'\n");
    c(json!(["&a"]), b"- '&a'\n");
    c(json!({"&a": 1}), b"'&a': 1\n");
    c(json!("*a"), b"'*a'\n");
    c(json!({"k": "*a"}), b"k: '*a'\n");
    c(json!(["*a"]), b"- '*a'\n");
    c(json!({"*a": 1}), b"'*a': 1\n");
    c(json!("%"), b"'%'\n");
    c(json!({"k": "%"}), b"k: '%'\n");
    c(json!(["%"]), b"- '%'\n");
    c(json!({"%": 1}), b"'%': 1\n");
    c(json!("@x"), b"'@x'\n");
    c(json!({"k": "@x"}), b"k: '@x'\n");
    c(json!(["@x"]), b"- '@x'\n");
    c(json!({"@x": 1}), b"'@x': 1\n");
    c(json!("`x"), b"'`x'\n");
    c(json!({"k": "`x"}), b"k: '`x'\n");
    c(json!(["`x"]), b"- '`x'\n");
    c(json!({"`x": 1}), b"'`x': 1\n");
    c(json!("---"), b"'---'\n");
    c(json!({"k": "---"}), b"k: '---'\n");
    c(json!(["---"]), b"- '---'\n");
    c(json!({"---": 1}), b"'---': 1\n");
    c(json!("..."), b"'...'\n");
    c(json!({"k": "..."}), b"k: '...'\n");
    c(json!(["..."]), b"- '...'\n");
    c(json!({"...": 1}), b"'...': 1\n");
    c(json!("--- x"), b"'--- x'\n");
    c(json!({"k": "--- x"}), b"k: '--- x'\n");
    c(json!(["--- x"]), b"- '--- x'\n");
    c(json!({"--- x": 1}), b"'--- x': 1\n");
    c(json!("[x]"), b"'[x]'\n");
    c(json!({"k": "[x]"}), b"k: '[x]'\n");
    c(json!(["[x]"]), b"- '[x]'\n");
    c(json!({"[x]": 1}), b"'[x]': 1\n");
    c(json!("{x}"), b"'{x}'\n");
    c(json!({"k": "{x}"}), b"k: '{x}'\n");
    c(json!(["{x}"]), b"- '{x}'\n");
    c(json!({"{x}": 1}), b"'{x}': 1\n");
    c(json!("a,b"), b"a,b\n...\n");
    c(json!({"k": "a,b"}), b"k: a,b\n");
    c(json!(["a,b"]), b"- a,b\n");
    c(json!({"a,b": 1}), b"a,b: 1\n");
    c(json!("a[b]"), b"a[b]\n...\n");
    c(json!({"k": "a[b]"}), b"k: a[b]\n");
    c(json!(["a[b]"]), b"- a[b]\n");
    c(json!({"a[b]": 1}), b"a[b]: 1\n");
    c(json!("x?"), b"x?\n...\n");
    c(json!({"k": "x?"}), b"k: x?\n");
    c(json!(["x?"]), b"- x?\n");
    c(json!({"x?": 1}), b"x?: 1\n");
    c(json!("|"), b"'|'\n");
    c(json!({"k": "|"}), b"k: '|'\n");
    c(json!(["|"]), b"- '|'\n");
    c(json!({"|": 1}), b"'|': 1\n");
    c(json!(">"), b"'>'\n");
    c(json!({"k": ">"}), b"k: '>'\n");
    c(json!([">"]), b"- '>'\n");
    c(json!({">": 1}), b"'>': 1\n");
    c(json!(" lead"), b"' lead'\n");
    c(json!({"k": " lead"}), b"k: ' lead'\n");
    c(json!([" lead"]), b"- ' lead'\n");
    c(json!({" lead": 1}), b"' lead': 1\n");
    c(json!("trail "), b"'trail '\n");
    c(json!({"k": "trail "}), b"k: 'trail '\n");
    c(json!(["trail "]), b"- 'trail '\n");
    c(json!({"trail ": 1}), b"'trail ': 1\n");
    c(json!(" both "), b"' both '\n");
    c(json!({"k": " both "}), b"k: ' both '\n");
    c(json!([" both "]), b"- ' both '\n");
    c(json!({" both ": 1}), b"' both ': 1\n");
    c(json!("'quote'"), b"'''quote'''\n");
    c(json!({"k": "'quote'"}), b"k: '''quote'''\n");
    c(json!(["'quote'"]), b"- '''quote'''\n");
    c(json!({"'quote'": 1}), b"'''quote''': 1\n");
    c(json!("it's"), b"it's\n...\n");
    c(json!({"k": "it's"}), b"k: it's\n");
    c(json!(["it's"]), b"- it's\n");
    c(json!({"it's": 1}), b"it's: 1\n");
    c(json!("\"dq\""), b"'\"dq\"'\n");
    c(json!({"k": "\"dq\""}), b"k: '\"dq\"'\n");
    c(json!(["\"dq\""]), b"- '\"dq\"'\n");
    c(json!({"\"dq\"": 1}), b"'\"dq\"': 1\n");
    c(json!("say \"hi\""), b"say \"hi\"\n...\n");
    c(json!({"k": "say \"hi\""}), b"k: say \"hi\"\n");
    c(json!(["say \"hi\""]), b"- say \"hi\"\n");
    c(json!({"say \"hi\"": 1}), b"say \"hi\": 1\n");
    c(json!("back\\slash"), b"back\\slash\n...\n");
    c(json!({"k": "back\\slash"}), b"k: back\\slash\n");
    c(json!(["back\\slash"]), b"- back\\slash\n");
    c(json!({"back\\slash": 1}), b"back\\slash: 1\n");
    c(json!("line1\nline2"), b"'line1\n\n  line2'\n");
    c(json!({"k": "line1\nline2"}), b"k: 'line1\n\n  line2'\n");
    c(json!(["line1\nline2"]), b"- 'line1\n\n  line2'\n");
    c(json!({"line1\nline2": 1}), b"? 'line1\n\n  line2'\n: 1\n");
    c(json!("trailing newline\n"), b"'trailing newline\n\n  '\n");
    c(
        json!({"k": "trailing newline\n"}),
        b"k: 'trailing newline\n\n  '\n",
    );
    c(
        json!(["trailing newline\n"]),
        b"- 'trailing newline\n\n  '\n",
    );
    c(
        json!({"trailing newline\n": 1}),
        b"? 'trailing newline\n\n  '\n: 1\n",
    );
    c(json!("\n"), b"'\n\n  '\n");
    c(json!({"k": "\n"}), b"k: '\n\n  '\n");
    c(json!(["\n"]), b"- '\n\n  '\n");
    c(json!({"\n": 1}), b"? '\n\n  '\n: 1\n");
    c(json!("\nlead"), b"'\n\n  lead'\n");
    c(json!({"k": "\nlead"}), b"k: '\n\n  lead'\n");
    c(json!(["\nlead"]), b"- '\n\n  lead'\n");
    c(json!({"\nlead": 1}), b"? '\n\n  lead'\n: 1\n");
    c(json!("a\n\nb"), b"'a\n\n\n  b'\n");
    c(json!({"k": "a\n\nb"}), b"k: 'a\n\n\n  b'\n");
    c(json!(["a\n\nb"]), b"- 'a\n\n\n  b'\n");
    c(json!({"a\n\nb": 1}), b"? 'a\n\n\n  b'\n: 1\n");
    c(json!("a \nb"), b"\"a \\nb\"\n");
    c(json!({"k": "a \nb"}), b"k: \"a \\nb\"\n");
    c(json!(["a \nb"]), b"- \"a \\nb\"\n");
    c(json!({"a \nb": 1}), b"? \"a \\nb\"\n: 1\n");
    c(json!("a\n b"), b"\"a\\n b\"\n");
    c(json!({"k": "a\n b"}), b"k: \"a\\n b\"\n");
    c(json!(["a\n b"]), b"- \"a\\n b\"\n");
    c(json!({"a\n b": 1}), b"? \"a\\n b\"\n: 1\n");
    c(json!("tab\there"), b"\"tab\\there\"\n");
    c(json!({"k": "tab\there"}), b"k: \"tab\\there\"\n");
    c(json!(["tab\there"]), b"- \"tab\\there\"\n");
    c(json!({"tab\there": 1}), b"\"tab\\there\": 1\n");
    c(json!("cr\rx"), b"\"cr\\rx\"\n");
    c(json!({"k": "cr\rx"}), b"k: \"cr\\rx\"\n");
    c(json!(["cr\rx"]), b"- \"cr\\rx\"\n");
    c(json!({"cr\rx": 1}), b"\"cr\\rx\": 1\n");
    c(json!("h\u{e9}llo \u{2713}"), b"\"h\\xE9llo \\u2713\"\n");
    c(
        json!({"k": "h\u{e9}llo \u{2713}"}),
        b"k: \"h\\xE9llo \\u2713\"\n",
    );
    c(json!(["h\u{e9}llo \u{2713}"]), b"- \"h\\xE9llo \\u2713\"\n");
    c(
        json!({"h\u{e9}llo \u{2713}": 1}),
        b"\"h\\xE9llo \\u2713\": 1\n",
    );
    c(json!("emoji \u{1f600}"), b"\"emoji \\U0001F600\"\n");
    c(
        json!({"k": "emoji \u{1f600}"}),
        b"k: \"emoji \\U0001F600\"\n",
    );
    c(json!(["emoji \u{1f600}"]), b"- \"emoji \\U0001F600\"\n");
    c(json!({"emoji \u{1f600}": 1}), b"\"emoji \\U0001F600\": 1\n");
    c(
        json!("\u{0}\u{7}\u{8}\u{b}\u{c}\u{1b}\u{7f}\u{85}\u{a0}\u{2028}\u{2029}\u{feff}\u{fffe}"),
        b"\"\\0\\a\\b\\v\\f\\e\\x7F\\N\\_\\L\\P\\uFEFF\\uFFFE\"\n",
    );
    c(
        json!({"k": "\u{0}\u{7}\u{8}\u{b}\u{c}\u{1b}\u{7f}\u{85}\u{a0}\u{2028}\u{2029}\u{feff}\u{fffe}"}),
        b"k: \"\\0\\a\\b\\v\\f\\e\\x7F\\N\\_\\L\\P\\uFEFF\\uFFFE\"\n",
    );
    c(
        json!([
            "\u{0}\u{7}\u{8}\u{b}\u{c}\u{1b}\u{7f}\u{85}\u{a0}\u{2028}\u{2029}\u{feff}\u{fffe}"
        ]),
        b"- \"\\0\\a\\b\\v\\f\\e\\x7F\\N\\_\\L\\P\\uFEFF\\uFFFE\"\n",
    );
    c(
        json!({"\u{0}\u{7}\u{8}\u{b}\u{c}\u{1b}\u{7f}\u{85}\u{a0}\u{2028}\u{2029}\u{feff}\u{fffe}": 1}),
        b"? \"\\0\\a\\b\\v\\f\\e\\x7F\\N\\_\\L\\P\\uFEFF\\uFFFE\"\n: 1\n",
    );
    c(json!("word0 word1 word2 word3 word4 word5 word6 word7 word8 word9 word10 word11 word12 word13 word14 word15 word16 word17 word18 word19 word20 word21 word22 word23 word24 word25 word26 word27 word28 word29 "), b"'word0 word1 word2 word3 word4 word5 word6 word7 word8 word9 word10 word11 word12\n  word13 word14 word15 word16 word17 word18 word19 word20 word21 word22 word23 word24\n  word25 word26 word27 word28 word29 '\n");
    c(json!({"k": "word0 word1 word2 word3 word4 word5 word6 word7 word8 word9 word10 word11 word12 word13 word14 word15 word16 word17 word18 word19 word20 word21 word22 word23 word24 word25 word26 word27 word28 word29 "}), b"k: 'word0 word1 word2 word3 word4 word5 word6 word7 word8 word9 word10 word11 word12\n  word13 word14 word15 word16 word17 word18 word19 word20 word21 word22 word23 word24\n  word25 word26 word27 word28 word29 '\n");
    c(json!(["word0 word1 word2 word3 word4 word5 word6 word7 word8 word9 word10 word11 word12 word13 word14 word15 word16 word17 word18 word19 word20 word21 word22 word23 word24 word25 word26 word27 word28 word29 "]), b"- 'word0 word1 word2 word3 word4 word5 word6 word7 word8 word9 word10 word11 word12\n  word13 word14 word15 word16 word17 word18 word19 word20 word21 word22 word23 word24\n  word25 word26 word27 word28 word29 '\n");
    c(json!({"word0 word1 word2 word3 word4 word5 word6 word7 word8 word9 word10 word11 word12 word13 word14 word15 word16 word17 word18 word19 word20 word21 word22 word23 word24 word25 word26 word27 word28 word29 ": 1}), b"? 'word0 word1 word2 word3 word4 word5 word6 word7 word8 word9 word10 word11 word12\n  word13 word14 word15 word16 word17 word18 word19 word20 word21 word22 word23 word24\n  word25 word26 word27 word28 word29 '\n: 1\n");
    c(json!("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"), b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n...\n");
    c(json!({"k": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}), b"k: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n");
    c(json!(["xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]), b"- xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n");
    c(json!({"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx": 1}), b"? xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n: 1\n");
    c(json!("\u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} end"), b"\"\\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9\\\n  \\ \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9\\\n  \\ \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9\\\n  \\ \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 end\"\n");
    c(json!({"k": "\u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} end"}), b"k: \"\\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9\\\n  \\ \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9\\\n  \\ \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9\\\n  \\ \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 end\"\n");
    c(json!(["\u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} end"]), b"- \"\\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9\\\n  \\ \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9\\\n  \\ \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9\\\n  \\ \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 end\"\n");
    c(json!({"\u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} \u{e9} end": 1}), b"? \"\\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9\\\n  \\ \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9\\\n  \\ \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9\\\n  \\ \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 end\"\n: 1\n");
    c(json!("yes abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc "), b"'yes abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc\n  abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc\n  abc abc abc abc abc abc abc abc abc abc '\n");
    c(json!({"k": "yes abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc "}), b"k: 'yes abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc\n  abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc\n  abc abc abc abc abc abc abc abc abc abc abc '\n");
    c(json!(["yes abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc "]), b"- 'yes abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc\n  abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc\n  abc abc abc abc abc abc abc abc abc abc abc '\n");
    c(json!({"yes abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc ": 1}), b"? 'yes abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc\n  abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc abc\n  abc abc abc abc abc abc abc abc abc abc abc '\n: 1\n");
    c(
        json!("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa b"),
        b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa b\n...\n",
    );
    c(json!({"k": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa b"}), b"k: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n  b\n");
    c(
        json!([
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa b"
        ]),
        b"- aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n  b\n",
    );
    c(
        json!({"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa b": 1}),
        b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa b: 1\n",
    );
    c(json!("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa b c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c"), b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa b\n  c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c\n...\n");
    c(json!({"k": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa b c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c"}), b"k: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n  b c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c\n");
    c(json!(["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa b c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c"]), b"- aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n  b c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c\n");
    c(json!({"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa b c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c": 1}), b"? aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n  b c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c\n: 1\n");
    c(json!("short short short short short short short short short short short short short short short short short short short short short short short short short short short short short short \nsecond line \nsecond line \nsecond line \nsecond line \nsecond line \nsecond line \nsecond line \nsecond line \nsecond line \nsecond line "), b"\"short short short short short short short short short short short short short short\\\n  \\ short short short short short short short short short short short short short\\\n  \\ short short short \\nsecond line \\nsecond line \\nsecond line \\nsecond line \\nsecond\\\n  \\ line \\nsecond line \\nsecond line \\nsecond line \\nsecond line \\nsecond line \"\n");
    c(json!({"k": "short short short short short short short short short short short short short short short short short short short short short short short short short short short short short short \nsecond line \nsecond line \nsecond line \nsecond line \nsecond line \nsecond line \nsecond line \nsecond line \nsecond line \nsecond line "}), b"k: \"short short short short short short short short short short short short short\\\n  \\ short short short short short short short short short short short short short\\\n  \\ short short short short \\nsecond line \\nsecond line \\nsecond line \\nsecond line\\\n  \\ \\nsecond line \\nsecond line \\nsecond line \\nsecond line \\nsecond line \\nsecond\\\n  \\ line \"\n");
    c(json!(["short short short short short short short short short short short short short short short short short short short short short short short short short short short short short short \nsecond line \nsecond line \nsecond line \nsecond line \nsecond line \nsecond line \nsecond line \nsecond line \nsecond line \nsecond line "]), b"- \"short short short short short short short short short short short short short short\\\n  \\ short short short short short short short short short short short short short\\\n  \\ short short short \\nsecond line \\nsecond line \\nsecond line \\nsecond line \\nsecond\\\n  \\ line \\nsecond line \\nsecond line \\nsecond line \\nsecond line \\nsecond line \"\n");
    c(json!({"short short short short short short short short short short short short short short short short short short short short short short short short short short short short short short \nsecond line \nsecond line \nsecond line \nsecond line \nsecond line \nsecond line \nsecond line \nsecond line \nsecond line \nsecond line ": 1}), b"? \"short short short short short short short short short short short short short short\\\n  \\ short short short short short short short short short short short short short\\\n  \\ short short short \\nsecond line \\nsecond line \\nsecond line \\nsecond line \\nsecond\\\n  \\ line \\nsecond line \\nsecond line \\nsecond line \\nsecond line \\nsecond line \"\n: 1\n");
    c(
        json!({"b": [1, {"y": {}, "x": []}, [2, [3, []]]], "a": {"c": {"d": [[]]}}}),
        b"a:\n  c:\n    d:\n    - []\nb:\n- 1\n- x: []\n  y: {}\n- - 2\n  - - 3\n    - []\n",
    );
    c(
        json!([{"a": 1, "b": 2}, {"c": [1, 2], "d": {"e": null}}, [], {}]),
        b"- a: 1\n  b: 2\n- c:\n  - 1\n  - 2\n  d:\n    e: null\n- []\n- {}\n",
    );
    c(json!({"list": [[1, 2], [3, [4, 5]]], "maps": [{"k": [{"z": 1, "y": [true, false]}]}]}), b"list:\n- - 1\n  - 2\n- - 3\n  - - 4\n    - 5\nmaps:\n- k:\n  - y:\n    - true\n    - false\n    z: 1\n");
    c(json!([[[[]]]]), b"- - - []\n");
    c(json!({}), b"{}\n");
    c(json!([]), b"[]\n");
    c(json!({"a": {}}), b"a: {}\n");
    c(json!({"a": []}), b"a: []\n");
    c(json!([{}]), b"- {}\n");
    c(json!([[]]), b"- []\n");
    c(json!({"zeta": 1, "Alpha": 2, "alpha": 3, "_": 4, "10": 5, "9": 6, "é": 7, "zé": 8, "😀": 9, "Ａ": 10}), b"'10': 5\n'9': 6\nAlpha: 2\n_: 4\nalpha: 3\nzeta: 1\n\"z\\xE9\": 8\n\"\\xE9\": 7\n\"\\uFF21\": 10\n\"\\U0001F600\": 9\n");
    c(json!([1, -1, 0, i64::MAX, i64::MIN, 1u64 << 63, u64::MAX]), b"- 1\n- -1\n- 0\n- 9223372036854775807\n- -9223372036854775808\n- 9223372036854775808\n- 18446744073709551615\n");
    c(json!([0.1, 1e16, 1.5e-7, -0.0, 1e300, 5e-324, 123456789.123, 1e22, 1e-5, 100.0, -2.5, 1.7976931348623157e308]), b"- 0.1\n- 1.0e+16\n- 1.5e-07\n- -0.0\n- 1.0e+300\n- 5.0e-324\n- 123456789.123\n- 1.0e+22\n- 1.0e-05\n- 100.0\n- -2.5\n- 1.7976931348623157e+308\n");
    c(json!([true, false, null]), b"- true\n- false\n- null\n");
    c(json!(42), b"42\n...\n");
    c(json!(-7), b"-7\n...\n");
    c(json!(0.5), b"0.5\n...\n");
    c(json!(true), b"true\n...\n");
    c(json!(null), b"null\n...\n");
    c(json!(u64::MAX), b"18446744073709551615\n...\n");
    c(json!({"kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk": 1, "jjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjj": 2, "": 3, "multi\nline": 4, "yes": 5}), b"? ''\n: 3\n? jjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjj\n: 2\n? kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk\n: 1\n? 'multi\n\n  line'\n: 4\n'yes': 5\n");
    c(json!({"outer": {"inner": ["word0 word1 word2 word3 word4 word5 word6 word7 word8 word9 word10 word11 word12 word13 word14 word15 word16 word17 word18 word19 word20 word21 word22 word23 word24 word25 word26 word27 word28 word29 ", "é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é é end"]}}), b"outer:\n  inner:\n  - 'word0 word1 word2 word3 word4 word5 word6 word7 word8 word9 word10 word11 word12\n    word13 word14 word15 word16 word17 word18 word19 word20 word21 word22 word23 word24\n    word25 word26 word27 word28 word29 '\n  - \"\\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9\\\n    \\ \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9\\\n    \\ \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9\\\n    \\ \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 \\xE9 end\"\n");
    c(json!([["word0 word1 word2 word3 word4 word5 word6 word7 word8 word9 word10 word11 word12 word13 word14 word15 word16 word17 word18 word19 word20 word21 word22 word23 word24 word25 word26 word27 word28 word29 "], {"qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq": "word0 word1 word2 word3 word4 word5 word6 word7 word8 word9 word10 word11 word12 word13 word14 word15 word16 word17 word18 word19 word20 word21 word22 word23 word24 word25 word26 word27 word28 word29 "}]), b"- - 'word0 word1 word2 word3 word4 word5 word6 word7 word8 word9 word10 word11 word12\n    word13 word14 word15 word16 word17 word18 word19 word20 word21 word22 word23 word24\n    word25 word26 word27 word28 word29 '\n- qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq: 'word0\n    word1 word2 word3 word4 word5 word6 word7 word8 word9 word10 word11 word12 word13\n    word14 word15 word16 word17 word18 word19 word20 word21 word22 word23 word24 word25\n    word26 word27 word28 word29 '\n");
    cases
}

#[test]
fn encodes_byte_identical_to_pyyaml_safe_dump() {
    let cases = pyyaml_corpus();
    assert!(cases.len() > 300, "{}", cases.len());
    for (value, expected) in &cases {
        let got = encode_yaml(value);
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected),
            "for {value}"
        );
    }
}

/// The corpus strings that YAML 1.1 (PyYAML, hence our encoder) leaves plain but YAML 1.2
/// (`serde_norway`, our decoder) reads as numbers: documented difference.
const READ_AS_NUMBERS_BY_YAML_1_2: [&str; 2] = ["0o17", "1.5e3"];

#[test]
fn corpus_round_trips_through_our_decoder() {
    for (value, _) in pyyaml_corpus() {
        let text = value.to_string();
        if READ_AS_NUMBERS_BY_YAML_1_2
            .iter()
            .chain(&["1e3"])
            .any(|s| text.contains(&format!("\"{s}\"")))
        {
            continue;
        }
        let encoded = encode_yaml(&value);
        let back: serde_json::Value = decode(&encoded)
            .unwrap_or_else(|e| panic!("{value} -> {:?}: {e}", String::from_utf8_lossy(&encoded)));
        assert_eq!(back, value, "{:?}", String::from_utf8_lossy(&encoded));
    }
    // Typed values too.
    // (serde_norway's tree holds integers as i64 / u64 only.)
    let big: (u64, i64, u64) = (u64::MAX, i64::MIN, 1 << 63);
    assert_eq!(decode::<(u64, i64, u64)>(&encode_yaml(&big)).unwrap(), big);
    let floats = vec![f64::INFINITY, f64::NEG_INFINITY, -0.0, 1e17, 5e-324, 0.1];
    let back: Vec<f64> = decode(&encode_yaml(&floats)).unwrap();
    assert_eq!(back, floats);
    assert!(decode::<f64>(&encode_yaml(&f64::NAN)).unwrap().is_nan());
    let shape = vec![Shape::Unit, Shape::Unit];
    assert_eq!(decode::<Vec<Shape>>(&encode_yaml(&shape)).unwrap(), shape);
    let ints = BTreeMap::from([(-1i64, "a".to_owned()), (10, "b".into())]);
    assert_eq!(
        decode::<BTreeMap<i64, String>>(&encode_yaml(&ints)).unwrap(),
        ints
    );
    let opt: Vec<Option<u8>> = vec![None, Some(1)];
    assert_eq!(decode::<Vec<Option<u8>>>(&encode_yaml(&opt)).unwrap(), opt);
}

#[test]
fn strings_plain_in_yaml_1_1_but_numbers_in_yaml_1_2() {
    // yaml.safe_dump(["0o17", "1e3", "1.5e3", ".5e3", "1E-5"]): all plain; PyYAML's
    // safe_load reads them back as the same strings.
    let strings = ["0o17", "1e3", "1.5e3", ".5e3", "1E-5"];
    let encoded = encode_yaml(&strings);
    assert_eq!(&encoded[..], b"- 0o17\n- 1e3\n- 1.5e3\n- .5e3\n- 1E-5\n");
    // serde_norway (YAML 1.2) reads numbers: documented difference.
    let back: Vec<serde_json::Value> = decode(&encoded).unwrap();
    assert_eq!(
        back,
        serde_json::json!([15, 1000.0, 1500.0, 500.0, 0.00001])
            .as_array()
            .unwrap()
            .clone()
    );
    assert!(decode::<Vec<String>>(&encoded).is_err());
    for s in READ_AS_NUMBERS_BY_YAML_1_2 {
        assert!(strings.contains(&s));
    }
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
