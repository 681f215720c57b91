//! Celery's `auth` serializer: round trips, signer ids, and every refusal (tampering, unknown
//! or expired certificates, unsigned bodies). Celery itself is exercised by the interop tests.

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::auth::{
    AuthSerializer, CertStore, Certificate, Digest, PrivateKey, self_signed_for_tests,
    self_signed_with_validity,
};
use crate::{Error, Registry};

struct Identity {
    key: PrivateKey,
    cert: Certificate,
    cert_pem: Vec<u8>,
}

fn identity(cn: &str, serial: u32, days: i32) -> Identity {
    let (key_pem, cert_pem) = self_signed_with_validity(cn, serial, days).expect("generate");
    Identity {
        key: PrivateKey::from_pem(&key_pem, None).expect("key"),
        cert: Certificate::from_pem(&cert_pem).expect("cert"),
        cert_pem,
    }
}

// RSA key generation takes a while: make each identity once.
static WORKER: LazyLock<Identity> = LazyLock::new(|| identity("worker", 1001, 30));
static OTHER: LazyLock<Identity> = LazyLock::new(|| identity("other", 7, 30));
static EXPIRED: LazyLock<Identity> = LazyLock::new(|| identity("old", 3, -2));

fn registry_for(signer: &Identity, trusted: &[&Identity]) -> Registry {
    let mut store = CertStore::new();
    for t in trusted {
        store.add(t.cert.clone()).expect("add");
    }
    let mut registry = Registry::default();
    registry.register_serializer(
        AuthSerializer::new(store)
            .with_signer(signer.key.clone(), signer.cert.clone())
            .expect("signer"),
    );
    registry
}

fn decode(registry: &Registry, body: &[u8]) -> crate::Result<serde_json::Value> {
    let accept = registry.accept(["auth"])?;
    registry.decode(body, Some("application/data"), Some("utf-8"), Some(&accept))
}

#[test]
fn signer_id_is_issuer_values_then_serial() {
    assert_eq!(WORKER.cert.id(), "kombu-rs worker 1001");
    assert!(!WORKER.cert.has_expired());
    assert!(EXPIRED.cert.has_expired());
}

#[test]
fn round_trip_and_envelope_layout() {
    let registry = registry_for(&WORKER, &[&WORKER]);
    let value = serde_json::json!({"task": "add", "args": [2, 2], "s": "é\u{0}\u{1}"});
    let signed = registry.encode(&value, "auth").expect("encode");
    assert_eq!(signed.content_type, "application/data");
    assert_eq!(signed.content_encoding, "utf-8");
    let raw = STANDARD.decode(&signed.body).expect("base64");
    let text = String::from_utf8_lossy(&raw);
    let parts: Vec<&str> = text.splitn(5, "\u{0}\u{1}").collect();
    assert_eq!(
        STANDARD.decode(parts[0]).expect("signer"),
        b"kombu-rs worker 1001"
    );
    assert_eq!(STANDARD.decode(parts[1]).expect("signature").len(), 256);
    assert_eq!(parts[2], "application/json");
    assert_eq!(parts[3], "utf-8");
    assert_eq!(
        parts[4].as_bytes(),
        crate::to_python_json(&value).expect("json").as_slice()
    );
    assert_eq!(decode(&registry, &signed.body).expect("decode"), value);
}

#[test]
fn tampered_bodies_and_signatures_are_refused() {
    let registry = registry_for(&WORKER, &[&WORKER]);
    let signed = registry.encode(&[1, 2, 3], "auth").expect("encode").body;
    let raw = STANDARD.decode(&signed).expect("b64");

    let mut body = raw.clone();
    let last = body.len() - 2;
    body[last] = b'4';
    let mut signature = raw.clone();
    let sig_at = raw.windows(2).position(|w| w == b"\x00\x01").expect("sep") + 5;
    signature[sig_at] = if signature[sig_at] == b'A' {
        b'B'
    } else {
        b'A'
    };

    for (what, bytes) in [("body", body), ("signature", signature)] {
        let tampered = STANDARD.encode(bytes);
        let err = decode(&registry, tampered.as_bytes()).expect_err(what);
        assert!(matches!(err, Error::Signature { .. }), "{what}: {err}");
    }
}

#[test]
fn unknown_and_expired_certificates_are_refused() {
    // Signed by OTHER, whose certificate the verifier does not have.
    let by_other = registry_for(&OTHER, &[&OTHER])
        .encode(&"x", "auth")
        .expect("encode")
        .body;
    let err = decode(&registry_for(&WORKER, &[&WORKER]), &by_other).expect_err("unknown");
    assert!(
        err.to_string()
            .contains("unknown certificate \"kombu-rs other 7\""),
        "{err}"
    );

    // Signed with a certificate that has expired.
    let by_expired = registry_for(&EXPIRED, &[&EXPIRED])
        .encode(&"x", "auth")
        .expect("encode")
        .body;
    let err =
        decode(&registry_for(&WORKER, &[&WORKER, &EXPIRED]), &by_expired).expect_err("expired");
    assert!(err.to_string().contains("expired"), "{err}");
}

#[test]
fn a_consumer_requiring_signatures_refuses_unsigned_messages() {
    let registry = registry_for(&WORKER, &[&WORKER]);
    let accept = registry.accept(["auth"]).expect("accept");
    assert!(accept.is_strict());
    // Raw bytes: application/data now goes through the verifier, as in Celery.
    let err = decode(&registry, b"plain bytes").expect_err("raw");
    assert!(matches!(err, Error::Signature { .. }), "{err}");
    for content_type in ["application/json", "application/text", "text/plain"] {
        let err = registry
            .decode::<String>(b"\"hi\"", Some(content_type), None, Some(&accept))
            .expect_err(content_type);
        assert!(matches!(err, Error::ContentDisallowed { .. }), "{err}");
    }
}

#[test]
fn digest_must_match() {
    let mut sha512 = Registry::default();
    let mut store = CertStore::new();
    store.add(WORKER.cert.clone()).expect("add");
    sha512.register_serializer(
        AuthSerializer::new(store)
            .with_signer(WORKER.key.clone(), WORKER.cert.clone())
            .expect("signer")
            .with_digest(Digest::from_name("SHA512").expect("digest")),
    );
    let signed = sha512.encode(&1, "auth").expect("encode").body;
    assert_eq!(decode(&sha512, &signed).expect("same digest"), 1);
    let err = decode(&registry_for(&WORKER, &[&WORKER]), &signed).expect_err("sha256 verifier");
    assert!(matches!(err, Error::Signature { .. }), "{err}");
    assert!(Digest::from_name("md5").is_err());
}

#[test]
fn key_material_is_checked() {
    // A certificate that is not the key's.
    let err = AuthSerializer::new(CertStore::new())
        .with_signer(WORKER.key.clone(), OTHER.cert.clone())
        .expect_err("mismatch");
    assert!(matches!(err, Error::InvalidKey { .. }), "{err}");
    // Not PEM.
    assert!(Certificate::from_pem(b"nope").is_err());
    assert!(PrivateKey::from_pem(b"nope", None).is_err());
    // An EC key is refused (Celery accepts RSA only).
    let ec = openssl::ec::EcKey::generate(
        &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).expect("g"),
    )
    .expect("ec");
    let pem = openssl::pkey::PKey::from_ec_key(ec)
        .expect("pkey")
        .private_key_to_pem_pkcs8()
        .expect("pem");
    let err = PrivateKey::from_pem(&pem, None).expect_err("ec");
    assert!(err.to_string().contains("not RSA"), "{err}");
    // Encoding without a signer.
    let mut verify_only = Registry::default();
    verify_only.register_serializer(AuthSerializer::new(CertStore::new()));
    assert!(verify_only.encode(&1, "auth").is_err());
    // Duplicate certificates.
    let mut store = CertStore::new();
    store.add(WORKER.cert.clone()).expect("add");
    assert!(store.add(WORKER.cert.clone()).is_err());
}

#[test]
fn cert_store_loads_a_directory_and_a_file() {
    let dir = std::env::temp_dir().join(format!("kombu-certs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("worker.pem"), &WORKER.cert_pem).expect("write");
    std::fs::write(dir.join("other.pem"), &OTHER.cert_pem).expect("write");
    let store = CertStore::from_path(&dir).expect("load dir");
    assert_eq!(store.len(), 2);
    assert!(store.get("kombu-rs other 7").is_some());
    let one = CertStore::from_path(dir.join("worker.pem")).expect("load file");
    assert_eq!(one.len(), 1);
    std::fs::write(dir.join("junk.pem"), b"junk").expect("write");
    let err = CertStore::from_path(&dir).expect_err("junk");
    assert!(err.to_string().contains("junk.pem"), "{err}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn self_signed_helper_makes_a_usable_pair() {
    let (key, cert) = self_signed_for_tests("x", 5).expect("pair");
    let key = PrivateKey::from_pem(&key, None).expect("key");
    let cert = Certificate::from_pem(&cert).expect("cert");
    assert!(
        AuthSerializer::new(CertStore::new())
            .with_signer(key, cert)
            .is_ok()
    );
}
