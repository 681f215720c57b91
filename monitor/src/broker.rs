//! The broker page's data: per queue what the transport can tell
//! ([`Connection::queue_stats`](kombu_core::Connection::queue_stats)), the age of its oldest
//! message, its dead-letter queue, and its messages read without taking them
//! ([`Connection::peek`](kombu_core::Connection::peek)).
//!
//! The age of the oldest message is the store's own record where it keeps one (MongoDB: the
//! document's `ObjectId`). Elsewhere, on a transport that can peek (Redis, SQLite), it is how
//! long this monitor has seen the same message at the head of the queue: a lower bound, which
//! grows while the queue does not move (what autoscaling wants to know), and is reported as
//! `observed`. On AMQP 0-9-1 neither is possible; there RabbitMQ's management API
//! ([`management`](crate::management)) adds unacked messages, message rates and the head
//! message's `timestamp` property where it has one.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use kombu_core::dead_letter::dlq_name;
use kombu_core::transport::{Envelope, QueueStats};
use kombu_core::{Connection, ErrorKind, Message, Result, Value};
use parking_lot::Mutex;
use serde_json::{Map, Value as Json, json};

use crate::management::{ManagedQueue, Management};

/// Bodies larger than this are not shown (their size is).
const MAX_BODY: usize = 64 * 1024;

/// How the age of a queue's oldest message is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AgeSource {
    /// The store recorded when the message was stored.
    Store,
    /// The monitor has seen the message at the head of the queue this long (a lower bound).
    Observed,
    /// The head message's `timestamp` property, as its publisher set it (RabbitMQ's
    /// management API).
    Timestamp,
}

impl AgeSource {
    fn as_str(self) -> &'static str {
        match self {
            AgeSource::Store => "store",
            AgeSource::Observed => "observed",
            AgeSource::Timestamp => "message_timestamp",
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
    /// Messages a second, where the broker tells them (RabbitMQ's management API).
    pub(crate) rates: Rates,
    /// The workers whose `active_queues` name the queue.
    pub(crate) workers: Vec<String>,
    /// Why the queue could not be read (its figures are then zero and unknown).
    pub(crate) error: Option<String>,
}

/// Messages a second through a queue.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Rates {
    pub(crate) publish: Option<f64>,
    pub(crate) deliver: Option<f64>,
    pub(crate) ack: Option<f64>,
}

/// The broker page's queues, and what kept a source from answering.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct BrokerReport {
    pub(crate) queues: Vec<QueueReport>,
    /// Why the management API added nothing (unreachable, refused), when it did not.
    pub(crate) management_error: Option<String>,
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
            "publish_rate": self.rates.publish,
            "deliver_rate": self.rates.deliver,
            "ack_rate": self.rates.ack,
            "workers": self.workers,
            "error": self.error,
        })
    }
}

/// Why the page cannot show AMQP messages without taking them.
const AMQP_MESSAGES: &str = "AMQP 0-9-1 can only show messages by taking and requeueing them, \
                             which marks them redelivered (and counts toward a quorum queue's \
                             delivery limit)";

/// What the connection's transport cannot report, in words for the page; `management` is
/// whether RabbitMQ's management API answered.
pub(crate) fn unreported(conn: &Connection, management: bool) -> Map<String, Json> {
    let mut notes = Map::new();
    let peek = conn.capabilities().peek;
    if !peek && management {
        notes.insert(
            "oldest_message_age".into(),
            json!(
                "known only when the head message carries a timestamp property (RabbitMQ's \
                 head_message_timestamp); AMQP 0-9-1 cannot read a queue's head without taking it"
            ),
        );
        notes.insert("messages".into(), json!(AMQP_MESSAGES));
        return notes;
    }
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
            json!(
                "AMQP 0-9-1 does not report unacknowledged messages (RabbitMQ's management \
                 API does: enable the rabbitmq_management plugin or give --broker-api)"
            ),
        );
        notes.insert(
            "oldest_message_age".into(),
            json!("AMQP 0-9-1 cannot read a queue's head without taking it"),
        );
        notes.insert("messages".into(), json!(AMQP_MESSAGES));
    }
    notes.insert(
        "rates".into(),
        json!(match peek {
            true => "a store-only broker counts no publishes or deliveries",
            false => "message rates come from RabbitMQ's management API",
        }),
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

/// Reports `queues` (those that exist; each with the workers consuming it), with their
/// dead-letter queues, and what RabbitMQ's management API adds where there is one.
pub(crate) async fn report(
    conn: &Connection,
    watch: &HeadWatch,
    management: Option<&Management>,
    queues: &[(String, Vec<String>)],
) -> Result<BrokerReport> {
    let names: Vec<String> = queues.iter().map(|(name, _)| name.clone()).collect();
    watch.keep(&names);
    let peek = conn.capabilities().peek;
    let (managed, management_error) = match management {
        None => (HashMap::new(), None),
        Some(api) => match api.queues().await {
            Ok(managed) => (managed, None),
            Err(e) => {
                tracing::warn!(error = %e, "monitor: RabbitMQ's management API");
                (HashMap::new(), Some(format!("{e:#}")))
            }
        },
    };
    let mut out = Vec::with_capacity(queues.len());
    for (name, workers) in queues {
        match queue_report(conn, watch, peek, &managed, name).await {
            Ok(Some(mut report)) => {
                report.workers = workers.clone();
                out.push(report);
            }
            Ok(None) => {}
            // One queue that cannot be read does not hide the others.
            Err(e) => out.push(QueueReport {
                name: name.clone(),
                stats: QueueStats::default(),
                oldest_age: None,
                dead_letters: None,
                rates: Rates::default(),
                workers: workers.clone(),
                error: Some(format!("{e:#}")),
            }),
        }
    }
    Ok(BrokerReport {
        queues: out,
        management_error,
    })
}

/// One queue's report; `None` when it exists nowhere.
async fn queue_report(
    conn: &Connection,
    watch: &HeadWatch,
    peek: bool,
    managed: &HashMap<String, ManagedQueue>,
    name: &str,
) -> Result<Option<QueueReport>> {
    // Asked first so that a missing queue disturbs nothing: on AMQP a passive declaration of
    // a missing queue closes the channel it is made on (`queue_exists` uses one of its own),
    // which would be the connection's default channel.
    if !conn.queue_exists(name).await? {
        return Ok(None);
    }
    let mut stats = match conn.queue_stats(name).await {
        Ok(stats) => stats,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut rates = Rates::default();
    let mut stamped = None;
    if let Some(m) = managed.get(name) {
        stats.unacked = stats.unacked.or(m.unacked);
        stats.consumers = stats.consumers.or(m.consumers);
        stamped = m.head_timestamp;
        rates = Rates {
            publish: m.publish_rate,
            deliver: m.deliver_rate,
            ack: m.ack_rate,
        };
    }
    let now = SystemTime::now();
    let since = |at: SystemTime| now.duration_since(at).unwrap_or_default().as_secs_f64();
    let oldest_age = match stats.oldest {
        _ if stats.ready == 0 => {
            watch.note(name, None, now);
            None
        }
        Some(at) => Some((since(at), AgeSource::Store)),
        None if stamped.is_some() => stamped
            .and_then(|secs| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs)))
            .map(|at| (since(at), AgeSource::Timestamp)),
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
    let dead_letters = match conn.queue_exists(&dlq).await? {
        false => None,
        true => match conn.queue_size(&dlq).await {
            Ok(ready) => Some((dlq, ready)),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        },
    };
    Ok(Some(QueueReport {
        name: name.to_owned(),
        stats,
        oldest_age,
        dead_letters,
        rates,
        workers: Vec::new(),
        error: None,
    }))
}

/// A header or property value as JSON.
fn value_json(value: &Value) -> Json {
    serde_json::to_value(value).unwrap_or(Json::Null)
}

/// A message as `/api/broker/queues/<name>/messages` shows it: its routing, properties,
/// headers and body (JSON decoded, text as text, anything else or a compressed body in
/// base64; bodies over 64 KiB are left out, their size given).
pub(crate) fn message_json(
    message: &Message,
    exchange: &str,
    routing_key: &str,
    redelivered: bool,
) -> Json {
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
        "exchange": exchange,
        "routing_key": routing_key,
        "redelivered": redelivered,
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
        let shown = message_json(&message, "x", "k", false);
        assert_eq!(shown["body"], json!({"a": 1}));
        assert_eq!(shown["body_encoding"], "json");
        let mut raw = kombu_core::Message::new(vec![0u8, 255]);
        raw.content_type = Some("application/octet-stream".into());
        let shown = message_json(&raw, "", "q", true);
        assert_eq!(shown["body"], "AP8=");
        assert_eq!(shown["body_encoding"], "base64");
    }
}
