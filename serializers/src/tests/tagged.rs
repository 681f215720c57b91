//! kombu JSON type tags. Expected strings were produced by CPython 3 replicating
//! `kombu/utils/json.py`: `json.dumps({"__type__": "datetime", "__value__": dt.isoformat()})`,
//! `{"hex": u.hex}` for UUIDs, `str(Decimal)`, and `bytes`/`base64` for bytes.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Error, Registry};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct All {
    #[serde(with = "crate::tagged::datetime")]
    utc: DateTime<Utc>,
    #[serde(with = "crate::tagged::datetime")]
    fixed: DateTime<FixedOffset>,
    #[serde(with = "crate::tagged::datetime")]
    neg: DateTime<FixedOffset>,
    #[serde(with = "crate::tagged::date")]
    day: NaiveDate,
    #[serde(with = "crate::tagged::time")]
    t: NaiveTime,
    #[serde(with = "crate::tagged::time")]
    tf: NaiveTime,
    #[serde(with = "crate::tagged::decimal")]
    dec: Decimal,
    #[serde(with = "crate::tagged::decimal")]
    dec2: Decimal,
    #[serde(with = "crate::tagged::uuid")]
    id: Uuid,
    #[serde(with = "crate::tagged::bytes")]
    text: Vec<u8>,
    #[serde(with = "crate::tagged::bytes")]
    utf8: Vec<u8>,
    #[serde(with = "crate::tagged::bytes")]
    bin: bytes::Bytes,
}

/// Python: `json.dumps(d)` of the same values (see the module docs).
const PY_ALL: &str = r#"{"utc": {"__type__": "datetime", "__value__": "2024-01-02T03:04:05+00:00"}, "fixed": {"__type__": "datetime", "__value__": "2024-01-02T03:04:05.123456+05:30"}, "neg": {"__type__": "datetime", "__value__": "1999-12-31T23:59:59.000500-08:00"}, "day": {"__type__": "date", "__value__": "2024-01-02"}, "t": {"__type__": "time", "__value__": "01:02:03"}, "tf": {"__type__": "time", "__value__": "01:02:03.000450"}, "dec": {"__type__": "decimal", "__value__": "1.5"}, "dec2": {"__type__": "decimal", "__value__": "-0.010"}, "id": {"__type__": "uuid", "__value__": {"hex": "12345678123456781234567812345678"}}, "text": {"__type__": "bytes", "__value__": "abc"}, "utf8": {"__type__": "bytes", "__value__": "caf\u00e9"}, "bin": {"__type__": "base64", "__value__": "/wA="}}"#;

fn all() -> All {
    let ist = FixedOffset::east_opt(5 * 3600 + 30 * 60).unwrap();
    let pst = FixedOffset::west_opt(8 * 3600).unwrap();
    All {
        utc: Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap(),
        fixed: ist
            .with_ymd_and_hms(2024, 1, 2, 3, 4, 5)
            .unwrap()
            .with_timezone(&ist)
            + chrono::Duration::microseconds(123_456),
        neg: pst.with_ymd_and_hms(1999, 12, 31, 23, 59, 59).unwrap()
            + chrono::Duration::microseconds(500),
        day: NaiveDate::from_ymd_opt(2024, 1, 2).unwrap(),
        t: NaiveTime::from_hms_opt(1, 2, 3).unwrap(),
        tf: NaiveTime::from_hms_micro_opt(1, 2, 3, 450).unwrap(),
        dec: "1.5".parse().unwrap(),
        dec2: "-0.010".parse().unwrap(),
        id: Uuid::parse_str("12345678-1234-5678-1234-567812345678").unwrap(),
        text: b"abc".to_vec(),
        utf8: "café".as_bytes().to_vec(),
        bin: bytes::Bytes::from_static(b"\xff\x00"),
    }
}

fn decode<T: serde::de::DeserializeOwned>(json: &str) -> crate::Result<T> {
    Registry::default().decode(
        json.as_bytes(),
        Some("application/json"),
        Some("utf-8"),
        None,
    )
}

#[test]
fn encodes_exactly_as_python() {
    let encoded = Registry::default().encode(&all(), "json").unwrap();
    assert_eq!(std::str::from_utf8(&encoded.body).unwrap(), PY_ALL);
}

#[test]
fn decodes_python_output() {
    let decoded: All = decode(PY_ALL).unwrap();
    assert_eq!(decoded, all());
    // Scale is kept, as in Python's Decimal.
    assert_eq!(decoded.dec2.to_string(), "-0.010");
    assert_eq!(decoded.fixed.offset().local_minus_utc(), 5 * 3600 + 30 * 60);
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Dt {
    #[serde(with = "crate::tagged::datetime")]
    at: DateTime<Utc>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Day {
    #[serde(with = "crate::tagged::date")]
    day: NaiveDate,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Id {
    #[serde(with = "crate::tagged::uuid")]
    id: Uuid,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Blob {
    #[serde(with = "crate::tagged::bytes")]
    data: Vec<u8>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Dec {
    #[serde(with = "crate::tagged::decimal")]
    dec: Decimal,
}

#[test]
fn bare_values_are_accepted() {
    let at = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap();
    // Celery pre-formats dates as plain ISO strings.
    let d: Dt = decode(r#"{"at": "2024-01-02T03:04:05+00:00"}"#).unwrap();
    assert_eq!(d.at, at);
    let d: Dt = decode(r#"{"at": "2024-01-02T03:04:05Z"}"#).unwrap();
    assert_eq!(d.at, at);
    let d: Dt = decode(r#"{"at": "2024-01-02T05:04:05.000000+02:00"}"#).unwrap();
    assert_eq!(d.at, at);
    // A naive datetime (Python isoformat without tzinfo) is taken as UTC.
    let d: Dt = decode(r#"{"at": "2024-01-02T03:04:05"}"#).unwrap();
    assert_eq!(d.at, at);
    let d: Dt = decode(r#"{"at": "2024-01-02 03:04:05"}"#).unwrap();
    assert_eq!(d.at, at);

    let d: Day = decode(r#"{"day": "2024-01-02"}"#).unwrap();
    assert_eq!(d.day, NaiveDate::from_ymd_opt(2024, 1, 2).unwrap());

    let want = Uuid::from_u128(0x12345678_1234_5678_1234_567812345678);
    let u: Id = decode(r#"{"id": "12345678-1234-5678-1234-567812345678"}"#).unwrap();
    assert_eq!(u.id, want);
    let u: Id = decode(r#"{"id": {"__type__": "uuid", "__value__": {"hex": "12345678-1234-5678-1234-567812345678"}}}"#).unwrap();
    assert_eq!(u.id, want);

    #[derive(Debug, Deserialize)]
    struct T {
        #[serde(with = "crate::tagged::time")]
        t: NaiveTime,
    }
    let t: T = decode(r#"{"t": "01:02:03.000450"}"#).unwrap();
    assert_eq!(t.t, NaiveTime::from_hms_micro_opt(1, 2, 3, 450).unwrap());
    assert_decode_error::<T>(r#"{"t": {"__type__": "datetime", "__value__": "01:02:03"}}"#);

    let b: Blob = decode(r#"{"data": "abc"}"#).unwrap();
    assert_eq!(b.data, b"abc");

    let d: Dec = decode(r#"{"dec": "2.50"}"#).unwrap();
    assert_eq!(d.dec.to_string(), "2.50");
    let d: Dec = decode(r#"{"dec": 1.5}"#).unwrap();
    assert_eq!(d.dec.to_string(), "1.5");
    // Python's exponent notation (str(Decimal("1E-7"))).
    let d: Dec = decode(r#"{"dec": {"__type__": "decimal", "__value__": "1E-7"}}"#).unwrap();
    assert_eq!(d.dec.to_string(), "0.0000001");
}

fn assert_decode_error<T: serde::de::DeserializeOwned + std::fmt::Debug>(json: &str) {
    match decode::<T>(json) {
        Err(Error::Decode { content_type, .. }) => assert_eq!(content_type, "application/json"),
        other => panic!("expected Error::Decode for {json}, got {other:?}"),
    }
}

#[test]
fn unknown_or_mismatched_tags_are_decode_errors() {
    assert_decode_error::<Dt>(r#"{"at": {"__type__": "date", "__value__": "2024-01-02"}}"#);
    assert_decode_error::<Dt>(r#"{"at": {"__type__": "nope", "__value__": "2024-01-02"}}"#);
    assert_decode_error::<Day>(
        r#"{"day": {"__type__": "datetime", "__value__": "2024-01-02T03:04:05+00:00"}}"#,
    );
    assert_decode_error::<Id>(r#"{"id": {"__type__": "bytes", "__value__": "abc"}}"#);
    assert_decode_error::<Blob>(r#"{"data": {"__type__": "uuid", "__value__": {"hex": "00"}}}"#);
    assert_decode_error::<Dec>(r#"{"dec": {"__type__": "base64", "__value__": "/wA="}}"#);
    // Invalid values under the right tag.
    assert_decode_error::<Dt>(r#"{"at": {"__type__": "datetime", "__value__": "yesterday"}}"#);
    assert_decode_error::<Dt>(r#"{"at": {"__type__": "datetime", "__value__": 5}}"#);
    assert_decode_error::<Day>(r#"{"day": "2024-13-01"}"#);
    assert_decode_error::<Id>(r#"{"id": {"__type__": "uuid", "__value__": {"hex": "xyz"}}}"#);
    assert_decode_error::<Blob>(r#"{"data": {"__type__": "base64", "__value__": "!!"}}"#);
    assert_decode_error::<Dec>(r#"{"dec": {"__type__": "decimal", "__value__": "NaN"}}"#);
    assert_decode_error::<Dec>(r#"{"dec": [1]}"#);
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Opt {
    #[serde(with = "crate::tagged::datetime::option", default)]
    a: Option<DateTime<Utc>>,
    #[serde(with = "crate::tagged::datetime::option", default)]
    b: Option<DateTime<Utc>>,
    #[serde(with = "crate::tagged::uuid::option", default)]
    c: Option<Uuid>,
    #[serde(with = "crate::tagged::bytes::option", default)]
    d: Option<Vec<u8>>,
    #[serde(with = "crate::tagged::date::option", default)]
    e: Option<NaiveDate>,
    #[serde(with = "crate::tagged::time::option", default)]
    f: Option<NaiveTime>,
    #[serde(with = "crate::tagged::decimal::option", default)]
    g: Option<Decimal>,
}

#[test]
fn options() {
    let value = Opt {
        a: None,
        b: Some(Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap()),
        c: None,
        d: Some(b"\xff\x00".to_vec()),
        e: None,
        f: None,
        g: None,
    };
    let encoded = Registry::default().encode(&value, "json").unwrap();
    // Python: json.dumps({"a": None, "b": {"__type__": "datetime", "__value__": ...}, ...}).
    assert_eq!(
        std::str::from_utf8(&encoded.body).unwrap(),
        r#"{"a": null, "b": {"__type__": "datetime", "__value__": "2024-01-02T03:04:05+00:00"}, "c": null, "d": {"__type__": "base64", "__value__": "/wA="}, "e": null, "f": null, "g": null}"#
    );
    let decoded: Opt = decode(std::str::from_utf8(&encoded.body).unwrap()).unwrap();
    assert_eq!(decoded, value);
    // Missing fields (with `default`) and bare values.
    let decoded: Opt =
        decode(r#"{"b": "2024-01-02T03:04:05+00:00", "e": "2024-01-02", "g": "1.5"}"#).unwrap();
    assert_eq!(decoded.b, value.b);
    assert_eq!(decoded.e, NaiveDate::from_ymd_opt(2024, 1, 2));
    assert_eq!(decoded.g, Some(Decimal::new(15, 1)));
    assert_eq!(decoded.a, None);
    assert_decode_error::<Opt>(r#"{"c": {"__type__": "date", "__value__": "2024-01-02"}}"#);
}

#[test]
fn python_isoformat_details() {
    // Nanoseconds beyond the microsecond are dropped (Python has no nanoseconds); offsets with
    // seconds are written as +HH:MM:SS (Python 3.7+).
    let odd = FixedOffset::east_opt(3600 + 61).unwrap();
    let dt =
        odd.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap() + chrono::Duration::nanoseconds(999);
    assert_eq!(
        crate::tagged::datetime::isoformat(&dt),
        "2024-01-02T03:04:05+01:01:01"
    );
    // Python: datetime.fromisoformat("2024-01-02T03:04:05+01:01:01") round-trips.
    #[derive(Debug, Serialize, Deserialize)]
    struct F {
        #[serde(with = "crate::tagged::datetime")]
        at: DateTime<FixedOffset>,
    }
    let f: F = decode(r#"{"at": "2024-01-02T03:04:05+01:01:01"}"#).unwrap();
    assert_eq!(f.at, odd.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap());
}
