//! `pickle` tests (feature `pickle`). Fixtures were produced by CPython 3.11:
//! `pickle.dumps(value, protocol=N).hex()`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::json;

use super::unhex;
use crate::{Error, PICKLE_CONTENT_TYPE, PickleSerializer, Registry, Serializer};

const CT: &str = "application/x-python-serialize";

/// `{"a": 1, "b": [1, 2.5, "x"], "c": None, "d": True}` in protocols 0 to 5.
const DICT: [&str; 6] = [
    "286470300a56610a70310a49310a7356620a70320a286c70330a49310a6146322e350a6156780a70340a617356630a70350a4e7356640a70360a4930310a732e",
    "7d71002858010000006171014b0158010000006271025d7103284b0147400400000000000058010000007871046558010000006371054e58010000006471064930310a752e",
    "80027d71002858010000006171014b0158010000006271025d7103284b0147400400000000000058010000007871046558010000006371054e580100000064710688752e",
    "80037d71002858010000006171014b0158010000006271025d7103284b0147400400000000000058010000007871046558010000006371054e580100000064710688752e",
    "8004952c000000000000007d94288c0161944b018c0162945d94284b014740040000000000008c017894658c0163944e8c01649488752e",
    "8005952c000000000000007d94288c0161944b018c0162945d94284b014740040000000000008c017894658c0163944e8c01649488752e",
];

/// `{"t": (1, "two"), "by": b"\x00\xff", "s": {3}, "fs": frozenset([4]), "neg": -5, "u": "wörld"}`,
/// protocol 5.
const MIXED5: &str = "80059549000000000000007d94288c0174944b018c0374776f9486948c02627994430200ff948c0173948f94284b03908c02667394284b0491948c036e6567944afbffffff8c0175948c0677c3b6726c6494752e";

/// `{"t": (1, "two"), "by": b"\x00\xff", "s": {3}, "neg": -5, "u": "wörld"}`, protocol 2: bytes
/// as `_codecs.encode(...)` and the set as `__builtin__.set([...])` (GLOBAL + REDUCE on the two
/// allowed builtins).
const MIXED2: &str = "80027d71002858010000007471014b01580300000074776f7102867103580200000062797104635f636f646563730a656e636f64650a7105580300000000c3bf710658060000006c6174696e317107867108527109580100000073710a635f5f6275696c74696e5f5f0a7365740a710b5d710c4b036185710d52710e58030000006e6567710f4afbffffff5801000000757110580600000077c3b6726c647111752e";

/// `datetime.datetime(2024, 1, 2)`, protocol 4 (STACK_GLOBAL + REDUCE).
const DATETIME4: &str = "8004952a000000000000008c086461746574696d65948c086461746574696d65949394430a07e8010200000000000094859452942e";
/// `datetime.datetime(2024, 1, 2)`, protocol 2 (GLOBAL + REDUCE).
const DATETIME2: &str = "8002636461746574696d650a6461746574696d650a7100635f636f646563730a656e636f64650a7101580b00000007c3a80102000000000000710258060000006c6174696e3171038671045271058571065271072e";
/// An instance of `class Foo` with `x = 1`, protocol 4 (STACK_GLOBAL, NEWOBJ, BUILD).
const CLASS4: &str =
    "80049521000000000000008c085f5f6d61696e5f5f948c03466f6f9493942981947d948c0178944b0173622e";
/// The same, protocol 2 (GLOBAL __main__.Foo, NEWOBJ, BUILD).
const CLASS2: &str = "8002635f5f6d61696e5f5f0a466f6f0a7100298171017d710258010000007871034b0173622e";
/// The same, protocol 0 (GLOBAL copy_reg._reconstructor, REDUCE, BUILD).
const CLASS0: &str = "63636f70795f7265670a5f7265636f6e7374727563746f720a70300a28635f5f6d61696e5f5f0a466f6f0a70310a635f5f6275696c74696e5f5f0a6f626a6563740a70320a4e7470330a5270340a286470350a56780a70360a49310a73622e";
/// The classic `os.system("echo hi")` payload, protocol 0.
const OS_SYSTEM: &[u8] = b"cos\nsystem\n(S'echo hi'\ntR.";

#[derive(Deserialize, Debug, PartialEq)]
struct Doc {
    a: i64,
    b: (i64, f64, String),
    c: Option<String>,
    d: bool,
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> crate::Result<T> {
    let registry = Registry::default();
    let accept = registry.accept(["pickle"])?;
    registry.decode(body, Some(CT), Some("binary"), Some(&accept))
}

fn assert_refused(body: &[u8], needle: &str) {
    let err = decode::<serde_json::Value>(body).unwrap_err();
    match &err {
        Error::Decode { content_type, .. } => assert_eq!(content_type, CT),
        other => panic!("expected Error::Decode, got {other:?}"),
    }
    let msg = super::chain(&err);
    assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
}

#[test]
fn metadata() {
    let s = PickleSerializer;
    assert_eq!(s.name(), "pickle");
    assert_eq!(s.content_type(), CT);
    assert_eq!(PICKLE_CONTENT_TYPE, CT);
    assert_eq!(s.content_encoding(), "binary");
    assert!(!s.enabled_by_default());
    let registry = Registry::default();
    assert_eq!(registry.serializer("pickle").unwrap().content_type(), CT);
    assert_eq!(registry.serializer(CT).unwrap().name(), "pickle");
}

#[test]
fn decodes_python_dict_in_every_protocol() {
    let expected = json!({"a": 1, "b": [1, 2.5, "x"], "c": null, "d": true});
    for (protocol, hex) in DICT.iter().enumerate() {
        let body = unhex(hex);
        let value: serde_json::Value = decode(&body).unwrap();
        assert_eq!(value, expected, "protocol {protocol}");
        let doc: Doc = decode(&body).unwrap();
        assert_eq!(
            doc,
            Doc {
                a: 1,
                b: (1, 2.5, "x".into()),
                c: None,
                d: true
            },
            "protocol {protocol}"
        );
    }
}

#[derive(Deserialize, Debug, PartialEq)]
struct Mixed {
    t: (i64, String),
    #[serde(with = "serde_bytes_vec")]
    by: Vec<u8>,
    s: Vec<i64>,
    neg: i64,
    u: String,
}

/// Accepts bytes (Python `bytes`) as a `Vec<u8>`.
mod serde_bytes_vec {
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
        }
        d.deserialize_bytes(V)
    }
}

#[test]
fn decodes_tuples_bytes_sets_and_unicode() {
    for hex in [MIXED5, MIXED2] {
        let m: Mixed = decode(&unhex(hex)).unwrap();
        assert_eq!(
            m,
            Mixed {
                t: (1, "two".into()),
                by: vec![0x00, 0xff],
                s: vec![3],
                neg: -5,
                u: "wörld".into()
            }
        );
    }
    #[derive(Deserialize)]
    struct Frozen {
        fs: Vec<i64>,
    }
    let f: Frozen = decode(&unhex(MIXED5)).unwrap();
    assert_eq!(f.fs, [4]);
    // serde_json::Value has no bytes: a body holding bytes does not fit it.
    let err = decode::<BTreeMap<String, serde_json::Value>>(&unhex(MIXED5)).unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
}

#[test]
fn globals_and_object_construction_are_decode_errors() {
    assert_refused(&unhex(DATETIME4), "STACK_GLOBAL");
    assert_refused(&unhex(DATETIME2), "datetime.datetime");
    assert_refused(&unhex(CLASS4), "STACK_GLOBAL");
    assert_refused(&unhex(CLASS2), "__main__.Foo");
    assert_refused(&unhex(CLASS0), "copy_reg._reconstructor");
    assert_refused(OS_SYSTEM, "os.system");
}

#[test]
fn os_system_payload_runs_nothing() {
    // If anything executed the payload, it would create this file.
    let marker = std::env::temp_dir().join(format!("kombu-pickle-rce-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let body = format!("cos\nsystem\n(S'touch {}'\ntR.", marker.display());
    assert_refused(body.as_bytes(), "os.system");
    // Also straight through serde-pickle, without our opcode check: still only an error.
    let direct: Result<serde_json::Value, _> =
        serde_pickle::from_slice(body.as_bytes(), serde_pickle::DeOptions::new());
    assert!(direct.is_err());
    assert!(!marker.exists());
}

#[test]
fn malformed_bodies_are_decode_errors() {
    let good = unhex(DICT[4]);
    assert_refused(&good[..good.len() - 1], "truncated");
    let mut extra = good.clone();
    extra.push(b'N');
    assert_refused(&extra, "extra data");
    assert_refused(b"\x80\x04\xff.", "unknown opcode");
    assert_refused(b"\x80\x05\x97.", "out-of-band");
}

#[test]
fn refused_without_accept_list_and_when_not_accepted() {
    let registry = Registry::default();
    let body = unhex(DICT[4]);
    let err = registry
        .decode::<serde_json::Value>(&body, Some(CT), Some("binary"), None)
        .unwrap_err();
    assert!(matches!(err, Error::ContentDisallowed { .. }), "{err:?}");
    let json_only = registry.accept(["json"]).unwrap();
    let err = registry
        .decode::<serde_json::Value>(&body, Some(CT), Some("binary"), Some(&json_only))
        .unwrap_err();
    assert!(matches!(err, Error::ContentDisallowed { .. }), "{err:?}");
    let accept = registry.accept(["pickle"]).unwrap();
    assert_eq!(accept.content_types().collect::<Vec<_>>(), [CT]);
    let value: serde_json::Value = registry
        .decode(&body, Some(CT), Some("binary"), Some(&accept))
        .unwrap();
    assert_eq!(value["a"], 1);
}

#[test]
fn encode_is_refused() {
    let registry = Registry::default();
    let err = registry.encode(&json!({"a": 1}), "pickle").unwrap_err();
    match &err {
        Error::Encode { serializer, .. } => assert_eq!(serializer, "pickle"),
        other => panic!("expected Error::Encode, got {other:?}"),
    }
    assert!(super::chain(&err).contains("never writes it"), "{err}");
    assert!(PickleSerializer.encode(&1).is_err());
}

/// `depth` nested lists around an int, protocol 4 (`]` ... `K\x01` `a` ...).
fn nested(depth: usize) -> Vec<u8> {
    let mut body = b"\x80\x04".to_vec();
    body.extend(std::iter::repeat_n(b']', depth));
    body.extend(b"K\x01");
    body.extend(std::iter::repeat_n(b'a', depth));
    body.push(b'.');
    body
}

#[test]
fn nesting_is_bounded() {
    let mut expected = json!(1);
    for _ in 0..127 {
        expected = json!([expected]);
    }
    let value: serde_json::Value = decode(&nested(127)).unwrap();
    assert_eq!(value, expected);
    assert_refused(&nested(129), "deeper than 128");
    // Deep enough to overflow the stack if it reached the decoder.
    assert_refused(&nested(100_000), "deeper than 128");
    // A memoized list that grows after being placed in another container is refused.
    // `] q0 ] h0 a q1 0 h0 K1 a 0 h1 .`: P = [L]; then L.append(1); then P.
    assert_refused(
        b"\x80\x02]q\x00]h\x00aq\x010h\x00K\x01a0h\x01.",
        "after it was referenced",
    );
}

#[test]
fn shared_references_decode_as_copies() {
    // x = [1]; pickle.dumps({"a": x, "b": x}, protocol=4) and pickle.dumps((x, x), protocol=4)
    let v: serde_json::Value = decode(&unhex(
        "80049514000000000000007d94288c0161945d944b01618c0162946802752e",
    ))
    .unwrap();
    assert_eq!(v, json!({"a": [1], "b": [1]}));
    let v: serde_json::Value =
        decode(&unhex("8004950a000000000000005d944b0161680086942e")).unwrap();
    assert_eq!(v, json!([[1], [1]]));
}
