//! Entities: exchanges, queues and bindings, described the way AMQP 0-9-1 and kombu describe them.
//!
//! ```
//! use std::time::Duration;
//! use kombu_core::{Exchange, ExchangeKind, Queue};
//!
//! let tasks = Exchange::topic("tasks");
//! let queue = Queue::new("emails")
//!     .exchange(tasks.clone())
//!     .routing_key("email.*")
//!     .max_priority(10)
//!     .message_ttl(Duration::from_secs(60))
//!     .dead_letter_exchange("dlx");
//! assert_eq!(queue.exchange.as_ref().map(|e| e.kind), Some(ExchangeKind::Topic));
//! assert_eq!(queue.bindings().count(), 1);
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::value::{Headers, Value};

/// How an exchange routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ExchangeKind {
    /// Routing key equals binding key.
    #[default]
    Direct,
    /// Binding key is a pattern of dot-separated words: `*` one word, `#` zero or more.
    Topic,
    /// Every bound queue, routing key ignored.
    Fanout,
    /// Message headers match the binding's arguments (`x-match` `all` or `any`).
    Headers,
}

impl ExchangeKind {
    /// The AMQP name (`direct`, `topic`, `fanout`, `headers`).
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Headers => "headers",
        }
    }
}

impl fmt::Display for ExchangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExchangeKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "direct" => Ok(ExchangeKind::Direct),
            "topic" => Ok(ExchangeKind::Topic),
            "fanout" => Ok(ExchangeKind::Fanout),
            "headers" => Ok(ExchangeKind::Headers),
            other => Err(Error::config(format!(
                "unknown exchange type {other:?} (expected direct, topic, fanout or headers)"
            ))),
        }
    }
}

/// An exchange. Defaults follow kombu: durable, not auto-delete.
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    /// Name; `""` is the default exchange.
    pub name: String,
    /// Routing type.
    pub kind: ExchangeKind,
    /// Survives a broker restart.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Extra declaration arguments.
    pub arguments: Headers,
}

impl Exchange {
    /// An exchange of the given kind with kombu's defaults.
    pub fn new(name: impl Into<String>, kind: ExchangeKind) -> Self {
        Exchange {
            name: name.into(),
            kind,
            durable: true,
            auto_delete: false,
            arguments: Headers::new(),
        }
    }
    /// A direct exchange.
    pub fn direct(name: impl Into<String>) -> Self {
        Exchange::new(name, ExchangeKind::Direct)
    }
    /// A topic exchange.
    pub fn topic(name: impl Into<String>) -> Self {
        Exchange::new(name, ExchangeKind::Topic)
    }
    /// A fanout exchange.
    pub fn fanout(name: impl Into<String>) -> Self {
        Exchange::new(name, ExchangeKind::Fanout)
    }
    /// A headers exchange.
    pub fn headers(name: impl Into<String>) -> Self {
        Exchange::new(name, ExchangeKind::Headers)
    }
    /// The default exchange (`""`, direct, routing key = queue name).
    pub fn default_exchange() -> Self {
        Exchange::direct("")
    }
    /// Sets durability.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }
    /// Sets auto-delete.
    pub fn auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }
    /// Adds a declaration argument.
    pub fn argument(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.arguments.insert(key.into(), value.into());
        self
    }
    /// Whether this is the default exchange.
    pub fn is_default(&self) -> bool {
        self.name.is_empty()
    }
}

/// Header matching mode of a headers-exchange binding (`x-match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderMatch {
    /// Every binding header must be present with an equal value.
    #[default]
    All,
    /// At least one binding header must be present with an equal value.
    Any,
}

/// A binding of a queue to an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// The exchange.
    pub exchange: String,
    /// Binding key (ignored by fanout and headers exchanges).
    pub routing_key: String,
    /// Binding arguments; for headers exchanges the headers to match plus `x-match`.
    pub arguments: Headers,
}

impl Binding {
    /// A binding with a routing key.
    pub fn new(exchange: impl Into<String>, routing_key: impl Into<String>) -> Self {
        Binding {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            arguments: Headers::new(),
        }
    }
    /// A headers-exchange binding: `headers` must match, `all` or `any` of them.
    pub fn headers(exchange: impl Into<String>, mode: HeaderMatch, headers: Headers) -> Self {
        let mut arguments = headers;
        let mode = match mode {
            HeaderMatch::All => "all",
            HeaderMatch::Any => "any",
        };
        arguments.insert("x-match".into(), Value::from(mode));
        Binding {
            exchange: exchange.into(),
            routing_key: String::new(),
            arguments,
        }
    }
    /// Adds a binding argument.
    pub fn argument(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.arguments.insert(key.into(), value.into());
        self
    }
}

/// A queue and how it is bound. Defaults follow kombu: durable, not exclusive, not auto-delete.
///
/// Built with [`Queue::new`] and a builder method per setting (the fields are readable; the
/// struct may gain fields, so it is not built literally outside this crate):
///
/// ```
/// use std::time::Duration;
/// use kombu_core::{Exchange, Queue};
///
/// let q = Queue::new("jobs")
///     .exchange(Exchange::direct("work"))
///     .routing_key("jobs")
///     .max_priority(9)
///     .message_ttl(Duration::from_secs(60))
///     .dead_letter_exchange("dead");
/// assert_eq!(q.max_priority, Some(9));
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct Queue {
    /// Name.
    pub name: String,
    /// The exchange the queue is bound to with `routing_key` (none: only the default exchange).
    pub exchange: Option<Exchange>,
    /// Binding key for `exchange`; kombu defaults it to the queue name's binding with key `""`.
    pub routing_key: String,
    /// Arguments of the binding to `exchange` (headers exchanges).
    pub binding_arguments: Headers,
    /// Further bindings.
    pub extra_bindings: Vec<Binding>,
    /// Survives a broker restart.
    pub durable: bool,
    /// Used by one connection only, deleted when it closes.
    pub exclusive: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Highest priority the queue honours (`x-max-priority`); none: no priorities.
    pub max_priority: Option<u8>,
    /// How long a message may wait in the queue (`x-message-ttl`).
    pub message_ttl: Option<Duration>,
    /// Queue deleted after being unused this long (`x-expires`).
    pub expires: Option<Duration>,
    /// At most this many ready messages; the oldest are dropped (`x-max-length`).
    pub max_length: Option<u64>,
    /// Rejected, expired and overflowed messages go to this exchange (`x-dead-letter-exchange`).
    pub dead_letter_exchange: Option<String>,
    /// Routing key for dead-lettered messages (`x-dead-letter-routing-key`); none: the original.
    pub dead_letter_routing_key: Option<String>,
    /// Further declaration arguments (e.g. `x-queue-type`).
    pub arguments: Headers,
}

impl Queue {
    /// A queue with kombu's defaults, bound to nothing but the default exchange.
    pub fn new(name: impl Into<String>) -> Self {
        Queue {
            name: name.into(),
            exchange: None,
            routing_key: String::new(),
            binding_arguments: Headers::new(),
            extra_bindings: Vec::new(),
            durable: true,
            exclusive: false,
            auto_delete: false,
            max_priority: None,
            message_ttl: None,
            expires: None,
            max_length: None,
            dead_letter_exchange: None,
            dead_letter_routing_key: None,
            arguments: Headers::new(),
        }
    }
    /// Binds the queue to `exchange` (with [`Queue::routing_key`]).
    pub fn exchange(mut self, exchange: Exchange) -> Self {
        self.exchange = Some(exchange);
        self
    }
    /// The binding key for the queue's exchange.
    pub fn routing_key(mut self, key: impl Into<String>) -> Self {
        self.routing_key = key.into();
        self
    }
    /// Arguments for the binding to the queue's exchange (headers exchanges).
    pub fn binding_arguments(mut self, arguments: Headers) -> Self {
        self.binding_arguments = arguments;
        self
    }
    /// Adds a further binding.
    pub fn bind(mut self, binding: Binding) -> Self {
        self.extra_bindings.push(binding);
        self
    }
    /// Sets durability.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }
    /// Sets exclusivity.
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        self
    }
    /// Sets auto-delete.
    pub fn auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }
    /// Enables priorities 0..=`max`.
    pub fn max_priority(mut self, max: u8) -> Self {
        self.max_priority = Some(max);
        self
    }
    /// Message time to live in this queue.
    pub fn message_ttl(mut self, ttl: Duration) -> Self {
        self.message_ttl = Some(ttl);
        self
    }
    /// Deletes the queue after it is unused this long.
    pub fn expires(mut self, after: Duration) -> Self {
        self.expires = Some(after);
        self
    }
    /// Bounds the number of ready messages.
    pub fn max_length(mut self, max: u64) -> Self {
        self.max_length = Some(max);
        self
    }
    /// Dead-letter exchange.
    pub fn dead_letter_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.dead_letter_exchange = Some(exchange.into());
        self
    }
    /// Dead-letter routing key.
    pub fn dead_letter_routing_key(mut self, key: impl Into<String>) -> Self {
        self.dead_letter_routing_key = Some(key.into());
        self
    }
    /// Adds a declaration argument.
    pub fn argument(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.arguments.insert(key.into(), value.into());
        self
    }

    /// Every binding of this queue: the one to its exchange (if any, and not the default
    /// exchange), then the extra ones.
    pub fn bindings(&self) -> impl Iterator<Item = Binding> + '_ {
        let own = self
            .exchange
            .as_ref()
            .filter(|e| !e.is_default())
            .map(|e| Binding {
                exchange: e.name.clone(),
                routing_key: self.routing_key.clone(),
                arguments: self.binding_arguments.clone(),
            });
        own.into_iter().chain(self.extra_bindings.iter().cloned())
    }

    /// The AMQP declaration arguments (`x-max-priority`, `x-message-ttl`, ...) merged with
    /// [`Queue::arguments`], as kombu builds them.
    pub fn declare_arguments(&self) -> Headers {
        let mut args = self.arguments.clone();
        if let Some(p) = self.max_priority {
            args.insert("x-max-priority".into(), Value::Int(i64::from(p)));
        }
        if let Some(ttl) = self.message_ttl {
            args.insert("x-message-ttl".into(), Value::Int(millis(ttl)));
        }
        if let Some(exp) = self.expires {
            args.insert("x-expires".into(), Value::Int(millis(exp)));
        }
        if let Some(max) = self.max_length {
            args.insert(
                "x-max-length".into(),
                Value::Int(i64::try_from(max).unwrap_or(i64::MAX)),
            );
        }
        if let Some(dlx) = &self.dead_letter_exchange {
            args.insert("x-dead-letter-exchange".into(), Value::from(dlx.as_str()));
        }
        if let Some(dlrk) = &self.dead_letter_routing_key {
            args.insert(
                "x-dead-letter-routing-key".into(),
                Value::from(dlrk.as_str()),
            );
        }
        args
    }

    /// Checks that the definition is consistent (a name, a routing key for direct/topic).
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty() {
            return Err(Error::config(
                "a queue needs a name (server-named queues are not supported)",
            ));
        }
        Ok(())
    }
}

/// Milliseconds of a duration, saturating.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declare_arguments_match_kombu_names() {
        let q = Queue::new("q")
            .max_priority(9)
            .message_ttl(Duration::from_millis(1500))
            .expires(Duration::from_secs(60))
            .max_length(10)
            .dead_letter_exchange("dlx")
            .dead_letter_routing_key("dead");
        let a = q.declare_arguments();
        assert_eq!(a["x-max-priority"], Value::Int(9));
        assert_eq!(a["x-message-ttl"], Value::Int(1500));
        assert_eq!(a["x-expires"], Value::Int(60_000));
        assert_eq!(a["x-max-length"], Value::Int(10));
        assert_eq!(a["x-dead-letter-exchange"], Value::from("dlx"));
        assert_eq!(a["x-dead-letter-routing-key"], Value::from("dead"));
    }

    #[test]
    fn default_exchange_is_not_a_binding() {
        let q = Queue::new("q").exchange(Exchange::default_exchange());
        assert_eq!(q.bindings().count(), 0);
        let q = Queue::new("q")
            .exchange(Exchange::topic("t"))
            .routing_key("a.#")
            .bind(Binding::new("other", "k"));
        let b: Vec<_> = q.bindings().collect();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].routing_key, "a.#");
        assert_eq!(b[1].exchange, "other");
    }

    #[test]
    fn exchange_kind_parses() {
        assert_eq!(
            "topic".parse::<ExchangeKind>().unwrap(),
            ExchangeKind::Topic
        );
        assert!("nope".parse::<ExchangeKind>().is_err());
    }
}
