//! The message model: body, content type and encoding, headers, properties, delivery info, and
//! the [`Envelope`] a transport keeps a message in.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;

use crate::value::{Headers, Value};

/// Whether the broker should keep a message across its own restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeliveryMode {
    /// Kept in memory only (AMQP delivery mode 1).
    Transient,
    /// Written to disk by brokers that persist (AMQP delivery mode 2). kombu's default.
    #[default]
    Persistent,
}

impl DeliveryMode {
    /// The AMQP number: 1 transient, 2 persistent.
    pub fn as_u8(self) -> u8 {
        match self {
            DeliveryMode::Transient => 1,
            DeliveryMode::Persistent => 2,
        }
    }

    /// From the AMQP number; anything but 1 is persistent, as kombu reads it.
    pub fn from_u8(n: u8) -> Self {
        if n == 1 {
            DeliveryMode::Transient
        } else {
            DeliveryMode::Persistent
        }
    }
}

/// Message properties, as in AMQP 0-9-1 basic properties (and kombu's envelope `properties`).
///
/// Built from [`Properties::default`] (all unset) with a builder method per property; the
/// struct may gain fields, so it is not built literally outside this crate:
///
/// ```
/// use std::time::Duration;
/// use kombu_core::{DeliveryMode, Properties};
///
/// let p = Properties::default()
///     .priority(5)
///     .correlation_id("req-1")
///     .reply_to("replies")
///     .expiration(Duration::from_secs(30))
///     .delivery_mode(DeliveryMode::Transient);
/// assert_eq!(p.priority, Some(5));
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Properties {
    /// Persistent or transient; `None` means the transport default (persistent).
    pub delivery_mode: Option<DeliveryMode>,
    /// Priority, 0 (lowest) to 255; brokers clamp it to the queue's maximum.
    pub priority: Option<u8>,
    /// Correlates a reply with its request.
    pub correlation_id: Option<String>,
    /// The queue a reply should be sent to.
    pub reply_to: Option<String>,
    /// Per-message time to live; the message is dropped (or dead-lettered) when it passes.
    /// On the wire it is milliseconds as a decimal string, as AMQP and kombu write it.
    pub expiration: Option<Duration>,
    /// Application message id.
    pub message_id: Option<String>,
    /// Seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// Application message type name (AMQP `type`).
    pub kind: Option<String>,
    /// Id of the publishing user (AMQP `user_id`).
    pub user_id: Option<String>,
    /// Id of the publishing application.
    pub app_id: Option<String>,
}

impl Properties {
    /// Sets persistent or transient.
    #[must_use]
    pub fn delivery_mode(mut self, mode: DeliveryMode) -> Self {
        self.delivery_mode = Some(mode);
        self
    }

    /// Sets the priority, 0 (lowest) to 255.
    #[must_use]
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Sets the id that correlates a reply with its request.
    #[must_use]
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the queue a reply should be sent to.
    #[must_use]
    pub fn reply_to(mut self, queue: impl Into<String>) -> Self {
        self.reply_to = Some(queue.into());
        self
    }

    /// Sets the per-message time to live.
    #[must_use]
    pub fn expiration(mut self, ttl: Duration) -> Self {
        self.expiration = Some(ttl);
        self
    }

    /// Sets the application message id.
    #[must_use]
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Sets the timestamp, in seconds since the Unix epoch.
    #[must_use]
    pub fn timestamp(mut self, seconds: u64) -> Self {
        self.timestamp = Some(seconds);
        self
    }

    /// Sets the application message type name (AMQP `type`).
    #[must_use]
    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }

    /// Sets the id of the publishing user (AMQP `user_id`).
    #[must_use]
    pub fn user_id(mut self, id: impl Into<String>) -> Self {
        self.user_id = Some(id.into());
        self
    }

    /// Sets the id of the publishing application.
    #[must_use]
    pub fn app_id(mut self, id: impl Into<String>) -> Self {
        self.app_id = Some(id.into());
        self
    }
}

/// One message: the body and everything that describes it.
///
/// `content_type` and `content_encoding` describe the serialized body before compression; when the
/// body is compressed, the `compression` header names the compression's content type (kombu's
/// convention, so Python reads the same bytes).
///
/// Built with [`Message::new`] and builder methods (the struct may gain fields, so it is not
/// built literally outside this crate); a [`Producer`](crate::Producer) builds its messages
/// itself:
///
/// ```
/// use kombu_core::{Message, Properties};
///
/// let m = Message::new(r#"{"a": 1}"#)
///     .content_type("application/json")
///     .content_encoding("utf-8")
///     .header("attempt", 1)
///     .properties(Properties::default().priority(3));
/// assert_eq!(m.content_type.as_deref(), Some("application/json"));
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    /// The (possibly compressed) serialized body.
    pub body: Bytes,
    /// MIME type of the serialized body, e.g. `application/json`. A `Cow` so the common types
    /// are static strings, not an allocation per message; `Some("text/plain".into())` and
    /// `Some(string.into())` both build one.
    pub content_type: Option<Cow<'static, str>>,
    /// Character set of the serialized body (`utf-8`, or `binary`).
    pub content_encoding: Option<Cow<'static, str>>,
    /// Application headers.
    pub headers: Headers,
    /// Properties.
    pub properties: Properties,
}

impl Message {
    /// A message with a raw body and no content type (read as `application/data`).
    pub fn new(body: impl Into<Bytes>) -> Self {
        Message {
            body: body.into(),
            ..Message::default()
        }
    }

    /// Sets the MIME type of the serialized body (`application/json`, ...).
    #[must_use]
    pub fn content_type(mut self, content_type: impl Into<Cow<'static, str>>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Sets the character set of the serialized body (`utf-8`, or `binary`).
    #[must_use]
    pub fn content_encoding(mut self, encoding: impl Into<Cow<'static, str>>) -> Self {
        self.content_encoding = Some(encoding.into());
        self
    }

    /// Replaces the application headers.
    #[must_use]
    pub fn headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Sets one application header.
    #[must_use]
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }

    /// Replaces the properties.
    #[must_use]
    pub fn properties(mut self, properties: Properties) -> Self {
        self.properties = properties;
        self
    }

    /// The compression content type from the `compression` header, if the body is compressed.
    pub fn compression(&self) -> Option<&str> {
        self.headers
            .get(COMPRESSION_HEADER)
            .and_then(|v| v.as_str())
    }
}

/// The header kombu uses to name a body's compression.
pub const COMPRESSION_HEADER: &str = "compression";

/// Where and how a received message was delivered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeliveryInfo {
    /// The exchange it was published to (`""` for the default exchange).
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// The queue it was taken from.
    pub queue: String,
    /// Whether it was delivered before and came back (requeued, restored or lease expired).
    pub redelivered: bool,
    /// Channel-scoped delivery tag.
    pub delivery_tag: u64,
    /// Tag of the consumer it was delivered to (empty for a basic get).
    pub consumer_tag: String,
}

/// A message with where it was published: what a transport keeps and a
/// [`Delivery`](crate::Delivery) reads. Virtual backends store it (serialized as kombu's JSON
/// envelope by [`virtual_transport::envelope`](crate::transport::virtual_transport::envelope)); a native
/// transport builds one per received message. Shared behind an `Arc` between the store and the
/// delivery, so taking a message copies nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The message.
    pub message: Message,
    /// Exchange it was published to.
    pub exchange: String,
    /// Routing key it was published with.
    pub routing_key: String,
    /// kombu's `delivery_tag`: a UUID4 string chosen by the publisher, which backends that keep
    /// kombu's unacked bookkeeping (Redis) key on. Empty until the envelope is first
    /// serialized: [`envelope::encode`](crate::transport::virtual_transport::envelope::encode) writes a
    /// fresh UUID4 for an empty tag, so backends that never serialize (memory) never pay for
    /// one.
    pub tag: String,
    /// Delivered before and returned (requeued, restored, lease expired).
    pub redelivered: bool,
}

impl Envelope {
    /// A freshly published message (not redelivered, no kombu tag yet).
    pub fn new(message: Message, exchange: String, routing_key: String) -> Self {
        Envelope {
            message,
            exchange,
            routing_key,
            tag: String::new(),
            redelivered: false,
        }
    }
}
