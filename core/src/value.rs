//! Header values: a map of typed values, like an AMQP field table.
//!
//! Headers travel as AMQP field tables on AMQP and as JSON objects inside the envelope of virtual
//! transports. [`Value`] covers what both can carry. Byte strings have no JSON form; in JSON they
//! are written with kombu's type tag (`{"__type__": "base64", "__value__": "..."}`), which Python
//! kombu decodes back to `bytes`.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Message headers: string keys to [`Value`]s, in key order.
pub type Headers = BTreeMap<String, Value>;

/// One header value.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    /// No value (JSON `null`, AMQP void).
    #[default]
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A UTF-8 string.
    String(String),
    /// A byte string.
    Bytes(Vec<u8>),
    /// A list of values.
    List(Vec<Value>),
    /// A nested table.
    Map(Headers),
}

impl Value {
    /// The string inside, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The integer inside, if this is an integer.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The boolean inside, if this is a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// Converts a JSON value (a header as found in a virtual envelope).
    pub fn from_json(v: serde_json::Value) -> Value {
        match serde_json::from_value(v) {
            Ok(value) => value,
            // Value accepts every JSON value; this arm is unreachable in practice.
            Err(_) => Value::Null,
        }
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self { Value::Int(i64::from(v)) }
        }
    )*};
}
from_int!(i8, i16, i32, i64, u8, u16, u32);

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::String(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::String(v)
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Bytes(v)
    }
}
impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Self {
        Value::List(v)
    }
}
impl From<Headers> for Value {
    fn from(v: Headers) -> Self {
        Value::Map(v)
    }
}

const TYPE_KEY: &str = "__type__";
const VALUE_KEY: &str = "__value__";

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(f) => s.serialize_f64(*f),
            Value::String(v) => s.serialize_str(v),
            Value::Bytes(b) => {
                // kombu's JSON tags bytes: "bytes" when they are UTF-8, "base64" otherwise.
                let mut m = s.serialize_map(Some(2))?;
                match std::str::from_utf8(b) {
                    Ok(text) => {
                        m.serialize_entry(TYPE_KEY, "bytes")?;
                        m.serialize_entry(VALUE_KEY, text)?;
                    }
                    Err(_) => {
                        m.serialize_entry(TYPE_KEY, "base64")?;
                        m.serialize_entry(
                            VALUE_KEY,
                            &base64::engine::general_purpose::STANDARD.encode(b),
                        )?;
                    }
                }
                m.end()
            }
            Value::List(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Map(map) => {
                let mut m = s.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a header value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        match i64::try_from(v) {
            Ok(i) => Ok(Value::Int(i)),
            // Too large for i64: keep it as a float rather than fail the whole message.
            Err(_) => Ok(Value::Float(v as f64)),
        }
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bytes(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Headers::new();
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            out.insert(k, v);
        }
        if out.len() == 2
            && let (Some(Value::String(tag)), Some(Value::String(inner))) =
                (out.get(TYPE_KEY), out.get(VALUE_KEY))
        {
            match tag.as_str() {
                "bytes" => return Ok(Value::Bytes(inner.clone().into_bytes())),
                "base64" => {
                    return base64::engine::general_purpose::STANDARD
                        .decode(inner)
                        .map(Value::Bytes)
                        .map_err(|e| de::Error::custom(format!("bad base64 header: {e}")));
                }
                _ => {}
            }
        }
        Ok(Value::Map(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_including_bytes() {
        let mut h = Headers::new();
        h.insert("s".into(), "é".into());
        h.insert("i".into(), 7i32.into());
        h.insert("b".into(), Value::Bytes(vec![0xff, 0]));
        h.insert("t".into(), Value::Bytes(b"abc".to_vec()));
        h.insert(
            "l".into(),
            vec![Value::Null, true.into(), 1.5.into()].into(),
        );
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.contains(r#""b":{"__type__":"base64","__value__":"/wA="}"#));
        assert!(json.contains(r#""t":{"__type__":"bytes","__value__":"abc"}"#));
        let back: Headers = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn large_unsigned_becomes_float() {
        let v: Value = serde_json::from_str("18446744073709551615").unwrap();
        assert_eq!(v, Value::Float(18446744073709551615.0));
    }
}
