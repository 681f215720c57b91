//! The caller's side of remote control: Celery's `app.control.broadcast` and
//! `app.control.inspect()`.

use std::time::Duration;

use futures::StreamExt;
use kombu_core::{Binding, Connection, DeliveryMode, Exchange, Producer, Queue, Result, Value};
use serde_json::{Map, Value as Json};

use super::{Command, PIDBOX_EXCHANGE, REPLY_EXCHANGE, ReplyTo, reply_queue};
use crate::clock::LamportClock;

/// Celery's default wait for replies (`celery inspect --timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an idle reply queue lives (Celery's `control_queue_expires`).
const REPLY_QUEUE_EXPIRES: Duration = Duration::from_secs(10);
/// How long a reply waits in it (Celery's `control_queue_ttl`).
const REPLY_QUEUE_TTL: Duration = Duration::from_secs(300);

/// Who a broadcast is for and how long to wait for replies; the default is every node, a
/// second.
#[derive(Debug, Clone)]
pub struct Broadcast {
    destination: Option<Vec<String>>,
    pattern: Option<(String, String)>,
    timeout: Duration,
    limit: Option<usize>,
}

impl Default for Broadcast {
    fn default() -> Self {
        Broadcast {
            destination: None,
            pattern: None,
            timeout: DEFAULT_TIMEOUT,
            limit: None,
        }
    }
}

impl Broadcast {
    /// Every node, waiting [`DEFAULT_TIMEOUT`] between replies.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only the node `name` (repeatable); the wait ends once each named node replied.
    pub fn destination(mut self, name: impl Into<String>) -> Self {
        self.destination
            .get_or_insert_with(Vec::new)
            .push(name.into());
        self
    }

    /// Only the nodes whose name matches the glob `pattern` (when no destination is named).
    pub fn pattern(mut self, pattern: impl Into<String>) -> Self {
        self.pattern = Some((pattern.into(), "glob".to_owned()));
        self
    }

    /// How long to wait for the next reply: the wait ends when none came for this long
    /// (Celery's timeout is between replies, not in all).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Stop after this many replies (default: the number of destinations, else none).
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// Sends remote-control commands to workers and collects their replies; each call that
/// wants replies declares a reply queue of its own (`<id>.reply.celery.pidbox`, expiring 10 s
/// after its last use), so calls made at once do not take each other's replies.
///
/// ```no_run
/// # async fn run() -> kombu_core::Result<()> {
/// use kombu_celery::control::{Broadcast, Control};
///
/// let conn = kombu_core::Connection::open("redis://127.0.0.1:6379/0").await?;
/// let control = Control::new(&conn);
/// for (node, reply) in control.broadcast("ping", Default::default(), &Broadcast::new()).await? {
///     println!("{node}: {reply}"); // celery@host: {"ok":"pong"}
/// }
/// # Ok(()) }
/// ```
pub struct Control {
    conn: Connection,
    clock: LamportClock,
    producer: Producer,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("clock", &self.clock.value())
            .finish_non_exhaustive()
    }
}

impl Control {
    /// A caller on `conn`.
    pub fn new(conn: &impl AsRef<Connection>) -> Control {
        let conn = conn.as_ref().clone();
        let producer = conn
            .producer()
            .exchange(Exchange::fanout(PIDBOX_EXCHANGE).durable(false))
            .serializer("json");
        Control {
            clock: LamportClock::new(),
            producer,
            conn,
        }
    }

    /// Its Lamport clock (moved past each reply's).
    pub fn clock(&self) -> &LamportClock {
        &self.clock
    }

    /// Sends `method` with `arguments` to the nodes `options` names and returns their
    /// replies `(node, payload)` in the order they came.
    pub async fn broadcast(
        &self,
        method: &str,
        arguments: Map<String, Json>,
        options: &Broadcast,
    ) -> Result<Vec<(String, Json)>> {
        let ticket = uuid::Uuid::new_v4().to_string();
        let oid = uuid::Uuid::new_v4().to_string();
        let queue = Queue::new(reply_queue(&oid))
            .durable(false)
            .exclusive(true)
            .auto_delete(true)
            .expires(REPLY_QUEUE_EXPIRES)
            .message_ttl(REPLY_QUEUE_TTL)
            .bind(Binding::new(REPLY_EXCHANGE, oid.as_str()));
        self.conn
            .declare_exchange(&Exchange::direct(REPLY_EXCHANGE).durable(false))
            .await
            .map_err(|e| e.context("declaring the reply exchange"))?;
        let mut replies = self
            .conn
            .consumer([queue])
            .no_ack(true)
            .build()
            .await
            .map_err(|e| e.context("listening for remote-control replies"))?;
        let command = Command {
            method: method.to_owned(),
            arguments,
            destination: options.destination.clone(),
            pattern: options.pattern.as_ref().map(|(p, _)| p.clone()),
            matcher: options.pattern.as_ref().map(|(_, m)| m.clone()),
            ticket: Some(ticket.clone()),
            reply_to: Some(ReplyTo {
                exchange: REPLY_EXCHANGE.to_owned(),
                routing_key: oid.clone(),
            }),
        };
        let sent = self.send(&command, options.timeout).await;
        let limit = options
            .limit
            .or_else(|| options.destination.as_ref().map(Vec::len));
        let mut out = Vec::new();
        if sent.is_ok() {
            while limit.is_none_or(|limit| out.len() < limit) {
                let next = tokio::time::timeout(options.timeout, replies.next()).await;
                let delivery = match next {
                    Err(_) | Ok(None) => break,
                    Ok(Some(Err(refused))) => {
                        tracing::warn!(%refused, "a remote-control reply that could not be read");
                        continue;
                    }
                    Ok(Some(Ok(delivery))) => delivery,
                };
                let headers = delivery.headers();
                if let Some(Value::Int(clock)) = headers.get("clock") {
                    self.clock.adjust(u64::try_from(*clock).unwrap_or(0));
                }
                if !matches!(headers.get("ticket"), Some(Value::String(t)) if *t == ticket) {
                    continue; // a late reply to an earlier command
                }
                match delivery.decode::<Json>() {
                    Ok(Json::Object(body)) => out.extend(body),
                    Ok(other) => {
                        tracing::warn!(reply = %other, "a reply that is no {{node: reply}}")
                    }
                    Err(error) => {
                        tracing::warn!(error = %format_args!("{error:#}"), "a reply that is no JSON")
                    }
                }
            }
        }
        if let Err(error) = replies.close().await {
            tracing::debug!(error = %format_args!("{error:#}"), "closing the reply consumer");
        }
        sent.map(|()| out)
    }

    /// Sends `method` without waiting for replies (Celery's `reply=False`) to `destination`
    /// (`None`: every node).
    pub async fn cast(
        &self,
        method: &str,
        arguments: Map<String, Json>,
        destination: Option<Vec<String>>,
    ) -> Result<()> {
        let command = Command {
            method: method.to_owned(),
            arguments,
            destination,
            pattern: None,
            matcher: None,
            ticket: None,
            reply_to: None,
        };
        self.send(&command, Duration::ZERO).await
    }

    /// [`broadcast`](Self::broadcast) as one `{node: payload}` map (a node replying twice:
    /// its last reply).
    pub async fn inspect(
        &self,
        method: &str,
        arguments: Map<String, Json>,
        options: &Broadcast,
    ) -> Result<Map<String, Json>> {
        Ok(self
            .broadcast(method, arguments, options)
            .await?
            .into_iter()
            .collect())
    }

    async fn send(&self, command: &Command, timeout: Duration) -> Result<()> {
        let expires = match timeout.is_zero() {
            true => Value::Int(0),
            false => Value::Float(crate::events::now() + timeout.as_secs_f64()),
        };
        let clock = i64::try_from(self.clock.forward()).unwrap_or(i64::MAX);
        self.producer
            .message(command)
            .header("clock", Value::Int(clock))
            .header("expires", expires)
            .delivery_mode(DeliveryMode::Persistent)
            .send()
            .await
            .map_err(|e| {
                e.context(format!(
                    "sending the remote-control command {:?}",
                    command.method
                ))
            })
    }
}
