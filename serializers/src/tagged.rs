//! serde `with`-modules for kombu's JSON type tags (`kombu/utils/json.py`).
//!
//! Python kombu's JSON encoder wraps values JSON has no type for as
//! `{"__type__": <tag>, "__value__": <value>}` and unwraps them on load. Put one of these modules
//! on a field to write and read exactly that wrapper:
//!
//! | module | Rust type | tag | `__value__` |
//! |---|---|---|---|
//! | [`datetime`] | `chrono::DateTime<Utc>` / `DateTime<FixedOffset>` | `datetime` | `"2024-01-02T03:04:05+00:00"` (`isoformat()`) |
//! | [`date`] | `chrono::NaiveDate` | `date` | `"2024-01-02"` |
//! | [`time`] | `chrono::NaiveTime` | `time` | `"01:02:03"`, `"01:02:03.000450"` |
//! | [`decimal`] | `rust_decimal::Decimal` | `decimal` | `"1.5"` |
//! | [`uuid`] | `uuid::Uuid` | `uuid` | `{"hex": "<32 hex digits>"}` |
//! | [`bytes`] | `Vec<u8>`, `bytes::Bytes`, … | `bytes` (valid UTF-8) or `base64` | the text, or standard base64 |
//!
//! Every module has an `option` submodule for `Option<T>` fields (`None` is `null`; add
//! `#[serde(default)]` to also accept a missing field).
//!
//! Reading is lenient: the bare value is accepted too (an ISO string for dates and times, as
//! Celery pre-formats them; a hex or hyphenated string for a UUID; a string or number for a
//! decimal; a string for bytes). A wrapper with another `__type__`, or a value that does not
//! parse, is a deserialization error (through [`Registry::decode`](crate::Registry::decode), an
//! [`Error::Decode`](crate::Error::Decode)).
//!
//! The chrono, uuid and decimal modules need the default-on cargo features `chrono`, `uuid` and
//! `decimal`.
//!
//! ```
//! # #[cfg(all(feature = "chrono", feature = "uuid"))] {
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use chrono::{DateTime, Utc};
//! use kombu_serializers::Registry;
//!
//! #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
//! struct Event {
//!     #[serde(with = "kombu_serializers::tagged::datetime")]
//!     at: DateTime<Utc>,
//!     #[serde(with = "kombu_serializers::tagged::uuid")]
//!     id: uuid::Uuid,
//! }
//!
//! let event = Event {
//!     at: "2024-01-02T03:04:05Z".parse::<DateTime<Utc>>()?,
//!     id: uuid::Uuid::from_u128(1),
//! };
//! let registry = Registry::default();
//! let encoded = registry.encode(&event, "json")?;
//! assert_eq!(
//!     &encoded.body[..],
//!     br#"{"at": {"__type__": "datetime", "__value__": "2024-01-02T03:04:05+00:00"}, "id": {"__type__": "uuid", "__value__": {"hex": "00000000000000000000000000000001"}}}"#
//! );
//! let decoded: Event = registry.decode(&encoded.body, Some("application/json"), None, None)?;
//! assert_eq!(decoded, event);
//! # Ok(()) }
//! # }
//! ```

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// Key holding the tag.
const TYPE_KEY: &str = "__type__";
/// Key holding the value.
const VALUE_KEY: &str = "__value__";

/// The wrapper as written: `__type__` first, as kombu's encoder builds the dict.
#[derive(Serialize)]
struct Wrapper<'a, V: ?Sized> {
    #[serde(rename = "__type__")]
    tag: &'a str,
    #[serde(rename = "__value__")]
    value: &'a V,
}

fn serialize_wrapped<S: Serializer, V: Serialize + ?Sized>(
    serializer: S,
    tag: &str,
    value: &V,
) -> Result<S::Ok, S::Error> {
    Wrapper { tag, value }.serialize(serializer)
}

/// Splits a decoded value into `(Some(tag), inner)` for a kombu wrapper (an object whose keys are
/// exactly `__type__` and `__value__`, the tag a string) or `(None, value)` for a bare value.
fn unwrap(value: Value) -> (Option<String>, Value) {
    match value {
        Value::Object(mut map)
            if map.len() == 2
                && map.contains_key(VALUE_KEY)
                && map.get(TYPE_KEY).is_some_and(Value::is_string) =>
        {
            let inner = map.remove(VALUE_KEY).unwrap_or(Value::Null);
            match map.remove(TYPE_KEY) {
                Some(Value::String(tag)) => (Some(tag), inner),
                _ => (None, inner),
            }
        }
        other => (None, other),
    }
}

/// Checks a wrapper's tag against the ones a module accepts.
fn check_tag<E: serde::de::Error>(found: Option<&str>, accepted: &[&str]) -> Result<(), E> {
    match found {
        Some(tag) if !accepted.contains(&tag) => Err(E::custom(format_args!(
            "kombu JSON tag {tag:?} where {} was expected",
            accepted.join(" or ")
        ))),
        _ => Ok(()),
    }
}

/// The value as a string, or an error naming what was expected.
fn expect_str<E: serde::de::Error>(value: Value, what: &str) -> Result<String, E> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(E::custom(format_args!("expected {what}, got {other}"))),
    }
}

/// Reads a required tagged value: `parse(tag, inner)` after checking the tag.
fn deserialize_with<'de, D, T>(
    deserializer: D,
    accepted: &[&str],
    parse: impl FnOnce(Option<&str>, Value) -> Result<T, D::Error>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    let (tag, inner) = unwrap(Value::deserialize(deserializer)?);
    check_tag::<D::Error>(tag.as_deref(), accepted)?;
    parse(tag.as_deref(), inner)
}

/// Reads an optional tagged value (`null` is `None`).
fn deserialize_option_with<'de, D, T>(
    deserializer: D,
    accepted: &[&str],
    parse: impl FnOnce(Option<&str>, Value) -> Result<T, D::Error>,
) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
{
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(None),
        Some(value) => {
            let (tag, inner) = unwrap(value);
            check_tag::<D::Error>(tag.as_deref(), accepted)?;
            parse(tag.as_deref(), inner).map(Some)
        }
    }
}

/// `datetime`: `chrono::DateTime<Utc>` or `DateTime<FixedOffset>` as
/// `{"__type__": "datetime", "__value__": "2024-01-02T03:04:05.123456+05:30"}`.
///
/// Written as Python's `datetime.isoformat()`: microseconds only when non-zero (nanoseconds
/// beyond the microsecond are dropped, as Python cannot hold them), offset as `+HH:MM`
/// (`+HH:MM:SS` when it has seconds). Read from the wrapper or a bare string with
/// `T` or a space between date and time, any number of fraction digits, and an offset `Z`,
/// `+HH:MM` or `+HH:MM:SS`; a string without an offset (a naive Python datetime) is taken as UTC.
#[cfg(feature = "chrono")]
pub mod datetime {
    use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Timelike, Utc};
    use serde::{Deserializer, Serializer};
    use serde_json::Value;

    const TAGS: &[&str] = &["datetime"];

    /// Time zones a tagged datetime can be read into.
    pub trait FromFixedOffset: TimeZone + Sized {
        /// Converts a parsed datetime into this time zone.
        fn from_fixed_offset(dt: DateTime<FixedOffset>) -> DateTime<Self>;
    }

    impl FromFixedOffset for Utc {
        fn from_fixed_offset(dt: DateTime<FixedOffset>) -> DateTime<Self> {
            dt.with_timezone(&Utc)
        }
    }

    impl FromFixedOffset for FixedOffset {
        fn from_fixed_offset(dt: DateTime<FixedOffset>) -> DateTime<Self> {
            dt
        }
    }

    /// Python's `datetime.isoformat()` for an aware datetime.
    pub(crate) fn isoformat<Tz: TimeZone>(dt: &DateTime<Tz>) -> String {
        let dt = dt.fixed_offset();
        let mut out = dt.format("%Y-%m-%dT%H:%M:%S").to_string();
        let micros = (dt.nanosecond() % 1_000_000_000) / 1_000;
        if micros != 0 {
            out.push_str(&format!(".{micros:06}"));
        }
        let offset = dt.offset().local_minus_utc();
        let sign = if offset < 0 { '-' } else { '+' };
        let abs = offset.unsigned_abs();
        out.push_str(&format!("{sign}{:02}:{:02}", abs / 3600, (abs / 60) % 60));
        if !abs.is_multiple_of(60) {
            out.push_str(&format!(":{:02}", abs % 60));
        }
        out
    }

    fn parse_str(s: &str) -> Option<DateTime<FixedOffset>> {
        if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
            return Some(dt);
        }
        let with_t = s.replacen(' ', "T", 1);
        // Split off an offset (`Z`, `+HH:MM`, `+HH:MM:SS`) after the date part.
        let (local, offset) = match with_t.get(10..).and_then(|t| t.rfind(['+', '-', 'Z', 'z'])) {
            Some(i) => (&with_t[..10 + i], Some(parse_offset(&with_t[10 + i..])?)),
            None => (with_t.as_str(), None),
        };
        let naive = NaiveDateTime::parse_from_str(local, "%Y-%m-%dT%H:%M:%S%.f")
            .or_else(|_| NaiveDateTime::parse_from_str(local, "%Y-%m-%dT%H:%M"))
            .ok()?;
        match offset {
            Some(offset) => naive.and_local_timezone(offset).single(),
            // A naive Python datetime: taken as UTC.
            None => Some(naive.and_utc().fixed_offset()),
        }
    }

    /// `Z`, `+HH:MM`, `+HH:MM:SS` or `+HHMM` (leading sign required except for `Z`).
    fn parse_offset(s: &str) -> Option<FixedOffset> {
        if s.eq_ignore_ascii_case("z") {
            return FixedOffset::east_opt(0);
        }
        let (sign, rest) = match s.split_at_checked(1)? {
            ("+", rest) => (1, rest),
            ("-", rest) => (-1, rest),
            _ => return None,
        };
        let digits: String = rest.chars().filter(|c| *c != ':').collect();
        if !digits.bytes().all(|b| b.is_ascii_digit()) || !matches!(digits.len(), 4 | 6) {
            return None;
        }
        let num = |r: std::ops::Range<usize>| digits.get(r).and_then(|d| d.parse::<i32>().ok());
        let secs =
            num(0..2)? * 3600 + num(2..4)? * 60 + if digits.len() == 6 { num(4..6)? } else { 0 };
        FixedOffset::east_opt(sign * secs)
    }

    pub(crate) fn parse<E: serde::de::Error, Tz: FromFixedOffset>(
        _tag: Option<&str>,
        value: Value,
    ) -> Result<DateTime<Tz>, E> {
        let s = super::expect_str::<E>(value, "an ISO 8601 datetime string")?;
        parse_str(&s)
            .map(Tz::from_fixed_offset)
            .ok_or_else(|| E::custom(format_args!("invalid ISO 8601 datetime {s:?}")))
    }

    /// Writes the `datetime` wrapper.
    pub fn serialize<S: Serializer, Tz: TimeZone>(
        dt: &DateTime<Tz>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        super::serialize_wrapped(serializer, "datetime", &isoformat(dt))
    }

    /// Reads the `datetime` wrapper or a bare ISO 8601 string.
    pub fn deserialize<'de, D: Deserializer<'de>, Tz: FromFixedOffset>(
        deserializer: D,
    ) -> Result<DateTime<Tz>, D::Error> {
        super::deserialize_with(deserializer, TAGS, parse)
    }

    /// The same for `Option<DateTime<Tz>>` (`None` is `null`).
    pub mod option {
        use super::{DateTime, Deserializer, FromFixedOffset, Serializer, TAGS, TimeZone};

        /// Writes `null` or the `datetime` wrapper.
        pub fn serialize<S: Serializer, Tz: TimeZone>(
            dt: &Option<DateTime<Tz>>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match dt {
                Some(dt) => super::serialize(dt, serializer),
                None => serializer.serialize_none(),
            }
        }

        /// Reads `null`, the `datetime` wrapper or a bare ISO 8601 string.
        pub fn deserialize<'de, D: Deserializer<'de>, Tz: FromFixedOffset>(
            deserializer: D,
        ) -> Result<Option<DateTime<Tz>>, D::Error> {
            crate::tagged::deserialize_option_with(deserializer, TAGS, super::parse)
        }
    }
}

/// Defines a tagged module for a type with a string `__value__`.
macro_rules! string_module {
    (
        $(#[$meta:meta])*
        mod $name:ident, $tag:literal, $ty:ty, $what:literal,
        write: |$w:ident| $write:expr,
        read: |$r:ident| $read:expr
    ) => {
        $(#[$meta])*
        pub mod $name {
            use serde::{Deserializer, Serializer};
            use serde_json::Value;

            const TAGS: &[&str] = &[$tag];

            fn to_string($w: &$ty) -> String {
                $write
            }

            fn from_str($r: &str) -> Option<$ty> {
                $read
            }

            fn parse<E: serde::de::Error>(_tag: Option<&str>, value: Value) -> Result<$ty, E> {
                let s = super::expect_str::<E>(value, $what)?;
                from_str(&s).ok_or_else(|| E::custom(format_args!(concat!("invalid ", $what, " {:?}"), s)))
            }

            #[doc = concat!("Writes the `", $tag, "` wrapper.")]
            pub fn serialize<S: Serializer>(value: &$ty, serializer: S) -> Result<S::Ok, S::Error> {
                super::serialize_wrapped(serializer, $tag, &to_string(value))
            }

            #[doc = concat!("Reads the `", $tag, "` wrapper or a bare string.")]
            pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<$ty, D::Error> {
                super::deserialize_with(deserializer, TAGS, parse)
            }

            /// The same for an `Option` (`None` is `null`).
            pub mod option {
                use super::{Deserializer, Serializer, TAGS};

                #[doc = concat!("Writes `null` or the `", $tag, "` wrapper.")]
                pub fn serialize<S: Serializer>(
                    value: &Option<$ty>,
                    serializer: S,
                ) -> Result<S::Ok, S::Error> {
                    match value {
                        Some(value) => super::serialize(value, serializer),
                        None => serializer.serialize_none(),
                    }
                }

                #[doc = concat!("Reads `null`, the `", $tag, "` wrapper or a bare string.")]
                pub fn deserialize<'de, D: Deserializer<'de>>(
                    deserializer: D,
                ) -> Result<Option<$ty>, D::Error> {
                    crate::tagged::deserialize_option_with(deserializer, TAGS, super::parse)
                }
            }
        }
    };
}

string_module! {
    /// `date`: `chrono::NaiveDate` as `{"__type__": "date", "__value__": "2024-01-02"}`
    /// (Python's `date.isoformat()`); reads the wrapper or a bare `YYYY-MM-DD` string.
    #[cfg(feature = "chrono")]
    mod date, "date", chrono::NaiveDate, "an ISO 8601 date string",
    write: |d| d.format("%Y-%m-%d").to_string(),
    read: |s| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

string_module! {
    /// `time`: `chrono::NaiveTime` as `{"__type__": "time", "__value__": "01:02:03"}` (Python's
    /// `time.isoformat()`: `.ffffff` microseconds only when non-zero, nanoseconds beyond them
    /// dropped); reads the wrapper or a bare `HH:MM[:SS[.f]]` string.
    #[cfg(feature = "chrono")]
    mod time, "time", chrono::NaiveTime, "an ISO 8601 time string",
    write: |t| {
        use chrono::Timelike as _;
        let mut out = t.format("%H:%M:%S").to_string();
        let micros = (t.nanosecond() % 1_000_000_000) / 1_000;
        if micros != 0 {
            out.push_str(&format!(".{micros:06}"));
        }
        out
    },
    read: |s| s.parse::<chrono::NaiveTime>().ok()
}

/// `decimal`: `rust_decimal::Decimal` as `{"__type__": "decimal", "__value__": "1.5"}`.
///
/// Written as the decimal's string with its scale (`-0.010` stays `"-0.010"`, as Python's
/// `str(Decimal)`; Python switches to exponent notation for very small or scaled values such as
/// `1E-7`, which this module never writes but reads). Reads the wrapper or a bare string or
/// number. Python's `NaN` / `Infinity` decimals cannot be represented and fail to decode.
#[cfg(feature = "decimal")]
pub mod decimal {
    use rust_decimal::Decimal;
    use serde::{Deserializer, Serializer};
    use serde_json::Value;

    const TAGS: &[&str] = &["decimal"];

    fn parse<E: serde::de::Error>(_tag: Option<&str>, value: Value) -> Result<Decimal, E> {
        let s = match value {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            other => {
                return Err(E::custom(format_args!(
                    "expected a decimal string, got {other}"
                )));
            }
        };
        s.parse::<Decimal>()
            .or_else(|_| Decimal::from_scientific(&s))
            .map_err(|e| E::custom(format_args!("invalid decimal {s:?}: {e}")))
    }

    /// Writes the `decimal` wrapper.
    pub fn serialize<S: Serializer>(value: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
        super::serialize_wrapped(serializer, "decimal", &value.to_string())
    }

    /// Reads the `decimal` wrapper, a bare string or a number.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
        super::deserialize_with(deserializer, TAGS, parse)
    }

    /// The same for `Option<Decimal>` (`None` is `null`).
    pub mod option {
        use super::{Decimal, Deserializer, Serializer, TAGS};

        /// Writes `null` or the `decimal` wrapper.
        pub fn serialize<S: Serializer>(
            value: &Option<Decimal>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(value) => super::serialize(value, serializer),
                None => serializer.serialize_none(),
            }
        }

        /// Reads `null`, the `decimal` wrapper, a bare string or a number.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Decimal>, D::Error> {
            crate::tagged::deserialize_option_with(deserializer, TAGS, super::parse)
        }
    }
}

/// `uuid`: `uuid::Uuid` as `{"__type__": "uuid", "__value__": {"hex": "<32 hex digits>"}}`.
///
/// Reads the wrapper (its `hex` in simple or hyphenated form) or a bare UUID string.
#[cfg(feature = "uuid")]
pub mod uuid {
    use serde::{Deserializer, Serializer};
    use serde_json::Value;
    use uuid::Uuid;

    const TAGS: &[&str] = &["uuid"];

    #[derive(serde::Serialize)]
    struct Hex<'a> {
        hex: &'a str,
    }

    fn parse<E: serde::de::Error>(_tag: Option<&str>, value: Value) -> Result<Uuid, E> {
        let s = match value {
            Value::String(s) => s,
            Value::Object(mut map) if map.len() == 1 => match map.remove("hex") {
                Some(Value::String(s)) => s,
                _ => return Err(E::custom("expected a UUID object {\"hex\": \"...\"}")),
            },
            other => {
                return Err(E::custom(format_args!(
                    "expected a UUID object {{\"hex\": \"...\"}} or string, got {other}"
                )));
            }
        };
        Uuid::parse_str(&s).map_err(|e| E::custom(format_args!("invalid UUID {s:?}: {e}")))
    }

    /// Writes the `uuid` wrapper.
    pub fn serialize<S: Serializer>(value: &Uuid, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buf = Uuid::encode_buffer();
        let hex = value.simple().encode_lower(&mut buf);
        super::serialize_wrapped(serializer, "uuid", &Hex { hex })
    }

    /// Reads the `uuid` wrapper or a bare UUID string.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Uuid, D::Error> {
        super::deserialize_with(deserializer, TAGS, parse)
    }

    /// The same for `Option<Uuid>` (`None` is `null`).
    pub mod option {
        use super::{Deserializer, Serializer, TAGS, Uuid};

        /// Writes `null` or the `uuid` wrapper.
        pub fn serialize<S: Serializer>(
            value: &Option<Uuid>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(value) => super::serialize(value, serializer),
                None => serializer.serialize_none(),
            }
        }

        /// Reads `null`, the `uuid` wrapper or a bare UUID string.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Uuid>, D::Error> {
            crate::tagged::deserialize_option_with(deserializer, TAGS, super::parse)
        }
    }
}

/// `bytes`: any `AsRef<[u8]>` (written) / `From<Vec<u8>>` (read) type such as `Vec<u8>` or
/// `bytes::Bytes`.
///
/// Valid UTF-8 is written as `{"__type__": "bytes", "__value__": "<text>"}`, anything else as
/// `{"__type__": "base64", "__value__": "<standard base64 with padding>"}`, as kombu does.
/// Reads either wrapper, or a bare string (its UTF-8 bytes).
pub mod bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserializer, Serializer};
    use serde_json::Value;

    const TAGS: &[&str] = &["bytes", "base64"];

    fn parse<E: serde::de::Error, T: From<Vec<u8>>>(
        tag: Option<&str>,
        value: Value,
    ) -> Result<T, E> {
        let s = super::expect_str::<E>(value, "a string")?;
        if tag == Some("base64") {
            STANDARD
                .decode(s.as_bytes())
                .map(T::from)
                .map_err(|e| E::custom(format_args!("invalid base64: {e}")))
        } else {
            Ok(T::from(s.into_bytes()))
        }
    }

    /// Writes the `bytes` wrapper (valid UTF-8) or the `base64` wrapper.
    pub fn serialize<S: Serializer, T: AsRef<[u8]> + ?Sized>(
        value: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let data = value.as_ref();
        match std::str::from_utf8(data) {
            Ok(text) => super::serialize_wrapped(serializer, "bytes", text),
            Err(_) => super::serialize_wrapped(serializer, "base64", &STANDARD.encode(data)),
        }
    }

    /// Reads the `bytes` or `base64` wrapper, or a bare string.
    pub fn deserialize<'de, D: Deserializer<'de>, T: From<Vec<u8>>>(
        deserializer: D,
    ) -> Result<T, D::Error> {
        super::deserialize_with(deserializer, TAGS, parse)
    }

    /// The same for an `Option` (`None` is `null`).
    pub mod option {
        use super::{Deserializer, Serializer, TAGS};

        /// Writes `null` or the `bytes` / `base64` wrapper.
        pub fn serialize<S: Serializer, T: AsRef<[u8]>>(
            value: &Option<T>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(value) => super::serialize(value, serializer),
                None => serializer.serialize_none(),
            }
        }

        /// Reads `null`, the `bytes` or `base64` wrapper, or a bare string.
        pub fn deserialize<'de, D: Deserializer<'de>, T: From<Vec<u8>>>(
            deserializer: D,
        ) -> Result<Option<T>, D::Error> {
            crate::tagged::deserialize_option_with(deserializer, TAGS, super::parse)
        }
    }
}
