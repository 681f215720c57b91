use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Seen;
use crate::{
    ALWAYS_TRUSTED, Accept, Compressor, Encoded, Error, JsonSerializer, Registry, Serializer,
};

/// A serializer that is not enabled by default, like kombu's pickle/yaml/msgpack.
#[derive(Debug)]
struct Disabled {
    name: &'static str,
    content_type: &'static str,
}

impl Serializer for Disabled {
    fn name(&self) -> &str {
        self.name
    }
    fn content_type(&self) -> &str {
        self.content_type
    }
    fn content_encoding(&self) -> &str {
        "binary"
    }
    fn enabled_by_default(&self) -> bool {
        false
    }
    fn encode(&self, _value: &dyn erased_serde::Serialize) -> crate::Result<Vec<u8>> {
        Ok(b"disabled".to_vec())
    }
    fn decode(
        &self,
        data: &[u8],
        visit: &mut dyn FnMut(
            &mut dyn erased_serde::Deserializer<'_>,
        ) -> Result<(), erased_serde::Error>,
    ) -> crate::Result<()> {
        JsonSerializer.decode(data, visit)
    }
}

fn pickle() -> Disabled {
    Disabled {
        name: "pickle",
        content_type: "application/x-python-serialize",
    }
}

/// A serializer that ignores the value and never calls `visit`.
#[derive(Debug)]
struct Lazy;

impl Serializer for Lazy {
    fn name(&self) -> &str {
        "lazy"
    }
    fn content_type(&self) -> &str {
        "application/x-lazy"
    }
    fn content_encoding(&self) -> &str {
        "utf-8"
    }
    fn encode(&self, _value: &dyn erased_serde::Serialize) -> crate::Result<Vec<u8>> {
        Ok(Vec::new())
    }
    fn decode(
        &self,
        _data: &[u8],
        _visit: &mut dyn FnMut(
            &mut dyn erased_serde::Deserializer<'_>,
        ) -> Result<(), erased_serde::Error>,
    ) -> crate::Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
struct Identity;

impl Compressor for Identity {
    fn name(&self) -> &str {
        "identity"
    }
    fn aliases(&self) -> &[&'static str] {
        &["identity", "gzip"]
    }
    fn content_type(&self) -> &str {
        "application/x-identity"
    }
    fn compress(&self, data: &[u8]) -> crate::Result<Vec<u8>> {
        Ok(data.to_vec())
    }
    fn decompress(&self, data: &[u8], limit: usize) -> crate::Result<Vec<u8>> {
        if data.len() > limit {
            return Err(Error::TooLarge {
                compression: "identity".into(),
                limit,
            });
        }
        Ok(data.to_vec())
    }
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Task {
    id: String,
    args: Vec<i64>,
    eta: Option<f64>,
}

#[test]
fn default_registry_contents() {
    let r = Registry::default();
    let names: Vec<&str> = r.serializers().map(|s| s.name()).collect();
    #[cfg(not(feature = "pickle"))]
    assert_eq!(names, ["json", "raw", "text", "msgpack", "yaml"]);
    #[cfg(feature = "pickle")]
    assert_eq!(names, ["json", "raw", "text", "msgpack", "yaml", "pickle"]);
    let compressors: Vec<&str> = r.compressors().map(|c| c.name()).collect();
    assert_eq!(compressors, ["zlib", "bzip2", "lzma", "brotli", "zstd"]);
    for (key, name) in [
        ("json", "json"),
        ("application/json", "json"),
        ("raw", "raw"),
        ("application/data", "raw"),
        ("text", "text"),
        ("text/plain", "text"),
        ("msgpack", "msgpack"),
        ("application/x-msgpack", "msgpack"),
        ("yaml", "yaml"),
        ("application/x-yaml", "yaml"),
    ] {
        assert_eq!(r.serializer(key).unwrap().name(), name, "{key}");
    }
    let empty = Registry::empty();
    assert_eq!(empty.serializers().count(), 0);
    assert!(matches!(
        empty.serializer("json"),
        Err(Error::UnknownSerializer { .. })
    ));
    assert!(matches!(
        empty.compressor("zlib"),
        Err(Error::UnknownCompression { .. })
    ));
}

#[test]
fn unknown_serializer_error() {
    let err = Registry::default().serializer("bson").unwrap_err();
    assert!(matches!(err, Error::UnknownSerializer { ref name } if name == "bson"));
    assert_eq!(
        err.to_string(),
        "no serializer named or typed \"bson\" is registered"
    );
    let err = Registry::default().encode(&1, "bson").unwrap_err();
    assert!(matches!(err, Error::UnknownSerializer { ref name } if name == "bson"));
    // Content types are matched exactly, as kombu does.
    assert!(Registry::default().serializer("Application/JSON").is_err());
}

#[test]
fn encode_produces_body_and_headers() {
    let r = Registry::default();
    let task = Task {
        id: "é1".into(),
        args: vec![1, 2],
        eta: Some(1.5),
    };
    let encoded = r.encode(&task, "json").unwrap();
    assert_eq!(
        encoded,
        Encoded {
            body: Bytes::from_static(br#"{"id": "\u00e91", "args": [1, 2], "eta": 1.5}"#),
            content_type: "application/json".into(),
            content_encoding: "utf-8".into(),
        }
    );
    // Lookup by content type works too; unsized values are fine.
    let encoded = r.encode("hi", "application/json").unwrap();
    assert_eq!(&encoded.body[..], br#""hi""#);
    let encoded = r.encode(&[1u8, 2][..], "raw").unwrap();
    assert_eq!(
        (
            &encoded.body[..],
            &*encoded.content_type,
            &*encoded.content_encoding
        ),
        (&[1u8, 2][..], "application/data", "binary")
    );
    let encoded = r.encode("text body", "raw").unwrap();
    assert_eq!(encoded.content_encoding, "utf-8");
    let encoded = r.encode("ünï", "text").unwrap();
    assert_eq!(
        (
            &encoded.body[..],
            &*encoded.content_type,
            &*encoded.content_encoding
        ),
        ("ünï".as_bytes(), "text/plain", "utf-8")
    );
    let err = r.encode(&5, "text").unwrap_err();
    assert!(matches!(err, Error::Encode { ref serializer, .. } if serializer == "text"));
}

#[test]
fn decode_round_trips_json() {
    let r = Registry::default();
    let task = Task {
        id: "x😀".into(),
        args: vec![-1, 7],
        eta: None,
    };
    let e = r.encode(&task, "json").unwrap();
    let back: Task = r
        .decode(
            &e.body,
            Some(&e.content_type),
            Some(&e.content_encoding),
            None,
        )
        .unwrap();
    assert_eq!(back, task);
    let accept = r.accept(["json"]).unwrap();
    let back: Task = r
        .decode(&e.body, Some("application/json"), None, Some(&accept))
        .unwrap();
    assert_eq!(back, task);
}

#[test]
fn decode_errors_name_the_content_type() {
    let r = Registry::default();
    let err = r
        .decode::<Task>(b"{not json", Some("application/json"), Some("utf-8"), None)
        .unwrap_err();
    assert!(
        matches!(err, Error::Decode { ref content_type, .. } if content_type == "application/json")
    );
    assert!(
        err.to_string()
            .starts_with("failed to decode content of type \"application/json\"")
    );
    let err = r
        .decode::<Task>(br#"{"id": 1}"#, Some("application/json"), None, None)
        .unwrap_err();
    assert!(matches!(err, Error::Decode { .. }));
}

#[test]
fn missing_content_type_means_application_data() {
    let r = Registry::default();
    // Always trusted, even with an accept list that does not name it.
    let accept = r.accept(["json"]).unwrap();
    let s: String = r.decode(b"plain", None, None, Some(&accept)).unwrap();
    assert_eq!(s, "plain");
    // No encoding = utf-8: offered as text.
    let seen: Seen = r.decode(b"plain", None, None, None).unwrap();
    assert_eq!(seen, Seen::Str("plain".into()));
    let seen: Seen = r.decode(b"plain", None, Some("binary"), None).unwrap();
    assert_eq!(seen, Seen::Bytes(b"plain".to_vec()));
    let b: Bytes = r.decode(b"\x00\x01", None, Some("binary"), None).unwrap();
    assert_eq!(&b[..], b"\x00\x01");
    let v: Vec<u8> = r.decode(b"\x00\x01", None, None, None).unwrap();
    assert_eq!(v, b"\x00\x01");
    assert!(r.check_accept(None, Some(&accept)).is_ok());
    assert!(r.check_accept(None, None).is_ok());
}

#[test]
fn no_decoder_gives_text_or_bytes() {
    let r = Registry::default();
    let accept = r.accept(["application/x-custom"]).unwrap();
    for enc in [None, Some("utf-8"), Some("UTF-8")] {
        let seen: Seen = r
            .decode(
                "héllo".as_bytes(),
                Some("application/x-custom"),
                enc,
                Some(&accept),
            )
            .unwrap();
        assert_eq!(seen, Seen::Str("héllo".into()), "{enc:?}");
    }
    for enc in ["binary", "ascii-8bit"] {
        let seen: Seen = r
            .decode(b"\xff\x00", Some("application/x-custom"), Some(enc), None)
            .unwrap();
        assert_eq!(seen, Seen::Bytes(vec![0xff, 0]), "{enc}");
    }
    let s: String = r
        .decode(
            b"caf\xe9",
            Some("application/x-custom"),
            Some("latin-1"),
            None,
        )
        .unwrap();
    assert_eq!(s, "café");
    let err = r
        .decode::<String>(b"\xff", Some("application/x-custom"), Some("utf-8"), None)
        .unwrap_err();
    assert!(
        matches!(err, Error::Decode { ref content_type, .. } if content_type == "application/x-custom")
    );
    // application/text (always trusted, no decoder) decodes as text.
    let s: String = r
        .decode(
            b"hi",
            Some("application/text"),
            None,
            Some(&Accept::default()),
        )
        .unwrap();
    assert_eq!(s, "hi");
}

#[test]
fn empty_body_is_not_given_to_the_decoder() {
    let r = Registry::default();
    // kombu returns an empty body as it is, even for JSON.
    let s: String = r
        .decode(b"", Some("application/json"), Some("utf-8"), None)
        .unwrap();
    assert_eq!(s, "");
    let v: Vec<u8> = r
        .decode(b"", Some("application/json"), Some("binary"), None)
        .unwrap();
    assert!(v.is_empty());
}

#[test]
fn accept_lists() {
    let r = Registry::default();
    let accept = r.accept(["json", "application/x-yaml", "raw"]).unwrap();
    let types: Vec<&str> = accept.content_types().collect();
    assert_eq!(
        types,
        ["application/data", "application/json", "application/x-yaml"]
    );
    assert_eq!(accept.len(), 3);
    assert!(accept.allows("application/json"));
    assert!(accept.allows("application/x-yaml"));
    for trusted in ALWAYS_TRUSTED {
        assert!(accept.allows(trusted));
        assert!(Accept::default().allows(trusted));
    }
    assert!(!accept.allows("application/x-python-serialize"));
    assert!(!accept.allows("text/plain"));
    // Same set whatever the order or spelling (name vs content type).
    assert_eq!(
        r.accept(["application/json", "json"]).unwrap(),
        r.accept(vec![String::from("json")]).unwrap()
    );
    assert_eq!(
        Accept::from_content_types(["application/json"]),
        ["application/json"].into_iter().collect::<Accept>()
    );
    assert!(Accept::default().is_empty());

    let err = r.accept(["json", "bson"]).unwrap_err();
    assert!(matches!(err, Error::UnknownSerializer { ref name } if name == "bson"));
}

#[test]
fn content_outside_the_accept_list_is_refused() {
    let mut r = Registry::default();
    r.register_serializer(pickle());
    let accept = r.accept(["json"]).unwrap();
    let err = r
        .check_accept(Some("application/x-python-serialize"), Some(&accept))
        .unwrap_err();
    match &err {
        Error::ContentDisallowed {
            content_type,
            allowed,
        } => {
            assert_eq!(content_type, "application/x-python-serialize");
            assert_eq!(allowed, &["application/json"]);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "Refusing to deserialize untrusted content of type application/x-python-serialize \
         (accepted: application/json)"
    );
    // decode refuses before touching the body (the body is not even valid).
    let err = r
        .decode::<String>(
            b"\x80\x04garbage",
            Some("application/x-python-serialize"),
            Some("binary"),
            Some(&accept),
        )
        .unwrap_err();
    assert!(matches!(err, Error::ContentDisallowed { .. }));
    // kombu refuses text/plain under accept=['json'] too.
    let err = r
        .decode::<String>(b"x", Some("text/plain"), None, Some(&accept))
        .unwrap_err();
    assert!(
        matches!(err, Error::ContentDisallowed { ref content_type, .. } if content_type == "text/plain")
    );
    // An empty accept list allows only the always-trusted types.
    let err = r
        .check_accept(Some("application/json"), Some(&Accept::default()))
        .unwrap_err();
    assert!(err.to_string().ends_with("(accepted: none)"), "{err}");
    // Accepting it explicitly works.
    let accept = r.accept(["json", "pickle"]).unwrap();
    let v: Vec<i32> = r
        .decode(
            b"[1]",
            Some("application/x-python-serialize"),
            None,
            Some(&accept),
        )
        .unwrap();
    assert_eq!(v, [1]);
}

#[test]
fn without_accept_list_disabled_serializers_are_refused() {
    let mut r = Registry::default();
    r.register_serializer(pickle());
    let err = r
        .check_accept(Some("application/x-python-serialize"), None)
        .unwrap_err();
    match &err {
        Error::ContentDisallowed { allowed, .. } => assert_eq!(
            allowed,
            &[
                "application/data",
                "application/json",
                "application/text",
                "text/plain"
            ]
        ),
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("application/x-python-serialize"));
    // Enabled serializers, always-trusted types and unregistered types are fine.
    for ct in [
        "application/json",
        "text/plain",
        "application/data",
        "application/text",
        "image/png",
    ] {
        assert!(r.check_accept(Some(ct), None).is_ok(), "{ct}");
    }
}

#[test]
fn registering_replaces_and_overrides() {
    let mut r = Registry::default();
    let before = r.clone();
    // Same content type as raw, different name (like Celery's `auth` on application/data).
    r.register_serializer(Disabled {
        name: "auth",
        content_type: "application/data",
    });
    assert_eq!(r.serializer("application/data").unwrap().name(), "auth");
    assert_eq!(r.serializer("raw").unwrap().name(), "raw");
    // The clone taken before is unaffected (copy on write).
    assert_eq!(before.serializer("application/data").unwrap().name(), "raw");
    assert_eq!(
        before.serializers().count(),
        if cfg!(feature = "pickle") { 6 } else { 5 }
    );
    // Same name replaces.
    r.register_serializer(Disabled {
        name: "auth",
        content_type: "application/x-auth",
    });
    assert_eq!(r.serializers().filter(|s| s.name() == "auth").count(), 1);
    assert_eq!(r.serializer("application/data").unwrap().name(), "raw");
    assert_eq!(
        r.serializer("auth").unwrap().content_type(),
        "application/x-auth"
    );
    // Re-registering json keeps a single json.
    r.register_serializer(JsonSerializer);
    assert_eq!(r.serializers().filter(|s| s.name() == "json").count(), 1);
}

#[test]
fn registering_a_compressor_with_a_shared_alias_replaces() {
    let mut r = Registry::default();
    r.register_compressor(Identity);
    // zlib (which shared the `gzip` alias) is gone; the others stay.
    let names: Vec<&str> = r.compressors().map(|c| c.name()).collect();
    assert_eq!(names, ["bzip2", "lzma", "brotli", "zstd", "identity"]);
    assert_eq!(r.compressor("gzip").unwrap().name(), "identity");
    assert!(r.compressor("zlib").is_err());
    let (body, header) = r.compress(b"abc", "identity").unwrap();
    assert_eq!(
        (&body[..], header.as_str()),
        (&b"abc"[..], "application/x-identity")
    );
    assert_eq!(
        &r.decompress(&body, "application/x-identity", 3).unwrap()[..],
        b"abc"
    );
    assert!(matches!(
        r.decompress(&body, "identity", 2),
        Err(Error::TooLarge { limit: 2, .. })
    ));
}

#[test]
fn decoder_that_never_visits_is_an_error() {
    let mut r = Registry::default();
    r.register_serializer(Lazy);
    let err = r
        .decode::<String>(b"x", Some("application/x-lazy"), None, None)
        .unwrap_err();
    assert!(
        matches!(err, Error::Decode { ref content_type, .. } if content_type == "application/x-lazy")
    );
}

#[test]
fn full_pipeline_with_compression() {
    let r = Registry::default();
    let task = Task {
        id: "abc".repeat(100),
        args: (0..500).collect(),
        eta: Some(0.25),
    };
    let e = r.encode(&task, "json").unwrap();
    let (compressed, header) = r.compress(&e.body, "gzip").unwrap();
    assert!(compressed.len() < e.body.len());
    let body = r
        .decompress(&compressed, &header, crate::DEFAULT_MAX_DECOMPRESSED_SIZE)
        .unwrap();
    assert_eq!(body, e.body);
    let back: Task = r
        .decode(
            &body,
            Some(&e.content_type),
            Some(&e.content_encoding),
            None,
        )
        .unwrap();
    assert_eq!(back, task);
}

#[test]
fn public_types_are_thread_safe() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Registry>();
    assert_send_sync::<Error>();
    assert_send_sync::<Accept>();
    assert_send_sync::<Encoded>();
    assert_eq!(crate::DEFAULT_MAX_DECOMPRESSED_SIZE, 64 * 1024 * 1024);
    assert_eq!(ALWAYS_TRUSTED, ["application/data", "application/text"]);
}
