//! The messages the transports' Python-interop tests exchange with Python kombu, on the Rust
//! side: the same values the tests' Python scripts publish and expect, and small readers of
//! deliveries. Each case is named in a `case` header.

use std::time::Duration;

use serde_json::{Value as Json, json};

use kombu_core::{Connection, Consumer, Delivery, DeliveryMode, Headers, Queue, Value};

/// The `text` case's body (`text/plain`, UTF-8).
pub const TEXT: &str = "h\u{e9}llo \u{2713} plain text";
/// The `bytes` case's body (`application/data`, binary).
pub const BYTES: &[u8] = b"\x00\xff\x01binary\x80";
/// Every compression kombu names, with its content type (the `compression` header).
pub const COMPRESSIONS: [(&str, &str); 5] = [
    ("zlib", "application/x-gzip"),
    ("bzip2", "application/x-bz2"),
    ("lzma", "application/x-lzma"),
    ("brotli", "application/x-brotli"),
    ("zstd", "application/zstd"),
];
/// Every case both sides publish, sorted.
pub const CASES: [&str; 10] = [
    "brotli", "bytes", "bzip2", "json", "lzma", "msgpack", "text", "yaml", "zlib", "zstd",
];

/// A delivery's `case` header. Panics without one (a test helper).
pub fn case_of(d: &Delivery) -> String {
    d.headers()
        .get("case")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("delivery without a case header: {d:?}"))
        .to_owned()
}

/// Headers as JSON, to compare with what Python sent.
pub fn headers_json(h: &Headers) -> Json {
    serde_json::to_value(h).expect("headers serialize") // ok: a test helper; headers always serialize
}

/// The `json` case's body: nesting, every JSON type, non-ASCII text, a large integer.
pub fn nested() -> Json {
    json!({
        "id": 1,
        "nested": {
            "list": [1, 2.5, "three", null, true, false],
            "map": {"a": {"b": [{}, [], {"c": -7}]}},
            "unicode": "h\u{e9}llo \u{2713} \u{1f600}",
        },
        "big": 12_345_678_901_234_i64,
    })
}

/// The `json` case's headers.
pub fn json_headers() -> Json {
    json!({
        "h-str": "v",
        "h-int": 42,
        "h-list": [1, "x", null],
        "h-map": {"k": "v"},
        "h-bool": true,
        "case": "json",
    })
}

/// The `msgpack` case's body.
pub fn msgpack_value() -> Json {
    json!({"id": 4, "kind": "msgpack", "list": [1, 2, 3], "f": 1.5, "s": "\u{e9}"})
}

/// The `yaml` case's body.
pub fn yaml_value() -> Json {
    json!({"id": 5, "kind": "yaml", "list": [1, "two", null], "map": {"k": "v"}})
}

/// The body of the case of compression `kind`.
pub fn compressed_value(kind: &str) -> Json {
    json!({"kind": kind, "data": "x".repeat(2000), "n": [1, 2, 3]})
}

/// The content type of compression `kind`. Panics for a kind not in [`COMPRESSIONS`].
pub fn compression_type(kind: &str) -> &'static str {
    COMPRESSIONS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, t)| *t)
        .unwrap_or_else(|| panic!("no compression {kind}"))
}

/// `v`, sorted.
pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// How long the interop tests wait for one delivery.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// A consumer of `queue` that accepts every serializer the cases use. Panics on a failure (a
/// test helper).
pub async fn cases_consumer(conn: &Connection, queue: &str) -> Consumer {
    conn.consumer([Queue::new(queue)])
        .accept(["json", "msgpack", "yaml", "text", "raw"])
        .build()
        .await
        .expect("start consuming") // ok: a test helper; panics are its failures
}

/// The consumer's next delivery, within [`DELIVERY_TIMEOUT`]. Panics otherwise (a test
/// helper).
pub async fn next_delivery(consumer: &mut Consumer) -> Delivery {
    use futures::StreamExt as _;
    match tokio::time::timeout(DELIVERY_TIMEOUT, consumer.next()).await {
        Err(_) => panic!("no delivery within {DELIVERY_TIMEOUT:?}"),
        Ok(None) => panic!("the delivery stream ended"),
        Ok(Some(Err(e))) => panic!("delivery refused: {e}"),
        Ok(Some(Ok(d))) => d,
    }
}

/// Checks a delivery of one of the cases against its values (content type and encoding,
/// body, headers, properties); `case` is its `case` header. Panics on a mismatch (a test
/// helper).
pub fn check_case(d: &Delivery, case: &str) {
    match case {
        "json" => {
            assert_eq!(d.content_type(), Some("application/json"));
            assert_eq!(d.message().content_encoding.as_deref(), Some("utf-8"));
            assert_eq!(d.decode::<Json>().expect("decode json"), nested()); // ok: a test helper; panics are its failures
            assert_eq!(
                serde_json::to_value(d.headers()).expect("headers"), // ok: a test helper; panics are its failures
                json_headers()
            );
            let p = d.properties();
            assert_eq!(p.correlation_id.as_deref(), Some("cid-1"));
            assert_eq!(p.reply_to.as_deref(), Some("replies"));
            assert_eq!(p.message_id.as_deref(), Some("mid-1"));
            assert_eq!(p.priority, Some(5));
            assert_eq!(p.delivery_mode, Some(DeliveryMode::Persistent));
        }
        "text" => {
            assert_eq!(d.content_type(), Some("text/plain"));
            assert_eq!(d.decode::<String>().expect("decode text"), TEXT); // ok: a test helper; panics are its failures
        }
        "bytes" => {
            assert_eq!(d.content_type(), Some("application/data"));
            assert_eq!(d.message().content_encoding.as_deref(), Some("binary"));
            assert_eq!(&d.body()[..], BYTES);
        }
        "msgpack" => {
            assert_eq!(d.content_type(), Some("application/x-msgpack"));
            assert_eq!(d.decode::<Json>().expect("decode msgpack"), msgpack_value()); // ok: a test helper; panics are its failures
        }
        "yaml" => {
            assert_eq!(d.content_type(), Some("application/x-yaml"));
            assert_eq!(d.decode::<Json>().expect("decode yaml"), yaml_value()); // ok: a test helper; panics are its failures
        }
        kind => {
            assert_eq!(
                d.headers().get("compression").and_then(Value::as_str),
                Some(compression_type(kind)),
                "{kind}"
            );
            assert_eq!(d.content_type(), Some("application/json"), "{kind}");
            assert_eq!(
                d.decode::<Json>()
                    .unwrap_or_else(|e| panic!("decode {kind}: {e}")),
                compressed_value(kind)
            );
        }
    }
}

/// Checks what Python kombu read of one of the messages [`publish_cases`] published to `queue`
/// on the default exchange (an entry of the interop script's `messages`): where it came from,
/// and each case's content type, body and headers; `json_extra` checks what the `json` case
/// carries besides on this transport. Returns the case. Panics on a mismatch (a test helper).
pub fn check_read_by_python(m: &Json, queue: &str, json_extra: impl FnOnce(&Json)) -> String {
    use base64::Engine as _;
    let case = m["headers"]["case"]
        .as_str()
        .expect("case header") // ok: a test helper; panics are its failures
        .to_owned();
    assert_eq!(m["delivery_info"]["exchange"], "", "{case}: {m}");
    assert_eq!(m["delivery_info"]["routing_key"], queue, "{case}: {m}");
    assert_eq!(m["redelivered"], false, "{case}: {m}");
    match case.as_str() {
        "json" => {
            assert_eq!(m["content_type"], "application/json", "{m}");
            assert_eq!(m["payload"], nested(), "{m}");
            assert_eq!(m["headers"], json_headers(), "{m}");
            assert_eq!(m["properties"]["correlation_id"], "cid-1", "{m}");
            assert_eq!(m["properties"]["reply_to"], "replies", "{m}");
            assert_eq!(m["properties"]["message_id"], "mid-1", "{m}");
            assert_eq!(m["properties"]["priority"], 5, "{m}");
            json_extra(m);
        }
        "text" => {
            assert_eq!(m["content_type"], "text/plain", "{m}");
            assert_eq!(m["payload"], TEXT, "{m}");
        }
        "bytes" => {
            assert_eq!(m["content_type"], "application/data", "{m}");
            assert_eq!(m["content_encoding"], "binary", "{m}");
            let b64 = m["payload_b64"].as_str().expect("Python decoded bytes"); // ok: a test helper; panics are its failures
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("base64"); // ok: a test helper; panics are its failures
            assert_eq!(bytes, BYTES, "{m}");
        }
        "msgpack" => {
            assert_eq!(m["content_type"], "application/x-msgpack", "{m}");
            assert_eq!(m["payload"], msgpack_value(), "{m}");
        }
        "yaml" => {
            assert_eq!(m["content_type"], "application/x-yaml", "{m}");
            assert_eq!(m["payload"], yaml_value(), "{m}");
        }
        kind => {
            assert_eq!(m["headers"]["compression"], compression_type(kind), "{m}");
            assert_eq!(m["payload"], compressed_value(kind), "{m}");
        }
    }
    case
}

/// Publishes every case to `queue` on the default exchange, as the scripts' `publish_cases`
/// does on the Python side (declaring the queue first); the `json` case with `expiration` when
/// given. Panics on a failure (a test helper).
pub async fn publish_cases(conn: &Connection, queue: &str, expiration: Option<Duration>) {
    let producer = conn
        .producer()
        .routing_key(queue)
        .declare(Queue::new(queue));
    let mut map = Headers::new();
    map.insert("k".into(), "v".into());
    let body = nested();
    let mut json = producer.message(&body);
    if let Some(ttl) = expiration {
        json = json.expiration(ttl);
    }
    json.header("h-str", "v")
        .header("h-int", 42)
        .header("h-list", vec![Value::Int(1), "x".into(), Value::Null])
        .header("h-map", map)
        .header("h-bool", true)
        .header("case", "json")
        .correlation_id("cid-1")
        .reply_to("replies")
        .message_id("mid-1")
        .priority(5)
        .send()
        .await
        .expect("publish json"); // ok: a test helper; panics are its failures
    producer
        .message(TEXT)
        .serializer("text")
        .header("case", "text")
        .send()
        .await
        .expect("publish text"); // ok: a test helper; panics are its failures
    producer
        .message(&bytes::Bytes::from_static(BYTES))
        .serializer("raw")
        .header("case", "bytes")
        .send()
        .await
        .expect("publish bytes"); // ok: a test helper; panics are its failures
    producer
        .message(&msgpack_value())
        .serializer("msgpack")
        .header("case", "msgpack")
        .send()
        .await
        .expect("publish msgpack"); // ok: a test helper; panics are its failures
    producer
        .message(&yaml_value())
        .serializer("yaml")
        .header("case", "yaml")
        .send()
        .await
        .expect("publish yaml"); // ok: a test helper; panics are its failures
    for (kind, _) in COMPRESSIONS {
        producer
            .message(&compressed_value(kind))
            .compression(kind)
            .header("case", kind)
            .send()
            .await
            .unwrap_or_else(|e| panic!("publish {kind}: {e}"));
    }
}
