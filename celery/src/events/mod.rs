//! Celery's events (`celery-monitoring.md` §3): what workers and clients tell monitors such as
//! `celery events` and Flower, and how to hear them.
//!
//! - Events are JSON objects with a `type` (`worker-heartbeat`, `task-succeeded`, ...), the
//!   sender's `hostname`, `timestamp`, `utcoffset`, `pid` and Lamport `clock`, and the fields
//!   of their type ([`Event`]).
//! - They go to the exchange [`EVENT_EXCHANGE`] (`celeryev`): a durable topic exchange on
//!   RabbitMQ, a fanout exchange (kombu's PUB/SUB) on Redis, as Celery declares it; the
//!   routing key is the type with `-` turned into `.` (`worker.heartbeat`), and a worker's
//!   task events go in batches, a list under [`TASK_MULTI`].
//! - [`EventDispatcher`] sends them; [`EventReceiver`] is a [`Stream`](futures::Stream) of
//!   them (a single object or a batch, both read), from a queue of its own as Celery's
//!   receiver declares it.

mod receiver;

use std::fmt;
use std::sync::Arc;

use kombu_core::{Connection, DeliveryMode, Exchange, Producer, Result};
use serde_json::{Map, Value as Json};

use crate::clock::LamportClock;

pub use receiver::{EventReceiver, EventReceiverBuilder};

/// Celery's `event_exchange`.
pub const EVENT_EXCHANGE: &str = "celeryev";
/// The routing key of a batch of a worker's task events.
pub const TASK_MULTI: &str = "task.multi";
/// Most task events a worker puts in one batch (Celery's `buffer_limit`).
pub const BUFFER_LIMIT: usize = 24;
/// What a worker names its software in its heartbeats (`sw_ident`; Celery's is `py-celery`).
pub const SW_IDENT: &str = "kombu-rs";

/// An event's type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// `worker-online`: a worker started sending events.
    WorkerOnline,
    /// `worker-heartbeat`: a worker is alive (every `freq` seconds).
    WorkerHeartbeat,
    /// `worker-offline`: a worker stopped.
    WorkerOffline,
    /// `task-sent`: a client sent a task.
    TaskSent,
    /// `task-received`: a worker took a task message.
    TaskReceived,
    /// `task-started`: a worker started a task.
    TaskStarted,
    /// `task-succeeded`: a task returned.
    TaskSucceeded,
    /// `task-failed`: a task failed.
    TaskFailed,
    /// `task-retried`: a task is to be retried.
    TaskRetried,
    /// `task-revoked`: a task was revoked, expired or terminated.
    TaskRevoked,
    /// `task-rejected`: a task message was rejected.
    TaskRejected,
    /// Any other type (`worker-elect`, custom `task-*` events, ...).
    Other(String),
}

impl EventKind {
    const NAMED: [(EventKind, &'static str); 11] = [
        (EventKind::WorkerOnline, "worker-online"),
        (EventKind::WorkerHeartbeat, "worker-heartbeat"),
        (EventKind::WorkerOffline, "worker-offline"),
        (EventKind::TaskSent, "task-sent"),
        (EventKind::TaskReceived, "task-received"),
        (EventKind::TaskStarted, "task-started"),
        (EventKind::TaskSucceeded, "task-succeeded"),
        (EventKind::TaskFailed, "task-failed"),
        (EventKind::TaskRetried, "task-retried"),
        (EventKind::TaskRevoked, "task-revoked"),
        (EventKind::TaskRejected, "task-rejected"),
    ];

    /// The type as Celery writes it (`task-succeeded`).
    pub fn as_str(&self) -> &str {
        match self {
            EventKind::Other(name) => name,
            known => Self::NAMED
                .iter()
                .find(|(kind, _)| kind == known)
                .map_or("", |(_, name)| name),
        }
    }

    /// Reads a type name.
    pub fn parse(name: &str) -> EventKind {
        Self::NAMED
            .iter()
            .find(|(_, known)| *known == name)
            .map_or_else(
                || EventKind::Other(name.to_owned()),
                |(kind, _)| kind.clone(),
            )
    }

    /// Its group: the part before the first `-` (`task`, `worker`).
    pub fn group(&self) -> &str {
        let name = self.as_str();
        name.split_once('-').map_or(name, |(group, _)| group)
    }

    /// Its routing key: the type with `-` turned into `.` (`task.succeeded`).
    pub fn routing_key(&self) -> String {
        self.as_str().replace('-', ".")
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event: its type and all its fields (`type` among them), as on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    kind: EventKind,
    fields: Map<String, Json>,
}

impl Event {
    /// An event of `kind` with `fields` (its `type` field set from `kind`).
    pub fn new(kind: EventKind, fields: Map<String, Json>) -> Event {
        let mut fields = fields;
        fields.insert("type".into(), Json::String(kind.as_str().to_owned()));
        Event { kind, fields }
    }

    /// Reads an event object (it must have a string `type`).
    pub fn from_json(value: Json) -> Option<Event> {
        let Json::Object(fields) = value else {
            return None;
        };
        let kind = EventKind::parse(fields.get("type")?.as_str()?);
        Some(Event { kind, fields })
    }

    /// Its type.
    pub fn kind(&self) -> &EventKind {
        &self.kind
    }

    /// A field.
    pub fn get(&self, key: &str) -> Option<&Json> {
        self.fields.get(key)
    }

    /// All its fields, `type` included.
    pub fn fields(&self) -> &Map<String, Json> {
        &self.fields
    }

    /// Sets a field (not `type`, which [`new`](Self::new) sets).
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Json>) {
        let key = key.into();
        if key != "type" {
            self.fields.insert(key, value.into());
        }
    }

    /// The sender's node name (`celery@host`).
    pub fn hostname(&self) -> Option<&str> {
        self.get("hostname").and_then(Json::as_str)
    }

    /// When it was sent, by the sender's clock (epoch seconds).
    pub fn timestamp(&self) -> Option<f64> {
        self.get("timestamp").and_then(Json::as_f64)
    }

    /// The sender's Lamport clock.
    pub fn clock(&self) -> Option<u64> {
        self.get("clock").and_then(Json::as_u64)
    }

    /// The sender's process id.
    pub fn pid(&self) -> Option<u64> {
        self.get("pid").and_then(Json::as_u64)
    }

    /// The task id of a `task-*` event.
    pub fn uuid(&self) -> Option<&str> {
        self.get("uuid").and_then(Json::as_str)
    }

    /// What Celery's receiver does to an event it takes (`EventReceiver.event_from_message`):
    /// moves `clock` (this receiver's Lamport clock) past the event's, giving a `task-sent`
    /// (whose client's clock is not trusted) the receiver's clock less one and an event without
    /// one the next tick; shifts `timestamp` by the difference between the sender's `utcoffset`
    /// and this host's (`here`, hours west); sets `local_received` (epoch seconds now).
    ///
    /// ```
    /// use kombu_celery::clock::LamportClock;
    /// use kombu_celery::events::{Event, EventKind};
    ///
    /// let clock = LamportClock::new();
    /// let mut event = Event::new(EventKind::parse("task-started"), Default::default());
    /// event.insert("clock", 41);
    /// event.insert("timestamp", 1000.0);
    /// event.insert("utcoffset", -1.0); // one hour east of UTC
    /// event.receive(&clock, 0.0, 2000.0);
    /// assert_eq!(clock.value(), 42);
    /// assert_eq!(event.clock(), Some(41)); // the sender's stays
    /// assert_eq!(event.timestamp(), Some(4600.0)); // 1000 - (-1 - 0) × 3600
    /// ```
    pub fn receive(&mut self, clock: &LamportClock, here: f64, now: f64) {
        if self.kind.as_str() == "task-sent" {
            let value = clock.value().max(1) - 1;
            self.fields.insert("clock".into(), value.into());
            clock.adjust(value);
        } else if let Some(theirs) = self.get("clock") {
            clock.adjust(theirs.as_u64().unwrap_or(0));
        } else {
            let value = clock.forward();
            self.fields.insert("clock".into(), value.into());
        }
        if let (Some(offset), Some(timestamp)) = (
            self.get("utcoffset").and_then(Json::as_f64),
            self.timestamp(),
        ) {
            let adjusted = timestamp - (offset - here) * 3600.0;
            self.fields.insert("timestamp".into(), adjusted.into());
        }
        self.fields.insert("local_received".into(), now.into());
    }

    /// As a JSON object.
    pub fn to_json(&self) -> Json {
        Json::Object(self.fields.clone())
    }

    /// Into a JSON object.
    pub fn into_json(self) -> Json {
        Json::Object(self.fields)
    }
}

/// The event exchange as Celery declares it on `conn`'s transport: fanout on Redis, a
/// durable topic exchange elsewhere.
pub fn event_exchange(conn: &Connection) -> Exchange {
    match conn.messaging_system() {
        "redis" => Exchange::fanout(EVENT_EXCHANGE),
        _ => Exchange::topic(EVENT_EXCHANGE),
    }
    .durable(true)
}

/// The local time's offset as Celery sends it (`utcoffset`): hours west of UTC, a float
/// (Python's `time.timezone / 3600`, `time.altzone` in summer): 0.0 in UTC, -5.5 in Kolkata.
pub fn utcoffset() -> f64 {
    let east = chrono::Local::now().offset().local_minus_utc();
    // `0 - x`, not `-x`: UTC is 0.0, not -0.0.
    0.0 - f64::from(east) / 3600.0
}

/// The system's load averages over 1, 5 and 15 minutes, rounded up to two decimals as
/// Celery's heartbeat rounds them (zeros where the system does not tell).
pub fn loadavg() -> [f64; 3] {
    let mut out = [0.0; 3];
    if let Ok(text) = std::fs::read_to_string("/proc/loadavg") {
        for (slot, field) in out.iter_mut().zip(text.split_whitespace()) {
            if let Ok(value) = field.parse::<f64>() {
                *slot = (value * 100.0).ceil() / 100.0;
            }
        }
    }
    out
}

/// The wall clock as epoch seconds.
pub(crate) fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Sends events as a Celery node does: each stamped with the node's name, the time, its
/// offset, the process id and the next tick of its Lamport clock.
#[derive(Clone)]
pub struct EventDispatcher {
    producer: Producer,
    hostname: Arc<str>,
    clock: LamportClock,
}

impl fmt::Debug for EventDispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventDispatcher")
            .field("hostname", &self.hostname)
            .field("clock", &self.clock.value())
            .finish_non_exhaustive()
    }
}

impl EventDispatcher {
    /// Sends events on `conn` as node `hostname` (a client's is `gen<pid>@<host>`), its
    /// clock a new one.
    pub fn new(conn: &impl AsRef<Connection>, hostname: impl Into<String>) -> EventDispatcher {
        Self::with_clock(conn, hostname, LamportClock::new())
    }

    /// [`new`](Self::new) with the node's own Lamport clock.
    pub fn with_clock(
        conn: &impl AsRef<Connection>,
        hostname: impl Into<String>,
        clock: LamportClock,
    ) -> EventDispatcher {
        let conn = conn.as_ref();
        let producer = conn
            .producer()
            .exchange(event_exchange(conn))
            .serializer("json")
            .delivery_mode(DeliveryMode::Transient);
        EventDispatcher {
            producer,
            hostname: Arc::from(hostname.into()),
            clock,
        }
    }

    /// The node name it sends as.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Its Lamport clock.
    pub fn clock(&self) -> &LamportClock {
        &self.clock
    }

    /// An event of `kind` with `fields`, stamped now (`hostname`, `timestamp`, `utcoffset`,
    /// `pid`, `clock`) but not sent.
    pub fn event(&self, kind: EventKind, fields: Map<String, Json>) -> Event {
        let mut event = Event::new(kind, fields);
        event.insert("hostname", &*self.hostname);
        event.insert("timestamp", now());
        event.insert("utcoffset", utcoffset());
        event.insert("pid", std::process::id());
        event.insert("clock", self.clock.forward());
        event
    }

    /// Sends one event (stamped by [`event`](Self::event)) under its own routing key.
    pub async fn send(&self, event: &Event) -> Result<()> {
        self.producer
            .message(event.fields())
            .routing_key(event.kind().routing_key())
            .header("hostname", &*self.hostname)
            .send()
            .await
    }

    /// Stamps and sends an event of `kind` with `fields`.
    pub async fn emit(&self, kind: EventKind, fields: Map<String, Json>) -> Result<()> {
        let event = self.event(kind, fields);
        self.send(&event).await
    }

    /// Sends `events` in batches as a Celery worker sends its task events: lists of at most
    /// [`BUFFER_LIMIT`] under [`TASK_MULTI`], in order, in one round trip where the transport
    /// allows (confirms awaited together on AMQP).
    pub async fn send_batch(&self, events: &[Event]) -> Result<()> {
        let messages = events
            .chunks(BUFFER_LIMIT)
            .map(|chunk| {
                let list: Vec<&Map<String, Json>> = chunk.iter().map(Event::fields).collect();
                self.producer
                    .message(&list)
                    .routing_key(TASK_MULTI)
                    .header("hostname", &*self.hostname)
                    .build()
            })
            .collect::<Result<Vec<_>>>()?;
        self.producer.send_batch(messages).await
    }
}

/// Builds a field map from `(key, value)` pairs.
pub(crate) fn fields<const N: usize>(pairs: [(&str, Json); N]) -> Map<String, Json> {
    pairs
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{Event, EventKind};
    use serde_json::json;

    #[test]
    fn kinds_read_and_write_celerys_names() {
        for name in [
            "worker-heartbeat",
            "task-succeeded",
            "task-multi-x",
            "custom",
        ] {
            assert_eq!(EventKind::parse(name).as_str(), name);
        }
        assert_eq!(EventKind::TaskSent.routing_key(), "task.sent");
        assert_eq!(EventKind::WorkerOnline.group(), "worker");
        assert_eq!(EventKind::parse("task-progress").group(), "task");
        assert_eq!(
            EventKind::parse("task-revoked"),
            EventKind::TaskRevoked,
            "a known name reads as its variant"
        );
    }

    #[test]
    fn an_event_reads_from_json_with_its_type() {
        let event = Event::from_json(json!({"type": "task-started", "uuid": "u1", "clock": 3}))
            .expect("an event");
        assert_eq!(event.kind(), &EventKind::TaskStarted);
        assert_eq!(event.uuid(), Some("u1"));
        assert_eq!(event.clock(), Some(3));
        assert!(Event::from_json(json!({"uuid": "u1"})).is_none(), "no type");
        assert!(Event::from_json(json!([1])).is_none(), "not an object");
    }
}
