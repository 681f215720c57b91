//! Codec interop with real Python kombu and Celery, both directions.
//!
//! `interop/kombu_codec.py make` writes one body for every serializer × compression pair
//! (json, msgpack, yaml, pickle, text, raw and kombu's type-tagged JSON, each uncompressed and
//! with zlib, bzip2, lzma, brotli and zstd) plus a message signed by Celery's `auth`
//! serializer; these tests decode every one. The other way, kombu-rs encodes the same values
//! and `kombu_codec.py check` decodes them with kombu (and Celery for `auth`), and re-encodes
//! the expected values with kombu to compare the bytes: every deterministic pair must be
//! byte-identical.
//!
//! The Python interpreter is `$KOMBU_PYTHON` (scripts/test makes a venv with kombu, Celery and
//! the codecs' packages, see scripts/python-env), else `~/.cache/kombu-rs/venv/bin/python` when
//! it exists. Without one the tests fail when `KOMBU_TEST_REQUIRE` is set (as in CI) and are
//! skipped with a message otherwise.
#![cfg(all(
    feature = "auth",
    feature = "hmac",
    feature = "pickle",
    feature = "chrono",
    feature = "uuid",
    feature = "decimal"
))]

use std::path::PathBuf;
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, TimeZone, Utc};
use kombu_serializers::auth::{AuthSerializer, CertStore, Certificate, PrivateKey};
use kombu_serializers::{DEFAULT_MAX_DECOMPRESSED_SIZE, HmacSerializer, Registry};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const COMPRESSIONS: [Option<&str>; 6] = [
    None,
    Some("zlib"),
    Some("bzip2"),
    Some("lzma"),
    Some("brotli"),
    Some("zstd"),
];
const TEXT: &str = "h\u{e9}llo \u{2713} plain text";
const BYTES: &[u8] = b"\x00\xff\x01binary\x80";

/// The Python side's `TAGGED` value.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Tagged {
    #[serde(with = "kombu_serializers::tagged::time")]
    at: NaiveTime,
    #[serde(with = "kombu_serializers::tagged::bytes")]
    blob: Vec<u8>,
    #[serde(with = "kombu_serializers::tagged::date")]
    day: NaiveDate,
    #[serde(with = "kombu_serializers::tagged::uuid")]
    id: uuid::Uuid,
    #[serde(with = "kombu_serializers::tagged::decimal")]
    price: Decimal,
    #[serde(with = "kombu_serializers::tagged::bytes")]
    text_bytes: Vec<u8>,
    #[serde(with = "kombu_serializers::tagged::datetime")]
    when: DateTime<Utc>,
    #[serde(with = "kombu_serializers::tagged::datetime")]
    when_offset: DateTime<FixedOffset>,
}

fn tagged() -> Tagged {
    let ist = FixedOffset::east_opt(5 * 3600 + 30 * 60).expect("offset");
    Tagged {
        at: NaiveTime::from_hms_micro_opt(1, 2, 3, 450).expect("time"),
        blob: vec![0xff, 0x00, 0x01],
        day: NaiveDate::from_ymd_opt(2024, 1, 2).expect("date"),
        id: uuid::Uuid::parse_str("12345678-1234-5678-1234-567812345678").expect("uuid"),
        price: Decimal::new(150, 2),
        text_bytes: b"abc".to_vec(),
        when: Utc
            .with_ymd_and_hms(2024, 1, 2, 3, 4, 5)
            .single()
            .expect("utc")
            + chrono::Duration::microseconds(678_900),
        when_offset: ist
            .with_ymd_and_hms(2024, 1, 2, 3, 4, 5)
            .single()
            .expect("ist"),
    }
}

fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("KOMBU_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            let venv = PathBuf::from(home).join(".cache/kombu-rs/venv/bin/python");
            venv.exists().then_some(venv)
        });
    if candidate.is_none() {
        let hint = "no Python with kombu: run scripts/python-env and set KOMBU_PYTHON";
        if std::env::var_os("KOMBU_TEST_REQUIRE").is_some() {
            panic!("{hint} (KOMBU_TEST_REQUIRE is set, so this is a failure)");
        }
        eprintln!("skipped: {hint}");
    }
    candidate
}

fn script() -> PathBuf {
    // The directory cargo runs the test in, read at run time: a test binary compiled in another
    // checkout sharing the target directory would carry that checkout's path.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/interop/kombu_codec.py")
}

fn run_python(python: &PathBuf, args: &[&str]) -> Value {
    let out = Command::new(python)
        .arg(script())
        .args(args)
        .output()
        .expect("run the interop script");
    assert!(
        out.status.success(),
        "kombu_codec.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

fn registry() -> Registry {
    Registry::default()
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

#[test]
fn python_kombu_and_celery_bodies_decode_in_rust() {
    let Some(python) = python() else { return };
    let made = run_python(&python, &["make"]);
    let common = made["common"].clone();
    let registry = registry();
    let accept = registry
        .accept(["json", "msgpack", "yaml", "pickle", "text"])
        .expect("accept");
    let vectors = made["vectors"].as_array().expect("vectors");
    // 7 kinds of body × 6 compression settings.
    assert_eq!(vectors.len(), 42);
    for v in vectors {
        let id = str_field(v, "id").expect("id");
        let body = STANDARD
            .decode(str_field(v, "body").expect("body"))
            .expect("base64");
        let plain = match str_field(v, "compression") {
            Some(header) => registry
                .decompress(&body, header, DEFAULT_MAX_DECOMPRESSED_SIZE)
                .unwrap_or_else(|e| panic!("{id}: decompress: {e}")),
            None => body.into(),
        };
        let content_type = str_field(v, "content_type");
        let content_encoding = str_field(v, "content_encoding");
        match str_field(v, "expect").expect("expect") {
            "common" => {
                let value: Value = registry
                    .decode(&plain, content_type, content_encoding, Some(&accept))
                    .unwrap_or_else(|e| panic!("{id}: decode: {e}"));
                assert_eq!(value, common, "{id}");
            }
            "text" => {
                let value: String = registry
                    .decode(&plain, content_type, content_encoding, Some(&accept))
                    .unwrap_or_else(|e| panic!("{id}: decode: {e}"));
                assert_eq!(value, TEXT, "{id}");
            }
            "bytes" => {
                let value: bytes::Bytes = registry
                    .decode(&plain, content_type, content_encoding, Some(&accept))
                    .unwrap_or_else(|e| panic!("{id}: decode: {e}"));
                assert_eq!(&value[..], BYTES, "{id}");
            }
            "tagged" => {
                let value: Tagged = registry
                    .decode(&plain, content_type, content_encoding, Some(&accept))
                    .unwrap_or_else(|e| panic!("{id}: decode: {e}"));
                assert_eq!(value, tagged(), "{id}");
            }
            other => panic!("{id}: unknown expectation {other}"),
        }
    }

    // Celery's `auth` serializer: the signer id we compute equals Celery's, the signature
    // verifies, and a flipped byte is refused.
    let auth = &made["auth"];
    let cert = Certificate::from_pem(str_field(auth, "cert_pem").expect("pem").as_bytes())
        .expect("Celery's certificate");
    assert_eq!(cert.id(), str_field(auth, "signer_id").expect("signer id"));
    let mut store = CertStore::new();
    store.add(cert).expect("add");
    let mut verifying = Registry::default();
    verifying.register_serializer(AuthSerializer::new(store));
    let signed = str_field(auth, "body").expect("body").as_bytes();
    let accept = verifying.accept(["auth"]).expect("accept");
    let value: Value = verifying
        .decode(
            signed,
            Some("application/data"),
            Some("utf-8"),
            Some(&accept),
        )
        .expect("Celery's signed message verifies");
    assert_eq!(value, common);
    let mut raw = STANDARD.decode(signed).expect("base64");
    let n = raw.len();
    raw[n - 2] ^= 1;
    let tampered = STANDARD.encode(raw);
    let err = verifying
        .decode::<Value>(
            tampered.as_bytes(),
            Some("application/data"),
            Some("utf-8"),
            Some(&accept),
        )
        .expect_err("tampered");
    assert!(err.to_string().contains("bad signature"), "{err}");
}

#[test]
fn rust_bodies_decode_in_python_kombu_and_celery_byte_for_byte() {
    let Some(python) = python() else { return };
    let common = run_python(&python, &["make"])["common"].clone();
    let registry = registry();
    let mut vectors = Vec::new();
    for compression in COMPRESSIONS {
        let c = compression.unwrap_or("none");
        let mut push = |id: String,
                        expect: &str,
                        serializer: Option<&str>,
                        encoded: kombu_serializers::Encoded| {
            let (body, header) = match compression {
                Some(alias) => {
                    let (body, header) = registry.compress(&encoded.body, alias).expect("compress");
                    (body, Some(header))
                }
                None => (encoded.body, None),
            };
            vectors.push(json!({
                "id": id,
                "expect": expect,
                "content_type": encoded.content_type,
                "content_encoding": encoded.content_encoding,
                "compression": header,
                "body": STANDARD.encode(&body),
                "python_serializer": serializer,
                "python_compression": compression,
            }));
        };
        for serializer in ["json", "msgpack", "yaml"] {
            let encoded = registry.encode(&common, serializer).expect("encode");
            push(
                format!("{serializer}/{c}"),
                "common",
                Some(serializer),
                encoded,
            );
        }
        push(
            format!("text/{c}"),
            "text",
            None,
            registry.encode(TEXT, "text").expect("text"),
        );
        push(
            format!("raw/{c}"),
            "bytes",
            None,
            registry
                .encode(&bytes::Bytes::from_static(BYTES), "raw")
                .expect("raw"),
        );
        push(
            format!("tagged/{c}"),
            "tagged",
            Some("json"),
            registry.encode(&tagged(), "json").expect("tagged"),
        );
    }

    // Signed by kombu-rs: Celery verifies `auth`, Python's hmac module the `hmac` format.
    let (key_pem, cert_pem) =
        kombu_serializers::auth::self_signed_for_tests("rust-producer", 4242).expect("identity");
    let mut signing = Registry::default();
    signing.register_serializer(
        AuthSerializer::new(CertStore::new())
            .with_signer(
                PrivateKey::from_pem(&key_pem, None).expect("key"),
                Certificate::from_pem(&cert_pem).expect("cert"),
            )
            .expect("signer"),
    );
    let secret = [0x5au8; 32];
    signing.register_serializer(HmacSerializer::new("rust-2026", secret).expect("hmac"));
    let auth_body = signing.encode(&common, "auth").expect("sign").body;
    let hmac_body = signing.encode(&common, "hmac").expect("sign").body;

    let spec = json!({
        "common": common,
        "vectors": vectors,
        "auth": {
            "cert_pem": String::from_utf8(cert_pem).expect("pem"),
            "body": String::from_utf8(auth_body.to_vec()).expect("ascii"),
        },
        "hmac": {
            "key_id": "rust-2026",
            "secret_hex": secret.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "body": String::from_utf8(hmac_body.to_vec()).expect("ascii"),
        },
    });
    let path = std::env::temp_dir().join(format!("kombu-rs-interop-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_vec(&spec).expect("json")).expect("write spec");
    let report = run_python(&python, &["check", path.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_file(&path);

    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), 6 * 6 + 2);
    let mut failures = Vec::new();
    for r in results {
        let id = str_field(r, "id").expect("id");
        if r["decoded"] != Value::Bool(true) {
            failures.push(format!("{id}: Python could not decode it: {}", r["error"]));
        }
        if r["bytes_equal"] == Value::Bool(false) {
            failures.push(format!(
                "{id}: bytes differ from Python kombu's (Python wrote {})",
                r["python_body"]
            ));
        }
    }
    let compared = results
        .iter()
        .filter(|r| r["bytes_equal"] == Value::Bool(true))
        .count();
    // Every body except the two signed ones (RSA-PSS salts are random) is compared.
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(compared, 6 * 6);
}
