//! The bodies of the fuzz targets (`fuzz/fuzz_targets/*.rs`, run by `scripts/fuzz` on nightly),
//! kept here so that stable code calls them too: `tests/fuzz_corpus.rs` runs every committed
//! corpus input and every kept crash (`fuzz/corpus/<target>/`, `fuzz/artifacts/<target>/`)
//! through the same function.
//!
//! Each body takes arbitrary bytes and panics only when a property that must hold does not:
//! parsers return errors of the right kind instead of panicking, what parses survives a second
//! trip through the writer, decompression never returns more than its bound.

use kombu_core::ErrorKind;
use kombu_core::transport::virtual_transport::envelope;
use kombu_core::{BrokerUrl, Value};
use kombu_serializers::{Compressor, Error as SerError, HmacSerializer, Registry};

/// A fuzz target: its name (the directory of its corpus) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    ("envelope", envelope_decode),
    ("url", url_parse),
    ("amqp_headers", amqp_headers),
    ("decompress", decompress),
    ("deserialize", deserialize),
];

/// `envelope`: kombu's JSON envelope. A decode either fails with a protocol error or gives an
/// envelope that, written and read back, is stable: after one trip through
/// [`envelope::encode`] (which fills in kombu's defaults) a second trip writes the same bytes.
pub fn envelope_decode(data: &[u8]) {
    let env = match envelope::decode(data) {
        Ok(env) => env,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Protocol, "unexpected error kind: {e}");
            return;
        }
    };
    let once = envelope::encode(&env);
    assert!(!once.is_empty(), "encode wrote nothing for {env:?}");
    let env2 = envelope::decode(&once)
        .unwrap_or_else(|e| panic!("what encode wrote does not decode: {e}: {once:?}"));
    let twice = envelope::encode(&env2);
    let env3 = envelope::decode(&twice)
        .unwrap_or_else(|e| panic!("what encode wrote does not decode: {e}: {twice:?}"));
    assert_eq!(
        format!("{env2:?}"),
        format!("{env3:?}"),
        "an envelope changes on its second trip"
    );
    assert_eq!(
        String::from_utf8_lossy(&twice),
        String::from_utf8_lossy(&envelope::encode(&env3)),
        "encode is not stable"
    );
}

/// `url`: broker URLs and `;`-separated failover lists. Parsing fails with an invalid-URL error
/// or gives a URL whose accessors do not panic, whose raw text parses to the same URL, and
/// whose masked form hides its password; a failover list is its parts parsed one by one.
pub fn url_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match BrokerUrl::parse(text) {
        Ok(url) => check_url(&url),
        Err(e) => assert_eq!(
            e.kind(),
            ErrorKind::InvalidUrl,
            "unexpected error kind: {e}"
        ),
    }
    match BrokerUrl::parse_failover(text) {
        Ok(urls) => {
            let parts: Vec<&str> = text
                .split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            assert_eq!(urls.len(), parts.len(), "failover list of {text:?}");
            for (url, part) in urls.iter().zip(parts) {
                let alone = BrokerUrl::parse(part)
                    .unwrap_or_else(|e| panic!("{part:?} parses in a list, not alone: {e}"));
                assert_eq!(url, &alone);
                check_url(url);
            }
        }
        Err(e) => assert_eq!(
            e.kind(),
            ErrorKind::InvalidUrl,
            "unexpected error kind: {e}"
        ),
    }
}

fn check_url(url: &BrokerUrl) {
    let again = BrokerUrl::parse(url.expose())
        .unwrap_or_else(|e| panic!("{:?} does not parse again: {e}", url.expose()));
    assert_eq!(url, &again, "{:?} parses differently again", url.expose());
    assert!(!url.scheme().is_empty());
    assert!(url.scheme().starts_with(url.transport()));
    assert!(url.expose().contains(url.rest()));
    let _ = (url.username(), url.host(), url.port(), url.path());
    let _ = url.virtual_host();
    let masked = url.masked();
    assert_eq!(masked, url.to_string());
    assert_eq!(format!("{url:?}"), format!("BrokerUrl({masked:?})"));
    if let Some(password) = url.password() {
        // The password as written (percent-encoded) is replaced by `**`.
        if !password.is_empty() {
            assert!(masked.contains("**"), "{masked:?} shows its password");
        }
    }
    for (key, value) in url.query_pairs() {
        assert!(url.query(key).is_some());
        for err in [
            url.query_seconds(key).err(),
            url.query_bool(key).err(),
            url.query_number::<u64>(key).err(),
            url.query_number::<f64>(key).err(),
        ]
        .into_iter()
        .flatten()
        {
            assert_eq!(err.kind(), ErrorKind::InvalidUrl);
            // The error names the masked URL, the option and its value; the password shows
            // only if one of those holds its text anyway.
            let text = err.to_string();
            assert!(text.contains(&masked), "{text:?} does not name {masked:?}");
            if let Some(password) = url.password().filter(|p| p.len() >= 8) {
                let elsewhere = [
                    masked.as_str(),
                    key,
                    value,
                    &url.query(key).unwrap_or_default(),
                ]
                .iter()
                .any(|part| part.contains(&*password));
                assert!(
                    !text.contains(&*password) || elsewhere,
                    "an option error shows the password: {text}"
                );
            }
        }
        let _ = url.query_list(key);
    }
}

/// `amqp_headers`: the first byte picks what the rest is parsed as (by amq-protocol, as lapin
/// parses a delivery): even, a field table mapped to kombu headers; odd, the basic properties
/// of a content header mapped to a kombu message. What maps must survive being published
/// again: after one trip through kombu's properties a second trip changes nothing.
///
/// libFuzzer's default input size (4 KiB) bounds the nesting here. Much deeper tables
/// (thousands of levels, tens of KB: one frame) overflow the stack inside amq-protocol-types'
/// own recursive parser, which lapin runs on every delivery before kombu's mapping sees it
/// (5,000 levels do under the fuzz build): an upstream limit, not one this target checks.
pub fn amqp_headers(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let message = if selector % 2 == 0 {
        let Some(headers) = kombu_amqp::fuzzing::headers_from_field_table(rest) else {
            return;
        };
        let mut message = kombu_core::Message::new(&b"body"[..]);
        message.headers = headers;
        message
    } else {
        match kombu_amqp::fuzzing::message_from_properties(rest) {
            Some(message) => message,
            None => return,
        }
    };
    let once = kombu_amqp::fuzzing::through_properties(&message);
    let twice = kombu_amqp::fuzzing::through_properties(&once);
    // Debug, not ==: a NaN header is the same NaN on both sides.
    assert_eq!(
        format!("{once:?}"),
        format!("{twice:?}"),
        "a message changes on its second trip through AMQP properties"
    );
}

/// The decompression bounds `decompress` picks from (the second input byte).
const BOUNDS: [usize; 6] = [0, 1, 7, 256, 4096, 65536];

/// `decompress`: the first byte picks a registered compressor, the second a bound; the rest is
/// decompressed. It fails with a decompression error or [`SerError::TooLarge`] (naming the
/// bound), or gives at most the bound, the same through [`Registry::decompress`].
pub fn decompress(data: &[u8]) {
    let [which, bound, rest @ ..] = data else {
        return;
    };
    let registry = Registry::default();
    let compressors: Vec<&dyn Compressor> = registry.compressors().collect();
    assert!(!compressors.is_empty());
    let c = compressors[usize::from(*which) % compressors.len()];
    let limit = BOUNDS[usize::from(*bound) % BOUNDS.len()];
    match c.decompress(rest, limit) {
        Ok(out) => {
            assert!(
                out.len() <= limit,
                "{}: {} bytes out past the bound {limit}",
                c.name(),
                out.len()
            );
            // The registry path (by header value) agrees.
            let via = registry
                .decompress(rest, c.content_type(), limit)
                .unwrap_or_else(|e| {
                    panic!("{}: the registry fails where it did not: {e}", c.name())
                });
            assert_eq!(&via[..], &out[..]);
            // Not compressed back here: kombu-serializers' property test covers round trips,
            // and the encoders' setup (bzip2 -9, brotli quality 11) would slow the decoders'
            // fuzzing a hundredfold.
        }
        Err(SerError::TooLarge {
            limit: reported, ..
        }) => assert_eq!(reported, limit),
        Err(SerError::Decompress { .. }) => {}
        Err(e) => panic!("{}: unexpected error: {e:?}", c.name()),
    }
}

/// The shared secret of the `hmac` serializer `deserialize` registers (any body it accepts was
/// signed with it; the fuzzer has to find one).
const HMAC_SECRET: [u8; 32] = [7; 32];

/// `deserialize`: the first byte picks a registered serializer (json, raw, text, msgpack, yaml,
/// pickle, hmac), the rest is decoded by [`Registry::decode`] into a kombu [`Value`]. It fails
/// with a decode (or, for hmac, signature) error, or gives a value that the same serializer,
/// when it can encode, writes and reads back as the same value.
pub fn deserialize(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let mut registry = Registry::default();
    if let Ok(hmac) = HmacSerializer::new("fuzz", HMAC_SECRET) {
        registry.register_serializer(hmac);
    }
    let serializers: Vec<(String, String, String)> = registry
        .serializers()
        .map(|s| {
            (
                s.name().to_owned(),
                s.content_type().to_owned(),
                s.content_encoding().to_owned(),
            )
        })
        .collect();
    let (name, content_type, content_encoding) =
        &serializers[usize::from(which) % serializers.len()];
    let accept = match registry.accept(serializers.iter().map(|(n, _, _)| n.as_str())) {
        Ok(accept) => accept,
        Err(e) => panic!("accept list of the registered serializers: {e}"),
    };
    let decoded = registry.decode::<Value>(
        body,
        Some(content_type),
        Some(content_encoding),
        Some(&accept),
    );
    let value = match decoded {
        Ok(value) => value,
        Err(SerError::Decode { .. } | SerError::Signature { .. }) => return,
        Err(e) => panic!("{name}: unexpected error: {e:?}"),
    };
    // Re-encoding is checked for the serializers that write what they read without loss.
    if !["json", "msgpack", "yaml"].contains(&name.as_str()) {
        return;
    }
    let Ok(encoded) = registry.encode(&value, name) else {
        return;
    };
    let back = registry
        .decode::<Value>(
            &encoded.body,
            Some(&encoded.content_type),
            Some(&encoded.content_encoding),
            Some(&accept),
        )
        .unwrap_or_else(|e| panic!("{name}: its own output does not decode: {e}"));
    // kombu-serializers' json writes non-finite floats as `null` (documented: serde_json
    // turns them into null before the formatter sees them).
    let expected = if name == "json" {
        non_finite_as_null(value)
    } else {
        value
    };
    assert_eq!(
        format!("{expected:?}"),
        format!("{back:?}"),
        "{name}: a value changes through encode and decode"
    );
}

fn non_finite_as_null(value: Value) -> Value {
    match value {
        Value::Float(f) if !f.is_finite() => Value::Null,
        Value::List(items) => Value::List(items.into_iter().map(non_finite_as_null).collect()),
        Value::Map(map) => Value::Map(
            map.into_iter()
                .map(|(k, v)| (k, non_finite_as_null(v)))
                .collect(),
        ),
        other => other,
    }
}
