//! The `hmac` serializer: exact bytes (checked against Python's `hmac` module), refusals.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::{Error, HmacSerializer, Registry};

/// Made by the Python recipe in `HmacSerializer`'s documentation (key id "2026-11", secret
/// 32 × 0x2a, body `["add", 2, 2]` as json).
const PYTHON_SIGNED: &str = "TWpBeU5pMHhNUT09AAFNOUt3a1l5MGEwbWVWS25QTXJSNXpUZUw5cExxWFYrdVp5cnhHbEhTbmN3PQABYXBwbGljYXRpb24vanNvbgABdXRmLTgAAVsiYWRkIiwgMiwgMl0=";

fn registry() -> Registry {
    let mut registry = Registry::default();
    registry.register_serializer(HmacSerializer::new("2026-11", [42u8; 32]).expect("key"));
    registry
}

fn decode<T: serde::de::DeserializeOwned>(registry: &Registry, body: &[u8]) -> crate::Result<T> {
    let accept = registry.accept(["hmac"])?;
    registry.decode(
        body,
        Some("application/x-kombu-hmac-sha256"),
        Some("utf-8"),
        Some(&accept),
    )
}

#[test]
fn output_is_the_documented_format_byte_for_byte() {
    let registry = registry();
    let signed = registry.encode(&("add", 2, 2), "hmac").expect("encode");
    assert_eq!(signed.content_type, "application/x-kombu-hmac-sha256");
    assert_eq!(signed.content_encoding, "utf-8");
    assert_eq!(
        std::str::from_utf8(&signed.body).expect("utf-8"),
        PYTHON_SIGNED
    );
    let back: (String, i32, i32) = decode(&registry, PYTHON_SIGNED.as_bytes()).expect("decode");
    assert_eq!(back, ("add".to_owned(), 2, 2));
}

fn tamper(signed: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut raw = STANDARD.decode(signed).expect("base64");
    edit(&mut raw);
    STANDARD.encode(raw).into_bytes()
}

#[test]
fn tampering_with_any_field_is_refused() {
    let registry = registry();
    let signed = registry
        .encode(&("add", 2, 2), "hmac")
        .expect("encode")
        .body;
    let n = signed.len();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "body",
            tamper(&signed, |raw| *raw.last_mut().expect("body") = b'3'),
        ),
        ("content type", {
            let text = String::from_utf8(STANDARD.decode(&signed).expect("b64")).expect("utf8");
            STANDARD
                .encode(text.replace("application/json", "application/x-yaml"))
                .into_bytes()
        }),
        (
            "appended",
            tamper(&signed, |raw| raw.extend_from_slice(b" ")),
        ),
        (
            "truncated",
            STANDARD
                .encode(&STANDARD.decode(&signed).expect("b64")[..30])
                .into_bytes(),
        ),
        ("not base64", signed[..n - 3].to_vec()),
    ];
    for (what, body) in cases {
        let err = decode::<serde_json::Value>(&registry, &body).expect_err(what);
        assert!(matches!(err, Error::Signature { .. }), "{what}: {err}");
    }
}

#[test]
fn wrong_secret_and_unknown_key_id_are_refused() {
    let signed = registry().encode(&[1, 2], "hmac").expect("encode").body;

    let mut other = Registry::default();
    other.register_serializer(HmacSerializer::new("2026-11", [7u8; 32]).expect("key"));
    let err = decode::<Vec<i32>>(&other, &signed).expect_err("wrong secret");
    assert!(err.to_string().contains("bad signature"), "{err}");

    let mut other = Registry::default();
    other.register_serializer(HmacSerializer::new("2027-01", [42u8; 32]).expect("key"));
    let err = decode::<Vec<i32>>(&other, &signed).expect_err("unknown key id");
    assert!(
        err.to_string().contains("unknown key id \"2026-11\""),
        "{err}"
    );
}

#[test]
fn rotation_verifies_old_keys_and_signs_with_the_new_one() {
    let old_signed = registry().encode(&[1, 2], "hmac").expect("encode").body;
    let mut rotated = Registry::default();
    rotated.register_serializer(
        HmacSerializer::new("2027-01", [9u8; 48])
            .expect("new key")
            .with_verification_key("2026-11", [42u8; 32])
            .expect("old key"),
    );
    let back: Vec<i32> = decode(&rotated, &old_signed).expect("old key verifies");
    assert_eq!(back, [1, 2]);
    let new_signed = rotated.encode(&[3], "hmac").expect("encode").body;
    let raw = STANDARD.decode(&new_signed).expect("b64");
    assert!(raw.starts_with(STANDARD.encode("2027-01").as_bytes()));
    // The old-only registry does not know the new key.
    assert!(decode::<Vec<i32>>(&registry(), &new_signed).is_err());
}

#[test]
fn short_secrets_and_empty_key_ids_are_refused() {
    let err = HmacSerializer::new("k", [1u8; 31]).expect_err("short");
    assert!(matches!(err, Error::InvalidKey { .. }), "{err}");
    assert!(err.to_string().contains("at least 32"), "{err}");
    assert!(HmacSerializer::new("", [1u8; 32]).is_err());
    assert!(
        HmacSerializer::new("k", [1u8; 32])
            .expect("key")
            .with_verification_key("old", b"short")
            .is_err()
    );
}

#[test]
fn a_consumer_requiring_signatures_refuses_unsigned_messages() {
    let registry = registry();
    let accept = registry.accept(["hmac"]).expect("accept");
    assert!(accept.is_strict());
    for content_type in [
        "application/json",
        "application/data",
        "application/text",
        "text/plain",
    ] {
        let err = registry
            .decode::<String>(b"\"hi\"", Some(content_type), Some("utf-8"), Some(&accept))
            .expect_err(content_type);
        assert!(matches!(err, Error::ContentDisallowed { .. }), "{err}");
    }
    // Naming a non-signing serializer too keeps kombu's always-trusted rule.
    let mixed = registry.accept(["hmac", "json"]).expect("accept");
    assert!(!mixed.is_strict());
    assert!(mixed.allows("application/data"));
}

#[test]
fn inner_serializer_is_chosen_by_name_and_decoded_by_content_type() {
    let mut registry = Registry::default();
    registry.register_serializer(
        HmacSerializer::new("k", [5u8; 32])
            .expect("key")
            .with_serializer("msgpack")
            .expect("msgpack"),
    );
    let mut value = BTreeMap::new();
    value.insert("n".to_owned(), 1u8);
    let signed = registry.encode(&value, "hmac").expect("encode");
    let raw = STANDARD.decode(&signed.body).expect("b64");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("\u{0}\u{1}application/x-msgpack\u{0}\u{1}binary\u{0}\u{1}"));
    // Decoding ignores the consumer's accept list for the inner type: the MAC vouches for it.
    let back: BTreeMap<String, u8> = decode(&registry, &signed.body).expect("decode");
    assert_eq!(back, value);
    assert!(
        HmacSerializer::new("k", [5u8; 32])
            .expect("key")
            .with_serializer("nope")
            .is_err()
    );
}

#[test]
fn debug_does_not_print_the_secret() {
    let s = HmacSerializer::new("k1", [0xabu8; 32]).expect("key");
    let debug = format!("{s:?}");
    assert!(debug.contains("k1"));
    assert!(
        !debug.contains("171") && !debug.to_lowercase().contains("abab"),
        "{debug}"
    );
}
