//! What Python's `json.dumps` writes beyond RFC JSON (`NaN`, `Infinity`, `-Infinity`, lone
//! surrogates) is read, by `from_python_json` and by the registry's `json` serializer.

use std::collections::BTreeMap;

use kombu_serializers::{JSON_CONTENT_TYPE, Registry, from_python_json};

/// `json.dumps({"score": float("nan"), "hi": float("inf"), "lo": float("-inf"), "n": 1})`
const NON_FINITE: &[u8] = br#"{"score": NaN, "hi": Infinity, "lo": -Infinity, "n": 1}"#;

/// `json.dumps(["a\ud800b", "\udc00", "\ud83d\ude00", "\ud800\u0041"])`
const SURROGATES: &[u8] = br#"["a\ud800b", "\udc00", "\ud83d\ude00", "\ud800\u0041"]"#;

#[test]
fn non_finite_floats_into_f64() {
    let v: BTreeMap<String, f64> = from_python_json(NON_FINITE).unwrap();
    assert!(v["score"].is_nan());
    assert_eq!(v["hi"], f64::INFINITY);
    assert_eq!(v["lo"], f64::NEG_INFINITY);
    assert_eq!(v["n"], 1.0);
}

#[test]
fn non_finite_floats_into_serde_json_value_are_null() {
    let v: serde_json::Value = from_python_json(NON_FINITE).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"score": null, "hi": null, "lo": null, "n": 1})
    );
}

#[test]
fn non_finite_floats_nested_and_in_typed_structs() {
    #[derive(serde::Deserialize, Debug)]
    struct Task {
        args: Vec<f64>,
        kwargs: BTreeMap<String, Option<f64>>,
        name: String,
        kind: Kind,
    }
    #[derive(serde::Deserialize, Debug, PartialEq)]
    enum Kind {
        Plain,
        Weighted(f64),
    }
    let text = br#"{"args": [1.5, NaN, [], 2], "kwargs": {"x": -Infinity, "y": null}, "name": "t", "kind": {"Weighted": Infinity}}"#;
    // An array inside args is not an f64: the error is reported, not swallowed.
    assert!(from_python_json::<Task>(text).is_err());
    let text = br#"{"args": [1.5, NaN, 2], "kwargs": {"x": -Infinity, "y": null}, "name": "t", "kind": {"Weighted": Infinity}}"#;
    let task: Task = from_python_json(text).unwrap();
    assert_eq!(task.args[0], 1.5);
    assert!(task.args[1].is_nan());
    assert_eq!(task.kwargs["x"], Some(f64::NEG_INFINITY));
    assert_eq!(task.kwargs["y"], None);
    assert_eq!(task.name, "t");
    assert_eq!(task.kind, Kind::Weighted(f64::INFINITY));
    let plain: Kind = from_python_json(br#"["Plain", NaN]"#)
        .map(|(k, _): (Kind, f64)| k)
        .unwrap();
    assert_eq!(plain, Kind::Plain);
}

#[test]
fn lone_surrogates_become_replacement_characters() {
    let v: Vec<String> = from_python_json(SURROGATES).unwrap();
    assert_eq!(v, ["a\u{fffd}b", "\u{fffd}", "\u{1f600}", "\u{fffd}A"]);
}

#[test]
fn strict_errors_stay_strict() {
    // Not Python JSON either: serde_json's error, with its position.
    let e = from_python_json::<serde_json::Value>(b"{\"a\": nan}").unwrap_err();
    assert!(e.to_string().contains("line 1"), "{e}");
    // Valid JSON that does not fit the type: the strict error too.
    let e = from_python_json::<u8>(b"300").unwrap_err();
    assert!(e.to_string().contains("300"), "{e}");
    // NaN into an integer fails.
    assert!(from_python_json::<Vec<i64>>(b"[1, NaN]").is_err());
    // Trailing characters fail.
    assert!(from_python_json::<f64>(b"NaN x").is_err());
    // Deep nesting is refused, not a stack overflow.
    let mut deep = "[".repeat(100_000);
    deep.push_str("NaN");
    assert!(from_python_json::<serde_json::Value>(deep.as_bytes()).is_err());
}

#[test]
fn registry_json_decodes_python_json() {
    let registry = Registry::default();
    let v: BTreeMap<String, f64> = registry
        .decode(NON_FINITE, Some(JSON_CONTENT_TYPE), Some("utf-8"), None)
        .unwrap();
    assert!(v["score"].is_nan());
    assert_eq!(v["lo"], f64::NEG_INFINITY);
    let s: Vec<String> = registry
        .decode(SURROGATES, Some(JSON_CONTENT_TYPE), Some("utf-8"), None)
        .unwrap();
    assert_eq!(s[0], "a\u{fffd}b");
}

#[test]
fn json_serializer_trait_decodes_python_json() {
    use kombu_serializers::{JsonSerializer, Serializer};
    let mut out: Option<BTreeMap<String, f64>> = None;
    JsonSerializer
        .decode(NON_FINITE, &mut |de| {
            out = Some(erased_serde::deserialize(de)?);
            Ok(())
        })
        .unwrap();
    let out = out.unwrap();
    assert!(out["score"].is_nan());
    assert_eq!(out["hi"], f64::INFINITY);
}
