use serde::Serialize;
use serde_json::json;

use crate::{JsonSerializer, Serializer, to_python_json, to_python_json_string};

fn dumps<T: Serialize + ?Sized>(value: &T) -> String {
    to_python_json_string(value).unwrap()
}

#[derive(Serialize)]
struct Hello {
    hello: &'static str,
    n: i32,
}

#[test]
fn simple_object_matches_python() {
    // json.dumps({"hello": "world", "n": 1})
    assert_eq!(
        dumps(&Hello {
            hello: "world",
            n: 1
        }),
        r#"{"hello": "world", "n": 1}"#
    );
}

#[test]
fn nested_containers_match_python() {
    let value = json!({"a": [1, [2, {"b": null}], {}], "c": [], "d": {"e": true, "f": false}});
    assert_eq!(
        dumps(&value),
        r#"{"a": [1, [2, {"b": null}], {}], "c": [], "d": {"e": true, "f": false}}"#
    );
    assert_eq!(dumps(&Vec::<i32>::new()), "[]");
    assert_eq!(dumps(&json!({})), "{}");
    assert_eq!(dumps(""), r#""""#);
    assert_eq!(dumps(&()), "null");
    assert_eq!(dumps(&(true, false, None::<i32>)), "[true, false, null]");
}

#[test]
fn non_ascii_is_escaped_like_python() {
    assert_eq!(dumps("é"), r#""\u00e9""#);
    assert_eq!(dumps("😀"), r#""\ud83d\ude00""#);
    assert_eq!(dumps("wörld"), r#""w\u00f6rld""#);
    assert_eq!(dumps(&'€'), r#""\u20ac""#);
    // Keys are escaped the same way: json.dumps({"é": 1})
    assert_eq!(dumps(&json!({"é": 1})), r#"{"\u00e9": 1}"#);
}

#[test]
fn control_and_special_characters_match_python() {
    let s = "a\"b\\c/d\u{8}\u{c}\n\r\t\u{0}\u{1}\u{1f}\u{7f}\u{80} é ÿ ā € \u{ffff} 😀 \u{10ffff}";
    // json.dumps of the same Python string:
    let expected = r#""a\"b\\c/d\b\f\n\r\t\u0000\u0001\u001f\u007f\u0080 \u00e9 \u00ff \u0101 \u20ac \uffff \ud83d\ude00 \udbff\udfff""#;
    assert_eq!(dumps(s), expected);
}

#[test]
fn floats_match_python_repr() {
    let values = [
        1.5,
        0.1,
        1e16,
        1e15,
        123456789012345678.0,
        1e-4,
        1e-5,
        1.0,
        -0.0,
        0.0,
        2.5e-8,
        1.7976931348623157e308,
        5e-324,
        100.0,
        1234.5678,
        1e22,
        1e21,
        12345678901234567.0,
        0.3333333333333333,
        -1e100,
    ];
    let expected = "[1.5, 0.1, 1e+16, 1000000000000000.0, 1.2345678901234568e+17, 0.0001, 1e-05, \
        1.0, -0.0, 0.0, 2.5e-08, 1.7976931348623157e+308, 5e-324, 100.0, 1234.5678, 1e+22, \
        1e+21, 1.2345678901234568e+16, 0.3333333333333333, -1e+100]";
    assert_eq!(dumps(&values[..]), expected);
}

#[test]
fn random_floats_match_python_repr() {
    // json.dumps of random floats over many magnitudes (random.seed(7)) plus edge cases.
    let expected = "[-9.478653606090632e-11, 4828642362.681234, 5.827880059033551e-08, \
        -8.594723368917168e-30, -2.4066300012702502e-27, 8.26852124672038e-28, \
        2.2323896460701455e+29, 585541.4226403867, 4.658268061775628e-18, 4.191390435714652e-13, \
        308481.8241019344, 5.816001636624662e-25, 9.743057599473336e-09, 59601.16996623266, \
        -6.803999731817859, -3.141471703767915e+18, 2.997669968636823e-08, 77982963058424.38, \
        -300249.1185456253, -3.434756899583733e+25, 6.089590190364036e-13, 5.119328306475491e-24, \
        -3.4205580615985786e+17, 3.9207257047437666e-06, -5.580757526533747e+17, \
        -6.952953662736593e-10, 7968919.758215943, -9.35959960869036e+21, 0.6970420678269282, \
        -7.311593346408905e-28, -57794623071.77181, -7.166277943983036e-13, \
        -9.406485666460937e-30, -6.1091954348307685e-21, -2.1820777481967945e-28, \
        -7.383633795947942e-23, -9.168162261800615e-06, -1.6636628247192054e-26, \
        27783.913078445064, -4.305216510890757e+21, -415296517211698.56, 8841928271982.17, \
        8.298469466133206e-23, 6.585166769723302e-17, 8.310935615682864, 2.8193072232673764e-15, \
        -5.345909623001036e-05, 1.25491512495977e+29, -0.08995330100579522, 3.98978832320273e-06, \
        0.634289565685709, 6.734761584302485e-20, -0.001623031877720974, 5257560.389026694, \
        151264.93227942794, 3.63609922034571e+29, -8.743323773738197e-27, \
        -6.344095785339009e-22, 36416343.95282824, -8.48936926484615e-24, 9007199254740994.0, \
        0.3333333333333333, 0.6666666666666666, 9007199254740992.0, 9999999999999998.0, \
        0.30000000000000004, 1.23e-18, 4.35, 0.00030000000000000003]";
    // Parse each number with Rust's correctly rounded parser, then serialize: same bytes back.
    let values: Vec<f64> = expected
        .trim_matches(|c| c == '[' || c == ']')
        .split(", ")
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(values.len(), 69);
    assert_eq!(dumps(&values), expected);

    // The json decoder reads Python's floats back exactly (serde_json `float_roundtrip`).
    let decoded: Vec<f64> = decode_json(expected.as_bytes()).unwrap();
    assert_eq!(decoded, values);
}

#[test]
fn f32_uses_shortest_f32_digits_in_python_style() {
    assert_eq!(
        dumps(&[1.5f32, 0.1, 1e-5, 3e20, 16777216.0]),
        "[1.5, 0.1, 1e-05, 3e+20, 16777216.0]"
    );
}

#[test]
fn integers_match_python() {
    assert_eq!(
        dumps(&(0u8, -1i32, u64::MAX, i64::MIN)),
        "[0, -1, 18446744073709551615, -9223372036854775808]"
    );
    assert_eq!(
        dumps(&i128::MIN),
        "-170141183460469231731687303715884105728"
    );
    // json.dumps({1: 2}) -> '{"1": 2}'
    let mut map = std::collections::BTreeMap::new();
    map.insert(1, 2);
    assert_eq!(dumps(&map), r#"{"1": 2}"#);
}

#[test]
fn non_finite_floats_become_null() {
    // Documented deviation: Python writes NaN / Infinity, serde_json hands us null.
    assert_eq!(dumps(&[f64::NAN, f64::INFINITY]), "[null, null]");
}

#[test]
fn output_is_ascii_and_round_trips() {
    let original = json!({"text": "héllo 😀 \u{0} \"q\" \\ /", "list": [1.25, -3, "ü"]});
    let bytes = to_python_json(&original).unwrap();
    assert!(bytes.is_ascii());
    let back: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(back, original);
}

#[test]
fn serializer_metadata() {
    assert_eq!(JsonSerializer.name(), "json");
    assert_eq!(JsonSerializer.content_type(), "application/json");
    assert_eq!(JsonSerializer.content_encoding(), "utf-8");
    assert!(JsonSerializer.enabled_by_default());
}

#[test]
fn encode_through_trait_object() {
    let s: &dyn Serializer = &JsonSerializer;
    let out = s.encode(&json!(["é", 1.5])).unwrap();
    assert_eq!(out, br#"["\u00e9", 1.5]"#);
}

fn decode_json<T: serde::de::DeserializeOwned>(data: &[u8]) -> crate::Result<T> {
    let mut out = None;
    JsonSerializer.decode(data, &mut |de| {
        out = Some(erased_serde::deserialize::<T>(de)?);
        Ok(())
    })?;
    Ok(out.unwrap())
}

#[test]
fn decode_reads_python_output() {
    let v: serde_json::Value =
        decode_json(br#"{"hello": "w\u00f6rld", "e": "\ud83d\ude00"}"#).unwrap();
    assert_eq!(v, json!({"hello": "wörld", "e": "😀"}));
}

#[test]
fn decode_rejects_trailing_characters_and_garbage() {
    let err = decode_json::<serde_json::Value>(b"[1, 2] x").unwrap_err();
    match &err {
        crate::Error::Decode { content_type, .. } => assert_eq!(content_type, "application/json"),
        other => panic!("unexpected error {other:?}"),
    }
    assert!(super::chain(&err).contains("trailing"), "{err}");

    let err = decode_json::<serde_json::Value>(b"{\"a\": ").unwrap_err();
    assert!(matches!(err, crate::Error::Decode { .. }));
    let err = decode_json::<Vec<i32>>(b"{\"a\": 1}").unwrap_err();
    assert!(matches!(err, crate::Error::Decode { .. }));
    // Invalid UTF-8 inside a string is rejected, not panicked on.
    let err = decode_json::<String>(b"\"\xff\"").unwrap_err();
    assert!(matches!(err, crate::Error::Decode { .. }));
}

#[test]
// The literal is the float's exact value (a multiple of 0.25 near 2^51); that is the point.
#[allow(clippy::excessive_precision)]
fn float_ties_go_to_the_even_digit_like_python_repr() {
    // 1724393011044760.25 lies exactly halfway between the shortest candidates ...760.2 and
    // ...760.3; Python's repr (and so json.dumps) writes the even one.
    let value = [
        1724393011044760.25,
        -1724393011044760.25,
        0.1,
        5e-324,
        1e22,
        2.5,
    ];
    assert_eq!(
        dumps(&value[..]),
        "[1724393011044760.2, -1724393011044760.2, 0.1, 5e-324, 1e+22, 2.5]"
    );
}
