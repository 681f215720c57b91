//! How `consume` shows a message: its body decoded as the format asks (JSON for structured
//! serializers, text, base64 or raw bytes), and the whole message as `--format json` and
//! `pretty` print it. `kombu dlq` shows bodies the same way.

use std::fmt;
use std::io::Write as _;

use base64::Engine as _;
use kombu::Delivery;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value as Json, json};

use crate::cli::Format;

/// A decoded body as JSON, whatever the serializer produced: bytes (msgpack bin, pickle
/// bytes) become base64 text, map keys that are not strings become their JSON text, numbers
/// JSON cannot hold (non-finite floats) become `null`.
struct Shown(Json);

impl<'de> Deserialize<'de> for Shown {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ShownVisitor).map(Shown)
    }
}

struct ShownVisitor;

fn base64_text(bytes: &[u8]) -> Json {
    Json::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

impl<'de> Visitor<'de> for ShownVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
        Ok(Json::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
        Ok(Json::from(v))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Json, E> {
        Ok(match i64::try_from(v) {
            Ok(small) => Json::from(small),
            Err(_) => Json::String(v.to_string()),
        })
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Json, E> {
        Ok(match u64::try_from(v) {
            Ok(small) => Json::from(small),
            Err(_) => Json::String(v.to_string()),
        })
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        Ok(Json::from(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Json, E> {
        Ok(base64_text(v))
    }
    fn visit_none<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        Shown::deserialize(d).map(|s| s.0)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        Shown::deserialize(d).map(|s| s.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(Shown(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut object = Map::new();
        while let Some((Shown(key), Shown(value))) = map.next_entry()? {
            let key = match key {
                Json::String(s) => s,
                other => other.to_string(),
            };
            object.insert(key, value);
        }
        Ok(untag_bytes(object))
    }
}

/// kombu's JSON tag for bytes, `{"__type__": "bytes", "__value__": TEXT}` (or `"base64"` with
/// base64 text), as base64 text; any other object as it is.
fn untag_bytes(object: Map<String, Json>) -> Json {
    if object.len() == 2
        && let (Some(Json::String(tag)), Some(Json::String(value))) =
            (object.get("__type__"), object.get("__value__"))
    {
        match tag.as_str() {
            "bytes" => return base64_text(value.as_bytes()),
            "base64" => return Json::String(value.clone()),
            _ => {}
        }
    }
    Json::Object(object)
}

/// The body as JSON: decoded for structured serializers, a string for text, base64 for bytes.
pub fn body_json(
    delivery: &Delivery,
    registry: &kombu::serializers::Registry,
) -> kombu::Result<Json> {
    let content_type = delivery.content_type().unwrap_or("application/data");
    let structured = !is_bytes(content_type)
        && !is_text(content_type)
        && registry.serializer(content_type).is_ok();
    if structured {
        return delivery
            .decode::<Shown>()
            .map(|s| s.0)
            .map_err(|e| e.context(format!("cannot decode the {content_type} body")));
    }
    let body = delivery
        .decompressed_body()
        .map_err(|e| e.context("cannot decompress the body"))?;
    if !is_bytes(content_type)
        && let Ok(text) = std::str::from_utf8(&body)
    {
        return Ok(Json::String(text.to_owned()));
    }
    Ok(base64_text(&body))
}

/// A body decoded as a format shows it.
pub enum Body {
    /// Shown as JSON.
    Json(Json),
    /// Shown as its bytes (after decompression).
    Bytes(Vec<u8>),
}

impl Body {
    /// As JSON: text as a string, other bytes as base64.
    fn into_json(self) -> Json {
        match self {
            Body::Json(json) => json,
            Body::Bytes(bytes) => match String::from_utf8(bytes) {
                Ok(text) => Json::String(text),
                Err(e) => base64_text(e.as_bytes()),
            },
        }
    }
}

/// Decodes (or decompresses) the body as `format` shows it: what fails here is the message's
/// fault, and goes to `--on-error`.
pub fn decode_body(
    delivery: &Delivery,
    format: Format,
    registry: &kombu::serializers::Registry,
) -> kombu::Result<Body> {
    let content_type = delivery.content_type().unwrap_or("application/data");
    let bytes = match format {
        Format::Raw | Format::Base64 => true,
        Format::Body => is_bytes(content_type) || is_text(content_type),
        Format::Json | Format::Pretty => false,
    };
    if bytes {
        return delivery
            .decompressed_body()
            .map(|b| Body::Bytes(b.to_vec()))
            .map_err(|e| e.context("cannot decompress the body"));
    }
    body_json(delivery, registry).map(Body::Json)
}

fn is_bytes(content_type: &str) -> bool {
    content_type == "application/data"
}

fn is_text(content_type: &str) -> bool {
    content_type.starts_with("text/")
}

/// The whole message as the JSON object `--format json` prints, with its body shown as `body`.
fn message_json(delivery: &Delivery, body: Json) -> anyhow::Result<Json> {
    let message = delivery.message();
    let props = &message.properties;
    let info = delivery.info();
    Ok(json!({
        "body": body,
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "headers": serde_json::to_value(&message.headers)?,
        "properties": {
            // kombu's default: brokers treat a message without a priority as priority 0.
            "priority": props.priority.unwrap_or(0),
            "correlation_id": props.correlation_id,
            "reply_to": props.reply_to,
            "delivery_mode": props.delivery_mode.map(|m| m.as_u8()),
            "expiration": props.expiration.map(|e| u64::try_from(e.as_millis()).unwrap_or(u64::MAX)),
            "message_id": props.message_id,
        },
        "delivery_info": {
            "exchange": info.exchange,
            "routing_key": info.routing_key,
            "redelivered": info.redelivered,
            "queue": info.queue,
        },
    }))
}

/// What `format` prints for a delivery whose body is decoded.
pub fn render(delivery: &Delivery, body: Body, format: Format) -> anyhow::Result<Vec<u8>> {
    // The body is moved, never copied, into what is printed: a large message is held once as
    // its decoded value and once as its printed text.
    let mut out = Vec::new();
    match (format, body) {
        (Format::Json, body) => {
            serde_json::to_writer(&mut out, &message_json(delivery, body.into_json())?)?;
            out.push(b'\n');
        }
        (Format::Raw, Body::Bytes(bytes)) => out = bytes,
        (Format::Base64, Body::Bytes(bytes)) => {
            out.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .as_bytes(),
            );
            out.push(b'\n');
        }
        (Format::Body, Body::Bytes(mut bytes)) => {
            bytes.push(b'\n');
            out = bytes;
        }
        (Format::Raw | Format::Base64 | Format::Body, Body::Json(json)) => {
            serde_json::to_writer(&mut out, &json)?;
            out.push(b'\n');
        }
        (Format::Pretty, body) => {
            let all = message_json(delivery, body.into_json())?;
            let info = delivery.info();
            writeln!(
                out,
                "--- from queue {:?} (exchange {:?}, routing key {:?}{})",
                info.queue,
                info.exchange,
                info.routing_key,
                if info.redelivered {
                    ", redelivered"
                } else {
                    ""
                }
            )?;
            writeln!(
                out,
                "content type: {} ({})",
                delivery.content_type().unwrap_or("none"),
                delivery
                    .message()
                    .content_encoding
                    .as_deref()
                    .unwrap_or("no encoding")
            )?;
            if !delivery.headers().is_empty() {
                writeln!(out, "headers: {}", all["headers"])?;
            }
            let set: Map<String, Json> = all["properties"]
                .as_object()
                .map(|p| {
                    p.iter()
                        .filter(|(_, v)| !v.is_null())
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            if !set.is_empty() {
                writeln!(out, "properties: {}", Json::Object(set))?;
            }
            match &all["body"] {
                Json::String(s) => writeln!(out, "body: {s}")?,
                other => writeln!(out, "body: {}", serde_json::to_string_pretty(other)?)?,
            }
        }
    }
    Ok(out)
}
