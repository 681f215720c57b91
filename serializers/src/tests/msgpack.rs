//! `msgpack` tests. Expected bytes were produced by Python `msgpack` 1.x:
//! `msgpack.packb(value, use_bin_type=True).hex()`.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::unhex;
use crate::{Error, MsgpackSerializer, Registry, Serializer};

const CT: &str = "application/x-msgpack";

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
    tags: Vec<String>,
    nested: Nested,
    blob: Bytes,
}

fn doc() -> Doc {
    Doc {
        name: "wörld".into(),
        count: 3,
        ratio: 1.5,
        ok: true,
        missing: None,
        tags: vec!["a".into(), "b".into()],
        nested: Nested {
            x: 1,
            y: vec![-1, 300],
        },
        blob: Bytes::from_static(b"\x00\xff"),
    }
}

/// msgpack.packb({"name": "wörld", "count": 3, "ratio": 1.5, "ok": True, "missing": None,
///   "tags": ["a", "b"], "nested": {"x": 1, "y": [-1, 300]}, "blob": b"\x00\xff"},
///   use_bin_type=True)
const PY_DOC: &str = "88a46e616d65a677c3b6726c64a5636f756e7403a5726174696fcb3ff8000000000000a26f6bc3a76d697373696e67c0a47461677392a161a162a66e657374656482a17801a17992ffcd012ca4626c6f62c40200ff";

fn accept_msgpack(r: &Registry) -> crate::Accept {
    r.accept(["msgpack"]).unwrap()
}

#[test]
fn metadata_and_disabled_by_default() {
    let s = MsgpackSerializer;
    assert_eq!(s.name(), "msgpack");
    assert_eq!(s.content_type(), CT);
    assert_eq!(s.content_encoding(), "binary");
    assert!(!s.enabled_by_default());
}

#[test]
fn struct_encodes_byte_identical_to_python() {
    let r = Registry::default();
    let encoded = r.encode(&doc(), "msgpack").unwrap();
    assert_eq!(encoded.body.to_vec(), unhex(PY_DOC));
    assert_eq!(encoded.content_type, CT);
    assert_eq!(encoded.content_encoding, "binary");
}

#[test]
fn round_trip_struct() {
    let r = Registry::default();
    let encoded = r.encode(&doc(), "msgpack").unwrap();
    let back: Doc = r
        .decode(
            &encoded.body,
            Some(&encoded.content_type),
            Some(&encoded.content_encoding),
            Some(&accept_msgpack(&r)),
        )
        .unwrap();
    assert_eq!(back, doc());
    // Some(..) and maps with non-identifier keys round-trip too.
    let mut map = BTreeMap::new();
    map.insert("k y".to_owned(), Some(vec![1.25f64, -2.0]));
    map.insert("none".to_owned(), None);
    let encoded = r.encode(&map, "msgpack").unwrap();
    let back: BTreeMap<String, Option<Vec<f64>>> = r
        .decode(&encoded.body, Some(CT), None, Some(&accept_msgpack(&r)))
        .unwrap();
    assert_eq!(back, map);
}

#[test]
fn decodes_python_bytes() {
    let r = Registry::default();
    let accept = accept_msgpack(&r);
    let back: Doc = r
        .decode(&unhex(PY_DOC), Some(CT), Some("binary"), Some(&accept))
        .unwrap();
    assert_eq!(back, doc());

    // msgpack.packb({"a": 1, "b": ["x", "y"]}, use_bin_type=True)
    let value: serde_json::Value = r
        .decode(
            &unhex("82a16101a16292a178a179"),
            Some(CT),
            None,
            Some(&accept),
        )
        .unwrap();
    assert_eq!(value, serde_json::json!({"a": 1, "b": ["x", "y"]}));

    // msgpack.packb([1, "two", 3.25, None, False, b"\x01\x02", {"k": {"n": -70000}}, 2**40],
    //               use_bin_type=True)
    let py =
        unhex("9801a374776fcb400a000000000000c0c2c402010281a16b81a16ed2fffeee90cf0000010000000000");
    type Row = (
        u8,
        String,
        f64,
        Option<i32>,
        bool,
        Bytes,
        BTreeMap<String, BTreeMap<String, i64>>,
        u64,
    );
    let row: Row = r.decode(&py, Some(CT), None, Some(&accept)).unwrap();
    assert_eq!(row.0, 1);
    assert_eq!(row.1, "two");
    assert_eq!(row.2, 3.25);
    assert_eq!(row.3, None);
    assert!(!row.4);
    assert_eq!(&row.5[..], b"\x01\x02");
    assert_eq!(row.6["k"]["n"], -70000);
    assert_eq!(row.7, 1 << 40);
    // And we write the same bytes back.
    assert_eq!(r.encode(&row, "msgpack").unwrap().body.to_vec(), py);
}

#[test]
fn refused_without_accept_list_allowed_with_it() {
    let r = Registry::default();
    let body = unhex("82a16101a16292a178a179");
    let err = r
        .decode::<serde_json::Value>(&body, Some(CT), Some("binary"), None)
        .unwrap_err();
    assert!(
        matches!(err, Error::ContentDisallowed { ref content_type, .. } if content_type == CT),
        "{err:?}"
    );
    assert!(matches!(
        r.check_accept(Some(CT), None),
        Err(Error::ContentDisallowed { .. })
    ));
    // Accepting only json refuses it too.
    let json_only = r.accept(["json"]).unwrap();
    assert!(matches!(
        r.decode::<serde_json::Value>(&body, Some(CT), None, Some(&json_only)),
        Err(Error::ContentDisallowed { .. })
    ));
    let ok: serde_json::Value = r
        .decode(&body, Some(CT), Some("binary"), Some(&accept_msgpack(&r)))
        .unwrap();
    assert_eq!(ok["a"], 1);
}

#[test]
fn malformed_input_is_a_decode_error() {
    let r = Registry::default();
    let accept = accept_msgpack(&r);
    let cases: [&[u8]; 8] = [
        b"\xc1",                 // never-used marker
        b"\x92\x01",             // array of 2 with one element
        b"\xdd\xff\xff\xff\xff", // array32 claiming 4 billion elements, no data
        b"\xdb\xff\xff\xff\xff", // str32 claiming 4 GiB, no data
        b"\xa2\xff\xfe",         // str with invalid UTF-8
        b"\x01\x02",             // trailing data (Python: ExtraData)
        b"\x81\xa1a",            // map missing its value
        &[0x91; 5000],           // nesting deeper than the limit
    ];
    for body in cases {
        let err = r
            .decode::<serde_json::Value>(body, Some(CT), None, Some(&accept))
            .unwrap_err();
        assert!(
            matches!(err, Error::Decode { ref content_type, .. } if content_type == CT),
            "{body:?}: {err:?}"
        );
    }
    // Type mismatch against the target.
    let err = r
        .decode::<Doc>(
            &unhex("82a16101a16292a178a179"),
            Some(CT),
            None,
            Some(&accept),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
}

#[test]
fn struct_decodes_from_array_form_too() {
    // What rmp-serde writes by default (and Python for a tuple/list): fields by position.
    let positional = rmp_serde::to_vec(&doc()).unwrap();
    assert_eq!(positional[0], 0x98, "an array of 8 fields");
    let r = Registry::default();
    let back: Doc = r
        .decode(&positional, Some(CT), None, Some(&accept_msgpack(&r)))
        .unwrap();
    assert_eq!(back, doc());
}
