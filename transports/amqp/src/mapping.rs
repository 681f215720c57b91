//! kombu's model onto AMQP 0-9-1, as py-amqp writes it (wire format reference §3.1-3.3):
//! header values to field-table values, [`Message`] to basic properties and back, entity
//! declarations to their arguments.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kombu_core::{DeliveryMode, Headers, Message, Properties, Value};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, ByteArray, FieldArray, FieldTable, LongString, ShortString};

/// A header value as py-amqp encodes the Python value it stands for: integers that fit 32 bits
/// as `I` (signed 32), larger ones as `l` (signed 64), strings as `S`, bytes as `x`, floats as
/// `d`, `None` as `V`, lists as `A`, dicts as `F`.
pub(crate) fn to_amqp(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Int(i) => match i32::try_from(*i) {
            Ok(small) => AMQPValue::LongInt(small),
            Err(_) => AMQPValue::LongLongInt(*i),
        },
        Value::Float(f) => AMQPValue::Double(*f),
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        Value::Bytes(b) => AMQPValue::ByteArray(ByteArray::from(b.clone())),
        Value::List(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(to_amqp).collect::<Vec<_>>(),
        )),
        Value::Map(map) => AMQPValue::FieldTable(to_table(map)),
    }
}

/// Deepest nesting of tables and arrays in headers that is mapped; deeper values become a
/// string saying so. A hostile publisher can nest thousands of tables in one frame, and
/// mapping (or dropping) them recursively would overflow a thread's stack.
pub(crate) const MAX_HEADER_DEPTH: usize = 64;

/// A field-table value as kombu sees it (py-amqp decodes every integer width to `int`, `S` to
/// `str`, `x` to `bytes`, a timestamp to a datetime, here its seconds).
#[cfg(test)]
pub(crate) fn from_amqp(value: &AMQPValue) -> Value {
    from_amqp_at(value, 0, &mut false)
}

/// A field-table value as kombu sees it at nesting `depth`; sets `cut` when something was
/// nested too deep.
fn from_amqp_at(value: &AMQPValue, depth: usize, cut: &mut bool) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => Value::Int(i64::from(*i)),
        AMQPValue::ShortShortUInt(i) => Value::Int(i64::from(*i)),
        AMQPValue::ShortInt(i) => Value::Int(i64::from(*i)),
        AMQPValue::ShortUInt(i) => Value::Int(i64::from(*i)),
        AMQPValue::LongInt(i) => Value::Int(i64::from(*i)),
        AMQPValue::LongUInt(i) => Value::Int(i64::from(*i)),
        AMQPValue::LongLongInt(i) => Value::Int(*i),
        AMQPValue::Float(f) => Value::Float(f64::from(*f)),
        AMQPValue::Double(f) => Value::Float(*f),
        AMQPValue::DecimalValue(d) => {
            Value::Float(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => Value::String(text.to_owned()),
            Err(_) => Value::Bytes(s.as_bytes().to_vec()),
        },
        AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) if depth >= MAX_HEADER_DEPTH => {
            *cut = true;
            Value::String(format!(
                "(nested deeper than {MAX_HEADER_DEPTH} levels: left out by kombu-rs)"
            ))
        }
        AMQPValue::FieldArray(items) => Value::List(
            items
                .as_slice()
                .iter()
                .map(|v| from_amqp_at(v, depth + 1, cut))
                .collect(),
        ),
        AMQPValue::Timestamp(t) => Value::Int(i64::try_from(*t).unwrap_or(i64::MAX)),
        AMQPValue::FieldTable(t) => Value::Map(table_at(t, depth + 1, cut)),
        AMQPValue::ByteArray(b) => Value::Bytes(b.as_slice().to_vec()),
        AMQPValue::Void => Value::Null,
    }
}

fn table_at(table: &FieldTable, depth: usize, cut: &mut bool) -> Headers {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), from_amqp_at(v, depth, cut)))
        .collect()
}

/// Headers as a field table.
pub(crate) fn to_table(headers: &Headers) -> FieldTable {
    let map: BTreeMap<ShortString, AMQPValue> = headers
        .iter()
        .map(|(k, v)| (ShortString::from(k.as_str()), to_amqp(v)))
        .collect();
    FieldTable::from(map)
}

/// A field table as headers (nesting past [`MAX_HEADER_DEPTH`] left out).
pub(crate) fn from_table(table: &FieldTable) -> Headers {
    table_at(table, 0, &mut false)
}

/// The basic properties kombu's `prepare_message` writes for `message`: content type and
/// encoding, headers (with `compression`), delivery mode (2 unless transient), priority,
/// expiration in milliseconds as a decimal string, and the pass-through properties.
pub(crate) fn to_properties(message: &Message) -> BasicProperties {
    let p = &message.properties;
    let mut props =
        BasicProperties::default().with_delivery_mode(p.delivery_mode.unwrap_or_default().as_u8());
    if let Some(ct) = &message.content_type {
        props = props.with_content_type(ShortString::from(ct.as_ref()));
    }
    if let Some(ce) = &message.content_encoding {
        props = props.with_content_encoding(ShortString::from(ce.as_ref()));
    }
    if !message.headers.is_empty() {
        props = props.with_headers(to_table(&message.headers));
    }
    if let Some(priority) = p.priority {
        props = props.with_priority(priority);
    }
    if let Some(v) = &p.correlation_id {
        props = props.with_correlation_id(ShortString::from(v.as_str()));
    }
    if let Some(v) = &p.reply_to {
        props = props.with_reply_to(ShortString::from(v.as_str()));
    }
    if let Some(ttl) = p.expiration {
        props = props.with_expiration(ShortString::from(ttl.as_millis().to_string()));
    }
    if let Some(v) = &p.message_id {
        props = props.with_message_id(ShortString::from(v.as_str()));
    }
    if let Some(v) = p.timestamp {
        props = props.with_timestamp(v);
    }
    if let Some(v) = &p.kind {
        props = props.with_type(ShortString::from(v.as_str()));
    }
    if let Some(v) = &p.user_id {
        props = props.with_user_id(ShortString::from(v.as_str()));
    }
    if let Some(v) = &p.app_id {
        props = props.with_app_id(ShortString::from(v.as_str()));
    }
    props
}

fn short(s: &Option<ShortString>) -> Option<String> {
    s.as_ref().map(|s| s.as_str().to_owned())
}

/// The message a delivery carries: `body` and what its properties say.
pub(crate) fn to_message(body: Vec<u8>, props: &BasicProperties) -> Message {
    to_message_cut(body, props).0
}

/// [`to_message`], and whether the headers nested deeper than [`MAX_HEADER_DEPTH`] (then the
/// properties must not be dropped on a small stack: see [`drop_deep`]).
pub(crate) fn to_message_cut(body: Vec<u8>, props: &BasicProperties) -> (Message, bool) {
    let expiration = props
        .expiration()
        .as_ref()
        .and_then(|e| e.as_str().trim().parse::<u64>().ok())
        .map(Duration::from_millis);
    // Field by field: the core types are non-exhaustive, so not built literally here.
    let mut properties = Properties::default();
    properties.delivery_mode = props.delivery_mode().map(DeliveryMode::from_u8);
    properties.priority = *props.priority();
    properties.correlation_id = short(props.correlation_id());
    properties.reply_to = short(props.reply_to());
    properties.expiration = expiration;
    properties.message_id = short(props.message_id());
    properties.timestamp = *props.timestamp();
    properties.kind = short(props.kind());
    properties.user_id = short(props.user_id());
    properties.app_id = short(props.app_id());
    let mut message = Message::new(Bytes::from(body)).properties(properties);
    message.content_type = props
        .content_type()
        .as_ref()
        .map(|s| kombu_core::serializers::known(s.as_str()));
    message.content_encoding = props
        .content_encoding()
        .as_ref()
        .map(|s| kombu_core::serializers::known(s.as_str()));
    let mut cut = false;
    message.headers = props
        .headers()
        .as_ref()
        .map(|t| table_at(t, 0, &mut cut))
        .unwrap_or_default();
    (message, cut)
}

/// Drops properties whose headers nest deeper than [`MAX_HEADER_DEPTH`] on a thread of its
/// own with a large stack: dropping nested tables recurses once per level, and a frame can
/// hold thousands. If no thread can be started the properties are leaked (at most a frame's
/// worth of memory) rather than risk the stack.
pub(crate) fn drop_deep(props: BasicProperties) {
    // ManuallyDrop: when the thread cannot start, the closure (and the properties in it) is
    // dropped here without running the properties' drop.
    let held = std::mem::ManuallyDrop::new(props);
    let spawned = std::thread::Builder::new()
        .name("kombu-amqp-drop".to_owned())
        .stack_size(DROP_STACK)
        .spawn(move || drop(std::mem::ManuallyDrop::into_inner(held)));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start a thread to drop deeply nested headers; leaked");
    }
}

/// Stack of [`drop_deep`]'s thread: ample for the deepest nesting a 128 KiB frame can hold.
const DROP_STACK: usize = 256 << 20;

/// A short string from text that may be too long for one (255 bytes): an error naming `what`.
pub(crate) fn short_string(what: &str, text: &str) -> kombu_core::Result<ShortString> {
    if text.len() > 255 {
        return Err(kombu_core::Error::config(format!(
            "{what} {:?}... is {} bytes long; AMQP allows at most 255",
            text.chars().take(40).collect::<String>(),
            text.len()
        )));
    }
    Ok(ShortString::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_nested_past_the_limit_are_cut_and_said_so() {
        let mut table = FieldTable::default();
        for _ in 0..200 {
            let mut outer = FieldTable::default();
            outer.insert("a".into(), AMQPValue::FieldTable(table));
            table = outer;
        }
        let props = BasicProperties::default().with_headers(table);
        let (message, cut) = to_message_cut(Vec::new(), &props);
        assert!(cut);
        let mut level = &message.headers;
        let mut depth = 0;
        while let Some(Value::Map(inner)) = level.get("a") {
            level = inner;
            depth += 1;
        }
        assert_eq!(depth, MAX_HEADER_DEPTH);
        assert!(
            matches!(level.get("a"), Some(Value::String(s)) if s.contains("left out")),
            "{level:?}"
        );
        drop_deep(props);
        let shallow = BasicProperties::default().with_headers(FieldTable::default());
        assert!(!to_message_cut(Vec::new(), &shallow).1);
    }

    #[test]
    fn values_round_trip_as_py_amqp_writes_them() {
        let nested: Headers = [("a".to_owned(), Value::Int(1))].into_iter().collect();
        for v in [
            Value::Null,
            Value::Bool(true),
            Value::Int(-5),
            Value::Int(i64::MAX),
            Value::Float(1.5),
            Value::from("text"),
            Value::Bytes(vec![0, 255]),
            Value::Bytes(b"abc".to_vec()),
            Value::List(vec![Value::Int(1), Value::from("x")]),
            Value::Map(nested),
        ] {
            assert_eq!(from_amqp(&to_amqp(&v)), v);
        }
        assert!(matches!(to_amqp(&Value::Int(7)), AMQPValue::LongInt(7)));
        assert!(matches!(
            to_amqp(&Value::Int(1 << 40)),
            AMQPValue::LongLongInt(_)
        ));
    }

    #[test]
    fn properties_follow_kombu() {
        let mut m = Message::new(&b"x"[..]);
        m.content_type = Some("application/json".into());
        m.properties.expiration = Some(Duration::from_secs(30));
        let p = to_properties(&m);
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(p.expiration().as_ref().map(|s| s.as_str()), Some("30000"));
        let back = to_message(b"x".to_vec(), &p);
        assert_eq!(back.properties.expiration, Some(Duration::from_secs(30)));
        assert_eq!(back.content_type.as_deref(), Some("application/json"));
    }
}
