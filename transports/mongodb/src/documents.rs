//! The documents of the `messages` collection as kombu writes them, the fields kombu-rs adds
//! for leases, and receipts.
//!
//! A ready message is kombu's document: `{_id, payload, queue, priority, expire_at?}`. A
//! message taken with a lease has `queue: "kombu_rs.leased:<queue>"` instead (so Python
//! kombu's `find_one_and_delete({queue: q})` and `count_documents({queue: q})` do not see it,
//! and kombu's `queue, priority, _id` index serves the sweep for passed leases: no index of
//! kombu-rs's own) and carries `kombu_rs_taken_at` (the take time, Unix seconds as a double:
//! the visibility rule's `T`) and `kombu_rs_take` (an `ObjectId` naming this take, so a settle
//! of an older take of the same document touches nothing). A document that was returned
//! carries `kombu_rs_redelivered: true`. A delayed message has `queue:
//! "kombu_rs.delayed:<queue>"` and its due time, `kombu_rs_due` (see `delayed.rs`).

use std::sync::Arc;
use std::time::Duration;

use kombu_core::transport::virtual_transport::{Envelope, Receipt, envelope};
use kombu_core::{Error, ErrorKind, Result};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Bson, DateTime, Document, doc};

pub(crate) const PAYLOAD: &str = "payload";
pub(crate) const QUEUE: &str = "queue";
pub(crate) const PRIORITY: &str = "priority";
pub(crate) const EXPIRE_AT: &str = "expire_at";
/// What a leased document's `queue` starts with (then its queue's name).
pub(crate) const LEASED_PREFIX: &str = "kombu_rs.leased:";
/// What a delayed document's `queue` starts with (then its queue's name).
pub(crate) const DELAYED_PREFIX: &str = "kombu_rs.delayed:";
/// A delayed document's due time (a BSON date).
pub(crate) const DUE: &str = "kombu_rs_due";
pub(crate) const TAKEN_AT: &str = "kombu_rs_taken_at";
pub(crate) const TAKE: &str = "kombu_rs_take";
pub(crate) const REDELIVERED: &str = "kombu_rs_redelivered";

/// kombu's highest priority; stored inverted (`9 - p`), so an ascending sort takes the highest
/// priority first.
const MAX_PRIORITY: u8 = 9;

/// The stored `priority` of a message: kombu's `_get_message_priority(reverse=True)`.
pub(crate) fn stored_priority(env: &Envelope) -> i32 {
    i32::from(
        MAX_PRIORITY
            - env
                .message
                .properties
                .priority
                .unwrap_or(0)
                .min(MAX_PRIORITY),
    )
}

/// kombu's document for a message of `queue`; `expire_at` when it expires.
pub(crate) fn message_document(
    queue: &str,
    env: &Envelope,
    expire_at: Option<DateTime>,
) -> Result<Document> {
    let payload = String::from_utf8(envelope::encode(env))
        .map_err(|e| Error::new(ErrorKind::Codec, "envelope JSON is not UTF-8").with_source(e))?;
    let mut doc = doc! {
        PAYLOAD: payload,
        QUEUE: queue,
        PRIORITY: stored_priority(env),
    };
    if let Some(at) = expire_at {
        doc.insert(EXPIRE_AT, at);
    }
    if env.redelivered {
        doc.insert(REDELIVERED, true);
    }
    Ok(doc)
}

/// When a message expires: the earlier of its own expiration and its queue's message TTL,
/// counted from `now` (kombu's rule); `None` for one that never does.
pub(crate) fn expire_at(
    env: &Envelope,
    queue_ttl: Option<Duration>,
    now: DateTime,
) -> Option<DateTime> {
    let ttl = match (env.message.properties.expiration, queue_ttl) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }?;
    let millis = i64::try_from(ttl.as_millis()).ok()?;
    now.timestamp_millis()
        .checked_add(millis)
        .map(DateTime::from_millis)
}

/// The `queue` of `queue`'s leased documents.
pub(crate) fn leased(queue: &str) -> String {
    format!("{LEASED_PREFIX}{queue}")
}

/// The `queue` of `queue`'s delayed documents.
pub(crate) fn delayed(queue: &str) -> String {
    format!("{DELAYED_PREFIX}{queue}")
}

/// The update that returns a leased document to its queue, marked redelivered.
pub(crate) fn restore_update(queue: &str) -> Document {
    doc! {
        "$set": { QUEUE: queue, REDELIVERED: true },
        "$unset": { TAKEN_AT: "", TAKE: "" },
    }
}

/// A taken document's payload, read whatever its BSON type.
pub(crate) enum Payload {
    /// A kombu envelope.
    Envelope(Arc<Envelope>),
    /// Not one: the stored bytes (a string's, a binary's, anything else as extended JSON)
    /// and why.
    Unreadable(bytes::Bytes, String),
}

/// Reads a message document's payload: a string (kombu's) or a binary holding the envelope's
/// JSON; anything else, or one longer than `max`, is unreadable and kept byte for byte.
pub(crate) fn read_payload(doc: &Document, max: u64) -> Payload {
    let (raw, mut reason): (Vec<u8>, Option<String>) = match doc.get(PAYLOAD) {
        Some(Bson::String(text)) => (text.clone().into_bytes(), None),
        Some(Bson::Binary(binary)) => (binary.bytes.clone(), None),
        Some(other) => (
            other
                .clone()
                .into_relaxed_extjson()
                .to_string()
                .into_bytes(),
            Some(format!(
                "the payload is a BSON {:?}, not a string",
                other.element_type()
            )),
        ),
        None => (
            Bson::Document(doc.clone())
                .into_relaxed_extjson()
                .to_string()
                .into_bytes(),
            Some("the document has no payload".to_owned()),
        ),
    };
    if reason.is_none() && raw.len() as u64 > max {
        reason = Some(format!(
            "the payload is {} bytes, over max_payload_size ({max})",
            raw.len()
        ));
    }
    if let Some(reason) = reason {
        return Payload::Unreadable(raw.into(), reason);
    }
    match envelope::decode(&raw) {
        Ok(mut env) => {
            env.redelivered |= doc.get_bool(REDELIVERED).unwrap_or(false);
            Payload::Envelope(Arc::new(env))
        }
        Err(e) => Payload::Unreadable(raw.into(), e.to_string()),
    }
}

/// The receipt of a leased document: the take's id and the document's `_id` (any BSON value:
/// a bare client may have written a string or a number), as canonical extended JSON.
pub(crate) fn receipt(id: &Bson, take: ObjectId) -> Receipt {
    Receipt::Key(format!(
        "{}:{}",
        take.to_hex(),
        id.clone().into_canonical_extjson()
    ))
}

/// The document and the take a receipt names.
pub(crate) fn receipt_ids(receipt: &Receipt) -> Result<(Bson, ObjectId)> {
    let bad = || Error::new(ErrorKind::Settlement, "not a mongodb receipt");
    let Receipt::Key(key) = receipt else {
        return Err(bad());
    };
    let (take, id) = key.split_once(':').ok_or_else(bad)?;
    let id: serde_json::Value = serde_json::from_str(id).map_err(|_| bad())?;
    Ok((
        Bson::try_from(id).map_err(|_| bad())?,
        ObjectId::parse_str(take).map_err(|_| bad())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kombu_core::Message;

    fn env(priority: Option<u8>) -> Result<Envelope> {
        let mut message = Message::new("x");
        message.properties.priority = priority;
        Ok(Envelope::new(message, String::new(), "q".into()))
    }

    #[test]
    fn priorities_are_stored_inverted_and_clamped_as_kombu_does() -> Result<()> {
        assert_eq!(stored_priority(&env(None)?), 9);
        assert_eq!(stored_priority(&env(Some(0))?), 9);
        assert_eq!(stored_priority(&env(Some(9))?), 0);
        assert_eq!(stored_priority(&env(Some(200))?), 0);
        assert_eq!(stored_priority(&env(Some(3))?), 6);
        Ok(())
    }

    #[test]
    fn receipts_round_trip_and_refuse_others() -> Result<()> {
        let take = ObjectId::new();
        for id in [
            Bson::ObjectId(ObjectId::new()),
            Bson::String("a:b".into()),
            Bson::Int32(7),
            Bson::Int64(7),
            Bson::Double(1.5),
            Bson::Document(doc! { "k": [1, "x"] }),
        ] {
            assert_eq!(receipt_ids(&receipt(&id, take))?, (id, take));
        }
        assert!(receipt_ids(&Receipt::Id(1)).is_err());
        assert!(receipt_ids(&Receipt::Key("nope".into())).is_err());
        Ok(())
    }

    #[test]
    fn payloads_of_any_type_are_read_or_kept_as_unreadable() -> Result<()> {
        let good = message_document("q", &env(Some(5))?, None)?;
        assert!(matches!(read_payload(&good, 1 << 20), Payload::Envelope(_)));
        assert!(matches!(
            read_payload(&good, 10),
            Payload::Unreadable(_, reason) if reason.contains("max_payload_size")
        ));
        let number = doc! { PAYLOAD: 42, QUEUE: "q" };
        assert!(matches!(
            read_payload(&number, 1 << 20),
            Payload::Unreadable(raw, _) if &raw[..] == b"42"
        ));
        let text = doc! { PAYLOAD: "not json", QUEUE: "q" };
        assert!(matches!(
            read_payload(&text, 1 << 20),
            Payload::Unreadable(raw, _) if &raw[..] == b"not json"
        ));
        let missing = doc! { QUEUE: "q" };
        assert!(matches!(
            read_payload(&missing, 1 << 20),
            Payload::Unreadable(_, reason) if reason.contains("no payload")
        ));
        Ok(())
    }

    #[test]
    fn the_earlier_expiry_wins() -> Result<()> {
        let now = DateTime::from_millis(1_000_000);
        let mut e = env(None)?;
        assert_eq!(expire_at(&e, None, now), None);
        assert_eq!(
            expire_at(&e, Some(Duration::from_secs(5)), now),
            Some(DateTime::from_millis(1_005_000))
        );
        e.message.properties.expiration = Some(Duration::from_secs(2));
        assert_eq!(
            expire_at(&e, Some(Duration::from_secs(5)), now),
            Some(DateTime::from_millis(1_002_000))
        );
        Ok(())
    }
}
