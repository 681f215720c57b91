//! The broker page's data: per queue what the transport can tell
//! ([`Connection::queue_stats`](kombu_core::Connection::queue_stats)), the age of its oldest
//! message, its dead-letter queue, and its messages read without taking them
//! ([`Connection::peek`](kombu_core::Connection::peek)).
//!
//! The age of the oldest message is the store's own record where it keeps one (MongoDB: the
//! document's `ObjectId`). Elsewhere, on a transport that can peek (Redis, SQLite), it is how
//! long this monitor has seen the same message at the head of the queue: a lower bound, which
//! grows while the queue does not move (what autoscaling wants to know), and is reported as
//! `observed`. On AMQP 0-9-1 neither is possible: it is reported as unknown.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use kombu_core::dead_letter::dlq_name;
use kombu_core::transport::{Envelope, QueueStats};
use kombu_core::{Connection, ErrorKind, Result, Value};
use parking_lot::Mutex;
use serde_json::{Map, Value as Json, json};

/// Bodies larger than this are not shown (their size is).
const MAX_BODY: usize = 64 * 1024;

/// How the age of a queue's oldest message is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AgeSource {
    /// The store recorded when the message was stored.
    Store,
    /// The monitor has seen the message at the head of the queue this long (a lower bound).
    Observed,
}

impl AgeSource {
    fn as_str(self) -> &'static str {
        match self {
            AgeSource::Store => "store",
            AgeSource::Observed => "observed",
        }
    }
}

/// One queue as the broker page shows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QueueReport {
    pub(crate) name: String,
    pub(crate) stats: QueueStats,
    /// Seconds, and how it is known; `None` for an empty queue or when unknown.
    pub(crate) oldest_age: Option<(f64, AgeSource)>,
    /// The queue's dead-letter queue (`<queue>.dlq`) and its ready messages, when it exists.
    pub(crate) dead_letters: Option<(String, u64)>,
}

impl QueueReport {
    /// The JSON of `/api/broker/queues`: every figure, `null` where the transport cannot
    /// tell it.
    pub(crate) fn to_json(&self) -> Json {
        let (age, source) = match self.oldest_age {
            Some((age, source)) => (json!(age), json!(source.as_str())),
            None => (Json::Null, Json::Null),
        };
        json!({
            "name": self.name,
            "ready": self.stats.ready,
            "unacked": self.stats.unacked,
            "consumers": self.stats.consumers,
            "oldest_message_age": age,
            "oldest_message_age_source": source,
            "dead_letter_queue": self.dead_letters.as_ref().map(|(name, ready)| {
                json!({"name": name, "ready": ready})
            }),
        })
    }
}

/// What the connection's transport cannot report, in words for the page.
pub(crate) fn unreported(conn: &Connection) -> Map<String, Json> {
    let mut notes = Map::new();
    let peek = conn.capabilities().peek;
    if peek {
        notes.insert(
            "consumers".into(),
            json!("a store-only broker does not know its consumers"),
        );
        notes.insert(
            "oldest_message_age".into(),
            json!(
                "where the store records no time of a put, the age is how long this monitor \
                 has seen the message at the head of the queue (a lower bound)"
            ),
        );
    } else {
        notes.insert(
            "unacked".into(),
            json!("AMQP 0-9-1 does not report unacknowledged messages"),
        );
        notes.insert(
            "oldest_message_age".into(),
            json!("AMQP 0-9-1 cannot read a queue's head without taking it"),
        );
        notes.insert(
            "messages".into(),
            json!(
                "AMQP 0-9-1 can only show messages by taking and requeueing them, which marks \
                 them redelivered"
            ),
        );
    }
    notes.insert(
        "rates".into(),
        json!("publish and deliver rates are not reported by this transport"),
    );
    notes
}

/// What identifies a message across looks: kombu's delivery tag, else its id property or
/// Celery's task id, else its body.
fn identity(envelope: &Envelope) -> String {
    if !envelope.tag.is_empty() {
        return format!("tag:{}", envelope.tag);
    }
    let message = &envelope.message;
    if let Some(id) = &message.properties.message_id {
        return format!("id:{id}");
    }
    if let Some(Value::String(id)) = message.headers.get("id") {
        return format!("task:{id}");
    }
    format!(
        "body:{}",
        base64::engine::general_purpose::STANDARD
            .encode(&message.body[..message.body.len().min(256)])
    )
}

/// The head message of each queue and since when this monitor has seen it there.
#[derive(Debug, Default)]
pub(crate) struct HeadWatch {
    heads: Mutex<HashMap<String, (String, SystemTime)>>,
}

impl HeadWatch {
    /// Notes `head` (or an empty queue) for `queue` at `now`; returns how long the same
    /// message has been seen at the head.
    fn note(&self, queue: &str, head: Option<String>, now: SystemTime) -> Option<Duration> {
        let mut heads = self.heads.lock();
        let Some(head) = head else {
            heads.remove(queue);
            return None;
        };
        let since = match heads.get(queue) {
            Some((seen, since)) if *seen == head => *since,
            _ => {
                heads.insert(queue.to_owned(), (head, now));
                now
            }
        };
        Some(now.duration_since(since).unwrap_or_default())
    }

    /// Forgets queues no longer listed.
    fn keep(&self, queues: &[String]) {
        self.heads.lock().retain(|q, _| queues.contains(q));
    }
}

/// Reports `queues` (those that exist), with their dead-letter queues.
pub(crate) async fn report(
    conn: &Connection,
    watch: &HeadWatch,
    queues: &[String],
) -> Result<Vec<QueueReport>> {
    watch.keep(queues);
    let peek = conn.capabilities().peek;
    let mut out = Vec::with_capacity(queues.len());
    for name in queues {
        let stats = match conn.queue_stats(name).await {
            Ok(stats) => stats,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let now = SystemTime::now();
        let oldest_age = match stats.oldest {
            Some(at) => Some((
                now.duration_since(at).unwrap_or_default().as_secs_f64(),
                AgeSource::Store,
            )),
            None if peek => {
                let head = match conn.peek(name, 1).await {
                    Ok(mut seen) => seen.pop().map(|e| identity(&e)),
                    Err(e) if e.kind() == ErrorKind::NotFound => None,
                    Err(e) => return Err(e),
                };
                watch
                    .note(name, head, now)
                    .map(|d| (d.as_secs_f64(), AgeSource::Observed))
            }
            None => None,
        };
        let dlq = dlq_name(name);
        let dead_letters = match conn.queue_size(&dlq).await {
            Ok(ready) => Some((dlq, ready)),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        out.push(QueueReport {
            name: name.clone(),
            stats,
            oldest_age,
            dead_letters,
        });
    }
    Ok(out)
}

/// A header or property value as JSON.
fn value_json(value: &Value) -> Json {
    serde_json::to_value(value).unwrap_or(Json::Null)
}

/// A message read without taking it, as `/api/broker/queue/<name>/messages` shows it: its
/// routing, properties, headers and body (JSON decoded, text as text, anything else or a
/// compressed body in base64; bodies over 64 KiB are left out, their size given).
pub(crate) fn message_json(envelope: &Envelope) -> Json {
    let message = &envelope.message;
    let p = &message.properties;
    let properties = json!({
        "delivery_mode": p.delivery_mode.map(kombu_core::DeliveryMode::as_u8),
        "priority": p.priority,
        "correlation_id": p.correlation_id,
        "reply_to": p.reply_to,
        "expiration": p.expiration.map(|d| d.as_millis().to_string()),
        "message_id": p.message_id,
        "timestamp": p.timestamp,
        "type": p.kind,
        "user_id": p.user_id,
        "app_id": p.app_id,
    });
    let headers: Map<String, Json> = message
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), value_json(v)))
        .collect();
    let content_type = message.content_type.as_deref().unwrap_or("");
    let compressed = message.headers.contains_key(kombu_core::COMPRESSION_HEADER);
    let body = &message.body;
    let (shown, encoding) = if body.len() > MAX_BODY {
        (Json::Null, "omitted")
    } else if !compressed
        && content_type.contains("json")
        && let Ok(decoded) = serde_json::from_slice::<Json>(body)
    {
        (decoded, "json")
    } else if !compressed
        && (content_type.starts_with("text/") || content_type.contains("json"))
        && let Ok(text) = std::str::from_utf8(body)
    {
        (json!(text), "text")
    } else {
        (
            json!(base64::engine::general_purpose::STANDARD.encode(body)),
            "base64",
        )
    };
    json!({
        "exchange": envelope.exchange,
        "routing_key": envelope.routing_key,
        "redelivered": envelope.redelivered,
        "content_type": message.content_type.as_deref(),
        "content_encoding": message.content_encoding.as_deref(),
        "properties": properties,
        "headers": headers,
        "body_size": body.len(),
        "body_encoding": encoding,
        "body": shown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_age_grows_while_the_same_message_stays_there() {
        let watch = HeadWatch::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(watch.note("q", Some("a".into()), t0), Some(Duration::ZERO));
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(
            watch.note("q", Some("a".into()), t1),
            Some(Duration::from_secs(5))
        );
        // The head moved: counted again from now.
        let t2 = t1 + Duration::from_secs(5);
        assert_eq!(watch.note("q", Some("b".into()), t2), Some(Duration::ZERO));
        assert_eq!(watch.note("q", None, t2), None);
        assert_eq!(
            watch.note("q", Some("b".into()), t2 + Duration::from_secs(1)),
            Some(Duration::ZERO),
            "an emptied queue starts again"
        );
        watch.keep(&[]);
        assert!(watch.heads.lock().is_empty());
    }

    #[test]
    fn bodies_show_as_json_text_or_base64() {
        let mut message = kombu_core::Message::new(b"{\"a\": 1}".to_vec());
        message.content_type = Some("application/json".into());
        let env = Envelope::new(message, "x".into(), "k".into());
        let shown = message_json(&env);
        assert_eq!(shown["body"], json!({"a": 1}));
        assert_eq!(shown["body_encoding"], "json");
        let mut raw = kombu_core::Message::new(vec![0u8, 255]);
        raw.content_type = Some("application/octet-stream".into());
        let shown = message_json(&Envelope::new(raw, String::new(), "q".into()));
        assert_eq!(shown["body"], "AP8=");
        assert_eq!(shown["body_encoding"], "base64");
    }
}
