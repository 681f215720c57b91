use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Seen;
use crate::raw::{BodyDeserializer, TextMode};
use crate::{Error, RawSerializer, Serializer, TextSerializer};

fn decode_with<T: serde::de::DeserializeOwned>(
    s: &dyn Serializer,
    data: &[u8],
    encoding: Option<Option<&str>>,
) -> crate::Result<T> {
    let mut out = None;
    let mut visit = |de: &mut dyn erased_serde::Deserializer<'_>| {
        out = Some(erased_serde::deserialize::<T>(de)?);
        Ok(())
    };
    match encoding {
        None => s.decode(data, &mut visit)?,
        Some(enc) => s.decode_with_encoding(data, enc, &mut visit)?,
    }
    Ok(out.unwrap())
}

fn encode_err_message(s: &dyn Serializer, value: &dyn erased_serde::Serialize) -> String {
    match s.encode(value) {
        Err(Error::Encode { serializer, source }) => {
            assert_eq!(serializer, s.name());
            source.to_string()
        }
        other => panic!("expected an Encode error, got {other:?}"),
    }
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Wrapper(String);

#[test]
fn raw_metadata() {
    assert_eq!(RawSerializer.name(), "raw");
    assert_eq!(RawSerializer.content_type(), "application/data");
    assert_eq!(RawSerializer.content_encoding(), "binary");
    assert_eq!(TextSerializer.name(), "text");
    assert_eq!(TextSerializer.content_type(), "text/plain");
    assert_eq!(TextSerializer.content_encoding(), "utf-8");
}

#[test]
fn raw_encodes_bytes_in_every_form() {
    let expected = b"\x00\xffabc".to_vec();
    assert_eq!(
        RawSerializer
            .encode(&Bytes::from_static(b"\x00\xffabc"))
            .unwrap(),
        expected
    );
    assert_eq!(RawSerializer.encode(&expected).unwrap(), expected);
    assert_eq!(
        RawSerializer.encode(&[0u8, 255, b'a', b'b', b'c']).unwrap(),
        expected
    );
    assert_eq!(RawSerializer.encode(&&expected[..]).unwrap(), expected);
    assert_eq!(
        RawSerializer
            .encode(&Some(Bytes::from(expected.clone())))
            .unwrap(),
        expected
    );
    assert_eq!(RawSerializer.encode(&Vec::<u8>::new()).unwrap(), b"");
}

#[test]
fn raw_reports_encoding_per_value_like_kombu() {
    let (body, enc) = RawSerializer
        .encode_with_encoding(&Bytes::from_static(b"\x01"))
        .unwrap();
    assert_eq!((body.as_slice(), enc.as_str()), (&b"\x01"[..], "binary"));
    let (body, enc) = RawSerializer.encode_with_encoding(&"héllo").unwrap();
    assert_eq!(
        (body.as_slice(), enc.as_str()),
        ("héllo".as_bytes(), "utf-8")
    );
    let (body, enc) = RawSerializer
        .encode_with_encoding(&Wrapper("x".into()))
        .unwrap();
    assert_eq!((body.as_slice(), enc.as_str()), (&b"x"[..], "utf-8"));
}

#[test]
fn raw_rejects_other_values_with_clear_messages() {
    let msg = encode_err_message(&RawSerializer, &42);
    assert_eq!(
        msg,
        "the raw serializer only accepts bytes or a string, got an integer"
    );
    let msg = encode_err_message(&RawSerializer, &serde_json::json!({"a": 1}));
    assert!(msg.contains("got a map"), "{msg}");
    let msg = encode_err_message(&RawSerializer, &None::<Bytes>);
    assert!(msg.contains("got None"), "{msg}");
    let msg = encode_err_message(&RawSerializer, &vec![1u32, 2]);
    assert!(msg.contains("sequences must contain only u8"), "{msg}");
    let msg = encode_err_message(&RawSerializer, &vec!["a", "b"]);
    assert!(msg.contains("sequences must contain only u8"), "{msg}");
    let msg = encode_err_message(&RawSerializer, &1.5);
    assert!(msg.contains("got a float"), "{msg}");
    let err = RawSerializer.encode(&true).unwrap_err();
    assert!(
        super::chain(&err).starts_with("serializer \"raw\" failed to encode the value"),
        "{err}"
    );
}

#[test]
fn text_encodes_only_strings() {
    assert_eq!(TextSerializer.encode(&"héllo").unwrap(), "héllo".as_bytes());
    assert_eq!(TextSerializer.encode(&String::from("x")).unwrap(), b"x");
    assert_eq!(TextSerializer.encode(&'é').unwrap(), "é".as_bytes());
    assert_eq!(TextSerializer.encode(&Wrapper("w".into())).unwrap(), b"w");
    let (_, enc) = TextSerializer.encode_with_encoding(&"x").unwrap();
    assert_eq!(enc, "utf-8");

    let msg = encode_err_message(&TextSerializer, &Bytes::from_static(b"abc"));
    assert_eq!(msg, "the text serializer only accepts a string, got bytes");
    let msg = encode_err_message(&TextSerializer, &vec![1u8, 2]);
    assert_eq!(
        msg,
        "the text serializer only accepts a string, got a sequence"
    );
    let msg = encode_err_message(&TextSerializer, &7u64);
    assert_eq!(
        msg,
        "the text serializer only accepts a string, got an integer"
    );
}

#[test]
fn raw_decodes_to_byte_types() {
    let data = b"\x00\xff\x10";
    let v: Vec<u8> = decode_with(&RawSerializer, data, None).unwrap();
    assert_eq!(v, data);
    let b: Bytes = decode_with(&RawSerializer, data, None).unwrap();
    assert_eq!(&b[..], data);
    let a: [u8; 3] = decode_with(&RawSerializer, data, None).unwrap();
    assert_eq!(&a, data);
    let o: Option<Vec<u8>> = decode_with(&RawSerializer, data, None).unwrap();
    assert_eq!(o.as_deref(), Some(&data[..]));
    // Wrong array length is an error, not a panic.
    let err = decode_with::<[u8; 2]>(&RawSerializer, data, None).unwrap_err();
    assert!(
        matches!(err, Error::Decode { ref content_type, .. } if content_type == "application/data")
    );
}

#[test]
fn raw_decodes_strings_with_utf8_check() {
    let s: String = decode_with(&RawSerializer, "héllo".as_bytes(), None).unwrap();
    assert_eq!(s, "héllo");
    let w: Wrapper = decode_with(&RawSerializer, b"abc", None).unwrap();
    assert_eq!(w, Wrapper("abc".into()));
    let err = decode_with::<String>(&RawSerializer, b"\xff\xfe", None).unwrap_err();
    assert!(super::chain(&err).contains("not valid UTF-8"), "{err}");
}

#[test]
fn any_offers_bytes_for_binary_and_text_otherwise() {
    // raw without an encoding: binary.
    let seen: Seen = decode_with(&RawSerializer, b"abc", None).unwrap();
    assert_eq!(seen, Seen::Bytes(b"abc".to_vec()));
    // text without an encoding: text.
    let seen: Seen = decode_with(&TextSerializer, b"abc", None).unwrap();
    assert_eq!(seen, Seen::Str("abc".into()));
    // With an encoding, the encoding decides (kombu's rule; None means utf-8).
    let cases: [(Option<&str>, Seen); 6] = [
        (None, Seen::Str("abc".into())),
        (Some("utf-8"), Seen::Str("abc".into())),
        (Some("UTF-8"), Seen::Str("abc".into())),
        (Some("binary"), Seen::Bytes(b"abc".to_vec())),
        (Some("ascii-8bit"), Seen::Bytes(b"abc".to_vec())),
        (Some("Binary"), Seen::Bytes(b"abc".to_vec())),
    ];
    for (enc, expected) in cases {
        let seen: Seen = decode_with(&RawSerializer, b"abc", Some(enc)).unwrap();
        assert_eq!(seen, expected, "raw, encoding {enc:?}");
        let seen: Seen = decode_with(&TextSerializer, b"abc", Some(enc)).unwrap();
        assert_eq!(seen, expected, "text, encoding {enc:?}");
    }
    // Not valid UTF-8 under a text encoding: `any` falls back to bytes.
    let seen: Seen = decode_with(&TextSerializer, b"\xff", Some(Some("utf-8"))).unwrap();
    assert_eq!(seen, Seen::Bytes(vec![0xff]));
}

#[test]
fn latin1_and_unsupported_encodings() {
    let s: String = decode_with(&RawSerializer, b"caf\xe9", Some(Some("latin-1"))).unwrap();
    assert_eq!(s, "café");
    let seen: Seen = decode_with(&RawSerializer, b"\xe9", Some(Some("iso-8859-1"))).unwrap();
    assert_eq!(seen, Seen::Str("é".into()));
    let err = decode_with::<String>(&RawSerializer, b"abc", Some(Some("utf-16"))).unwrap_err();
    assert!(
        super::chain(&err).contains("unsupported content encoding \"utf-16\""),
        "{err}"
    );
    // Bytes are still available under an unknown encoding.
    let v: Vec<u8> = decode_with(&RawSerializer, b"abc", Some(Some("utf-16"))).unwrap();
    assert_eq!(v, b"abc");
}

#[test]
fn unsupported_targets_fail_cleanly() {
    let err = decode_with::<i32>(&RawSerializer, b"12", None).unwrap_err();
    assert!(matches!(err, Error::Decode { .. }));
    assert!(super::chain(&err).contains("expected i32"), "{err}");
    let err =
        decode_with::<std::collections::BTreeMap<String, String>>(&TextSerializer, b"x", None)
            .unwrap_err();
    assert!(matches!(err, Error::Decode { .. }));
}

#[test]
fn unit_enum_from_text() {
    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Cmd {
        Start,
        Stop,
    }
    let c: Cmd = decode_with(&TextSerializer, b"stop", None).unwrap();
    assert_eq!(c, Cmd::Stop);
    assert!(decode_with::<Cmd>(&TextSerializer, b"pause", None).is_err());
    let c: Cmd = decode_with(&TextSerializer, b"start", None).unwrap();
    assert_eq!(c, Cmd::Start);
}

#[test]
fn body_deserializer_borrows() {
    // Borrowed targets get zero-copy access when used directly.
    let data = b"borrowed".to_vec();
    let s: &str = <&str>::deserialize(BodyDeserializer::new(&data, TextMode::Utf8)).unwrap();
    assert_eq!(s, "borrowed");
    let b: &[u8] = <&[u8]>::deserialize(BodyDeserializer::new(&data, TextMode::Binary)).unwrap();
    assert_eq!(b, b"borrowed");
}
