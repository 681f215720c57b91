//! kombu's JSON envelope (wire format reference §1), for backends that store bytes.
//!
//! [`encode`] writes the keys in kombu's order: `body` (base64), `content-encoding`,
//! `content-type`, `headers`, `properties` (the message's own properties, then `delivery_mode`,
//! `expiration`, `delivery_info`, `priority`, `body_encoding`, `delivery_tag`). [`decode`] reads
//! what any kombu version writes: base64 or plain bodies, a missing content type, the redelivery
//! markers of both restore paths (`headers.redelivered`, `delivery_info.redelivered`, top-level
//! `redelivered`), extra properties it does not know (ignored), and what Python's `json.dumps`
//! writes beyond RFC JSON: `NaN`, `Infinity` and `-Infinity` (a header holding one reads as a
//! non-finite [`Value::Float`]) and lone surrogates (U+FFFD).
//!
//! ```
//! use kombu_core::transport::virtual_transport::{envelope, Envelope};
//! use kombu_core::{DeliveryMode, Message, Properties};
//!
//! let env = Envelope {
//!     message: Message::new("{\"a\": 1}")
//!         .content_type("application/json")
//!         .content_encoding("utf-8")
//!         // kombu always writes these two; they read back as set.
//!         .properties(Properties::default().delivery_mode(DeliveryMode::Persistent).priority(0)),
//!     exchange: "".into(),
//!     routing_key: "q".into(),
//!     tag: "t1".into(),
//!     redelivered: false,
//! };
//! let bytes = envelope::encode(&env);
//! assert!(bytes.starts_with(br#"{"body": "eyJhIjogMX0=", "content-encoding": "utf-8""#));
//! assert_eq!(envelope::decode(&bytes)?, env);
//! # Ok::<(), kombu_core::Error>(())
//! ```

use std::time::Duration;

use base64::Engine as _;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer as _};
use serde_json::Value as Json;

use crate::error::{Error, ErrorKind, Result};
use crate::message::{DeliveryMode, Message, Properties};
use crate::transport::virtual_transport::Envelope;
use crate::value::{Headers, Value};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Serializes an envelope as kombu does (Python `json.dumps` spacing: `", "` and `": "`). An
/// envelope without a tag gets a fresh UUID4 `delivery_tag`, as kombu's publisher gives it.
pub fn encode(env: &Envelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + env.message.body.len() * 4 / 3);
    let mut ser =
        serde_json::Serializer::with_formatter(&mut out, kombu_serializers::PythonFormatter);
    // Writing JSON to a Vec only fails if a Serialize impl fails, and ours cannot.
    if ser.serialize_some(&EnvelopeRef(env)).is_err() {
        out.clear();
    }
    out
}

/// Parses a kombu envelope.
pub fn decode(bytes: &[u8]) -> Result<Envelope> {
    // The common shape straight into typed fields (no JSON tree, the body borrowed until it
    // is decoded); anything unusual (a field of an unexpected type) through the lenient path.
    if let Ok(wire) = serde_json::from_slice::<Wire<'_>>(bytes) {
        return wire.into_envelope();
    }
    let strict = match serde_json::from_slice::<Json>(bytes) {
        Ok(json) => return from_json(json),
        Err(strict) => strict,
    };
    // What Python's json.dumps writes beyond RFC JSON: `NaN`/`Infinity` in headers (kept as
    // non-finite `Value::Float`s by the typed fields), lone surrogates (U+FFFD). One tolerant
    // parse, read typed first and as a tree when the typed fields do not fit.
    if let Some(doc) = kombu_serializers::parse_python_json(bytes) {
        if let Ok(wire) = doc.clone().deserialize::<Wire<'_>>() {
            return wire.into_envelope();
        }
        if let Ok(json) = doc.deserialize::<Json>() {
            return from_json(json);
        }
    }
    Err(Error::new(
        ErrorKind::Protocol,
        "stored message is not a kombu JSON envelope",
    )
    .with_source(strict))
}

/// Builds an envelope from an already parsed JSON object (MongoDB stores it as a document).
pub fn from_json(json: Json) -> Result<Envelope> {
    let Json::Object(mut obj) = json else {
        return Err(Error::new(
            ErrorKind::Protocol,
            "stored message is not a JSON object",
        ));
    };
    let mut props = match obj.remove("properties") {
        Some(Json::Object(p)) => p,
        _ => serde_json::Map::new(),
    };
    let body_encoding = props.remove("body_encoding");
    let body = match obj.remove("body") {
        Some(Json::String(s)) => {
            body_bytes(s.into(), body_encoding.as_ref().and_then(Json::as_str))?
        }
        None | Some(Json::Null) => bytes::Bytes::new(),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::Protocol,
                "envelope body is not a string",
            ));
        }
    };
    let content_type = take_name(&mut obj, "content-type");
    let content_encoding = take_name(&mut obj, "content-encoding");
    let mut headers: Headers = match obj.remove("headers") {
        Some(Json::Object(h)) => h
            .into_iter()
            .map(|(k, v)| (k, Value::from_json(v)))
            .collect(),
        _ => Headers::new(),
    };
    let mut redelivered = matches!(obj.remove("redelivered"), Some(Json::Bool(true)));
    if let Some(Value::Bool(true)) = headers.get("redelivered") {
        redelivered = true;
    }
    headers.remove("redelivered");

    let (mut exchange, mut routing_key) = (String::new(), String::new());
    if let Some(Json::Object(mut info)) = props.remove("delivery_info") {
        exchange = take_string(&mut info, "exchange").unwrap_or_default();
        routing_key = take_string(&mut info, "routing_key").unwrap_or_default();
        if let Some(Json::Bool(true)) = info.get("redelivered") {
            redelivered = true;
        }
    }
    let tag = match props.remove("delivery_tag") {
        Some(Json::String(s)) => s,
        Some(Json::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let properties = Properties {
        delivery_mode: props
            .remove("delivery_mode")
            .and_then(|v| v.as_u64())
            .map(|n| DeliveryMode::from_u8(u8::try_from(n).unwrap_or(2))),
        priority: props
            .remove("priority")
            .and_then(|v| v.as_u64())
            .map(|p| u8::try_from(p).unwrap_or(u8::MAX)),
        correlation_id: take_string(&mut props, "correlation_id"),
        reply_to: take_string(&mut props, "reply_to"),
        expiration: props
            .remove("expiration")
            .and_then(|v| parse_expiration(&v)),
        message_id: take_string(&mut props, "message_id"),
        timestamp: props.remove("timestamp").and_then(timestamp),
        kind: take_string(&mut props, "type"),
        user_id: take_string(&mut props, "user_id"),
        app_id: take_string(&mut props, "app_id"),
    };
    Ok(Envelope {
        message: Message {
            body,
            content_type,
            content_encoding,
            headers,
            properties,
        },
        exchange,
        routing_key,
        tag,
        redelivered,
    })
}

/// An envelope as kombu writes it, borrowed from the stored bytes where it can be.
#[derive(serde::Deserialize)]
struct Wire<'a> {
    #[serde(default, borrow)]
    body: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "content-type", default, borrow)]
    content_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "content-encoding", default, borrow)]
    content_encoding: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    headers: Option<Headers>,
    #[serde(default)]
    properties: Option<WireProperties<'a>>,
    #[serde(default)]
    redelivered: Option<bool>,
}

#[derive(serde::Deserialize, Default)]
struct WireProperties<'a> {
    #[serde(default, borrow)]
    body_encoding: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    delivery_info: Option<WireInfo>,
    #[serde(default)]
    delivery_tag: Option<String>,
    #[serde(default)]
    delivery_mode: Option<u64>,
    #[serde(default)]
    priority: Option<u64>,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    expiration: Option<Json>,
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    timestamp: Option<Json>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    app_id: Option<String>,
}

#[derive(serde::Deserialize)]
struct WireInfo {
    #[serde(default)]
    exchange: Option<String>,
    #[serde(default)]
    routing_key: Option<String>,
    #[serde(default)]
    redelivered: Option<bool>,
}

impl Wire<'_> {
    /// The envelope, read as [`from_json`] reads it.
    fn into_envelope(self) -> Result<Envelope> {
        let props = self.properties.unwrap_or_default();
        let body = match self.body {
            None => bytes::Bytes::new(),
            Some(s) => body_bytes(s, props.body_encoding.as_deref())?,
        };
        let mut headers = self.headers.unwrap_or_default();
        let mut redelivered = self.redelivered == Some(true);
        if let Some(Value::Bool(true)) = headers.remove("redelivered") {
            redelivered = true;
        }
        let (mut exchange, mut routing_key) = (String::new(), String::new());
        if let Some(info) = props.delivery_info {
            exchange = info.exchange.unwrap_or_default();
            routing_key = info.routing_key.unwrap_or_default();
            redelivered |= info.redelivered == Some(true);
        }
        let properties = Properties {
            delivery_mode: props
                .delivery_mode
                .map(|n| DeliveryMode::from_u8(u8::try_from(n).unwrap_or(2))),
            priority: props.priority.map(|p| u8::try_from(p).unwrap_or(u8::MAX)),
            correlation_id: props.correlation_id,
            reply_to: props.reply_to,
            expiration: props.expiration.as_ref().and_then(parse_expiration),
            message_id: props.message_id,
            timestamp: props.timestamp.and_then(timestamp),
            kind: props.kind,
            user_id: props.user_id,
            app_id: props.app_id,
        };
        Ok(Envelope {
            message: Message {
                body,
                content_type: self.content_type.as_deref().map(kombu_serializers::known),
                content_encoding: self
                    .content_encoding
                    .as_deref()
                    .map(kombu_serializers::known),
                headers,
                properties,
            },
            exchange,
            routing_key,
            tag: props.delivery_tag.unwrap_or_default(),
            redelivered,
        })
    }
}

/// A stored body, decoded by its `body_encoding` (kombu writes base64; none or `utf-8` is the
/// text itself).
fn body_bytes(body: std::borrow::Cow<'_, str>, encoding: Option<&str>) -> Result<bytes::Bytes> {
    match encoding.map(str::to_ascii_lowercase).as_deref() {
        None | Some("utf-8") => Ok(bytes::Bytes::from(body.into_owned().into_bytes())),
        Some("base64") => B64
            .decode(body.as_bytes())
            .map(bytes::Bytes::from)
            .map_err(|e| {
                Error::new(ErrorKind::Protocol, "envelope body is not valid base64").with_source(e)
            }),
        Some(other) => Err(Error::new(
            ErrorKind::Protocol,
            format!("unknown envelope body_encoding {other:?}"),
        )),
    }
}

/// A timestamp property: whole seconds, from an integer or a float.
fn timestamp(v: Json) -> Option<u64> {
    match v {
        Json::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
        _ => None,
    }
}

fn take_string(map: &mut serde_json::Map<String, Json>, key: &str) -> Option<String> {
    match map.remove(key) {
        Some(Json::String(s)) => Some(s),
        _ => None,
    }
}

/// A content type or encoding, static for the common ones.
fn take_name(
    map: &mut serde_json::Map<String, Json>,
    key: &str,
) -> Option<std::borrow::Cow<'static, str>> {
    match map.get(key) {
        Some(Json::String(s)) => Some(kombu_serializers::known(s)),
        _ => None,
    }
}

fn parse_expiration(v: &Json) -> Option<Duration> {
    let ms = match v {
        Json::String(s) => s.trim().parse::<f64>().ok()?,
        Json::Number(n) => n.as_f64()?,
        _ => return None,
    };
    (ms >= 0.0).then(|| Duration::from_millis(ms as u64))
}

struct EnvelopeRef<'a>(&'a Envelope);

impl Serialize for EnvelopeRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let env = self.0;
        let msg = &env.message;
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry("body", &B64.encode(&msg.body))?;
        if msg.content_type.is_none() && msg.content_encoding.is_none() {
            // Raw bytes, named as kombu's publisher names them: a kombu consumer would
            // otherwise read the body as UTF-8 text.
            m.serialize_entry("content-encoding", "binary")?;
            m.serialize_entry("content-type", "application/data")?;
        } else {
            m.serialize_entry("content-encoding", &msg.content_encoding)?;
            m.serialize_entry("content-type", &msg.content_type)?;
        }
        if env.redelivered {
            // kombu's Redis restore marks both places; readers of either find it.
            let mut headers = msg.headers.clone();
            headers.insert("redelivered".into(), Value::Bool(true));
            m.serialize_entry("headers", &headers)?;
        } else {
            m.serialize_entry("headers", &msg.headers)?;
        }
        m.serialize_entry("properties", &PropertiesRef(env))?;
        m.end()
    }
}

struct PropertiesRef<'a>(&'a Envelope);

impl Serialize for PropertiesRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let env = self.0;
        let p = &env.message.properties;
        let mut m = s.serialize_map(None)?;
        let optional = [
            ("correlation_id", &p.correlation_id),
            ("reply_to", &p.reply_to),
            ("message_id", &p.message_id),
            ("type", &p.kind),
            ("user_id", &p.user_id),
            ("app_id", &p.app_id),
        ];
        for (key, value) in optional {
            if let Some(v) = value {
                m.serialize_entry(key, v)?;
            }
        }
        if let Some(ts) = p.timestamp {
            m.serialize_entry("timestamp", &ts)?;
        }
        m.serialize_entry(
            "delivery_mode",
            &p.delivery_mode.unwrap_or_default().as_u8(),
        )?;
        if let Some(exp) = p.expiration {
            m.serialize_entry("expiration", &exp.as_millis().to_string())?;
        }
        m.serialize_entry("delivery_info", &DeliveryInfoRef(env))?;
        m.serialize_entry("priority", &p.priority.unwrap_or(0))?;
        m.serialize_entry("body_encoding", "base64")?;
        if env.tag.is_empty() {
            m.serialize_entry("delivery_tag", &uuid::Uuid::new_v4().to_string())?;
        } else {
            m.serialize_entry("delivery_tag", &env.tag)?;
        }
        m.end()
    }
}

struct DeliveryInfoRef<'a>(&'a Envelope);

impl Serialize for DeliveryInfoRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let env = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("exchange", &env.exchange)?;
        m.serialize_entry("routing_key", &env.routing_key)?;
        if env.redelivered {
            m.serialize_entry("redelivered", &true)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kombu_observed_envelope() {
        // Reference §1.3, written by kombu 5.7.0 to Redis.
        let raw = br#"{"body": "eyJoZWxsbyI6ICJ3b3JsZCIsICJuIjogMX0=", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"h1": "v1"}, "properties": {"correlation_id": "cid-1", "reply_to": "replyq", "delivery_mode": 2, "delivery_info": {"exchange": "tasks", "routing_key": "myq"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "819d346f-a3e7-49c9-a3d0-aed4ec702cd5"}}"#;
        let env = decode(raw).unwrap();
        assert_eq!(&env.message.body[..], br#"{"hello": "world", "n": 1}"#);
        assert_eq!(env.exchange, "tasks");
        assert_eq!(env.routing_key, "myq");
        assert_eq!(env.tag, "819d346f-a3e7-49c9-a3d0-aed4ec702cd5");
        assert_eq!(
            env.message.properties.correlation_id.as_deref(),
            Some("cid-1")
        );
        assert_eq!(env.message.properties.reply_to.as_deref(), Some("replyq"));
        assert_eq!(env.message.headers["h1"], Value::from("v1"));
        assert!(!env.redelivered);
        // Re-encoding gives kombu's bytes exactly (same key order and spacing).
        assert_eq!(String::from_utf8(encode(&env)).unwrap(), {
            let s = std::str::from_utf8(raw).unwrap();
            s.to_owned()
        });
    }

    #[test]
    fn reads_python_json_extensions() {
        // kombu 5.7 on Redis, `headers={"score": float("nan"), "hi": float("inf"),
        // "lo": float("-inf"), "who": "a\ud800b"}`: json.dumps writes non-RFC JSON.
        let raw = br#"{"body": "eyJ4IjogTmFOfQ==", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"score": NaN, "hi": Infinity, "lo": -Infinity, "who": "a\ud800b"}, "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "q"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "t-1"}}"#;
        let env = decode(raw).unwrap();
        let headers = &env.message.headers;
        assert!(matches!(headers["score"], Value::Float(f) if f.is_nan()));
        assert_eq!(headers["hi"], Value::Float(f64::INFINITY));
        assert_eq!(headers["lo"], Value::Float(f64::NEG_INFINITY));
        assert_eq!(headers["who"], Value::from("a\u{fffd}b"));
        assert_eq!(env.routing_key, "q");
        assert_eq!(env.tag, "t-1");
        assert_eq!(&env.message.body[..], br#"{"x": NaN}"#);
        // An odd shape that only the tree reader takes, with a NaN too.
        let odd = br#"{"body": "x", "headers": {"s": NaN}, "properties": {"delivery_tag": 17, "priority": "high"}}"#;
        let env = decode(odd).unwrap();
        assert_eq!(env.tag, "17");
        assert_eq!(env.message.headers["s"], Value::Null);
        assert!(decode(br#"{"body": nan}"#).is_err());
    }

    #[test]
    fn typed_and_lenient_readers_agree() {
        // The fast typed reader and the JSON-tree reader give the same envelope for every shape
        // kombu writes, and the tree reader takes what the typed one cannot (odd types).
        let cases: [&[u8]; 7] = [
            br#"{"body": "eyJoZWxsbyI6ICJ3b3JsZCIsICJuIjogMX0=", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"h1": "v1", "n": [1, 2.5, null, {"k": true}]}, "properties": {"correlation_id": "cid-1", "reply_to": "replyq", "delivery_mode": 2, "delivery_info": {"exchange": "tasks", "routing_key": "myq"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "819d346f-a3e7-49c9-a3d0-aed4ec702cd5", "expiration": "1500", "timestamp": 1700000000, "type": "t", "message_id": "m", "app_id": "a", "user_id": "u", "unknown": {"x": 1}}}"#,
            br#"{"body": "plain \"quoted\" \u00e9", "headers": {"redelivered": true}, "properties": {"delivery_info": {"exchange": "", "routing_key": "q", "redelivered": true}}}"#,
            br#"{"body": "eA==", "properties": {"body_encoding": "BASE64"}, "redelivered": true}"#,
            br#"{"body": null, "headers": null, "properties": null}"#,
            br#"{"body": "x", "headers": "not a map", "properties": {"delivery_tag": 17, "priority": "high"}}"#,
            br#"{"body": "x", "properties": {"delivery_info": "odd", "timestamp": 1.5e9, "expiration": 250}}"#,
            br#"{}"#,
        ];
        for raw in cases {
            let tree: Json = serde_json::from_slice(raw).unwrap();
            assert_eq!(
                decode(raw).unwrap(),
                from_json(tree).unwrap(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn reads_minimum_envelope_and_markers() {
        let env = decode(br#"{"body": "eyJhIjoxfQ==", "content-type": "application/json", "properties": {"body_encoding": "base64", "delivery_tag": "t1", "delivery_info": {"exchange": "", "routing_key": "mq"}}}"#).unwrap();
        assert_eq!(&env.message.body[..], br#"{"a":1}"#);
        assert_eq!(env.message.content_encoding, None);
        let env = decode(br#"{"body": "plain", "headers": {"redelivered": true}, "properties": {"delivery_info": {"exchange": "", "routing_key": "q", "redelivered": true}}}"#).unwrap();
        assert_eq!(&env.message.body[..], b"plain");
        assert!(env.redelivered);
        assert!(!env.message.headers.contains_key("redelivered"));
        let env = decode(
            br#"{"body": "eA==", "properties": {"body_encoding": "base64"}, "redelivered": true}"#,
        )
        .unwrap();
        assert!(env.redelivered);
        assert!(decode(b"not json").is_err());
        assert!(decode(br#"{"body": "%%%", "properties": {"body_encoding": "base64"}}"#).is_err());
    }

    #[test]
    fn expiration_and_unicode() {
        let env = Envelope {
            message: Message {
                body: bytes::Bytes::from_static(&[0, 255]),
                headers: [("k".to_owned(), Value::from("é😀"))].into_iter().collect(),
                properties: Properties {
                    expiration: Some(Duration::from_secs(10)),
                    priority: Some(3),
                    delivery_mode: Some(DeliveryMode::Persistent),
                    ..Properties::default()
                },
                ..Message::default()
            },
            exchange: "ex".into(),
            routing_key: "ключ".into(),
            tag: "x".into(),
            redelivered: true,
        };
        let bytes = encode(&env);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.is_ascii());
        assert!(text.contains(r#""expiration": "10000""#));
        assert!(text.contains(r#""k": "\u00e9\ud83d\ude00""#));
        // Raw bytes with no content type are named as kombu names them.
        assert!(
            text.contains(r#""content-encoding": "binary", "content-type": "application/data""#)
        );
        let mut expected = env;
        expected.message.content_type = Some("application/data".into());
        expected.message.content_encoding = Some("binary".into());
        assert_eq!(decode(&bytes).unwrap(), expected);
    }

    mod round_trip {
        use std::time::Duration;

        use proptest::prelude::*;

        use super::super::{decode, encode};
        use crate::message::{DeliveryMode, Envelope, Message, Properties};
        use crate::value::{Headers, Value};

        fn text() -> impl Strategy<Value = String> {
            // Any Unicode, quotes, backslashes and control characters included.
            proptest::collection::vec(any::<char>(), 0..12).prop_map(|c| c.into_iter().collect())
        }

        fn value() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                text().prop_map(Value::from),
            ]
        }

        fn properties() -> impl Strategy<Value = Properties> {
            (
                proptest::option::of(prop_oneof![
                    Just(DeliveryMode::Transient),
                    Just(DeliveryMode::Persistent)
                ]),
                proptest::option::of(0u8..=255),
                proptest::option::of(text()),
                proptest::option::of(text()),
                proptest::option::of((0u64..10_000_000).prop_map(Duration::from_millis)),
                proptest::option::of(text()),
                proptest::option::of(0u64..4_000_000_000),
            )
                .prop_map(|(mode, priority, cid, reply_to, ttl, id, ts)| Properties {
                    delivery_mode: mode,
                    priority,
                    correlation_id: cid,
                    reply_to,
                    expiration: ttl,
                    message_id: id,
                    timestamp: ts,
                    ..Properties::default()
                })
        }

        fn envelope() -> impl Strategy<Value = Envelope> {
            (
                proptest::collection::vec(any::<u8>(), 0..64),
                proptest::collection::btree_map(text(), value(), 0..4),
                properties(),
                (text(), text(), "[a-f0-9-]{1,36}", any::<bool>()),
            )
                .prop_map(
                    |(body, headers, properties, (exchange, key, tag, redelivered))| {
                        let headers: Headers = headers.into_iter().collect();
                        let message = Message::new(body)
                            .content_type("application/octet-stream")
                            .content_encoding("binary")
                            .headers(headers)
                            .properties(properties);
                        let mut env = Envelope::new(message, exchange, key);
                        env.tag = tag;
                        env.redelivered = redelivered;
                        env
                    },
                )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]
            /// What Rust writes, Rust reads back unchanged (bar kombu's defaults): body bytes,
            /// headers, properties, exchange, routing key, tag and the redelivered flag.
            #[test]
            fn what_rust_writes_rust_reads(env in envelope()) {
                let bytes = encode(&env);
                let back = decode(&bytes).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
                // kombu's envelope always carries a delivery mode and a priority: unset ones
                // are written as kombu's defaults (persistent, 0) and read back as such.
                let mut expected = env;
                let p = &mut expected.message.properties;
                p.delivery_mode.get_or_insert(DeliveryMode::default());
                p.priority.get_or_insert(0);
                prop_assert_eq!(back, expected);
            }
        }
    }
}
