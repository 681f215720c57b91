//! Publishing through the virtual channel: routing to queues (or to the backend's native
//! fanout), storing in one round trip, and republishing dead letters with an `x-death` record.

use std::time::{SystemTime, UNIX_EPOCH};

use rustc_hash::FxHashMap;

use crate::channel::Outgoing;
use crate::entity::ExchangeKind;
use crate::error::{Error, ErrorKind, Result};
use crate::transport::virtual_transport::channel::Shared;
use crate::transport::virtual_transport::router::route;
use crate::transport::virtual_transport::{DeadLetter, Envelope};
use crate::value::{Headers, Value};

/// Dead-letter hops followed for one message before giving up (a cycle of DLXs).
const MAX_DEAD_LETTER_HOPS: usize = 16;

impl Shared {
    pub(super) async fn publish(&self, outgoing: Outgoing) -> Result<()> {
        if outgoing.delay.is_some() {
            return self.publish_batch(vec![outgoing]).await;
        }
        if outgoing.exchange.is_empty() && !outgoing.mandatory {
            // The default exchange: the routing key names the queue. No routing table, no batch.
            let queue = outgoing.routing_key.clone();
            let envelope = Envelope::new(outgoing.message, outgoing.exchange, outgoing.routing_key);
            let dead = self.backend.put(&queue, envelope).await?;
            return self.dead_letter(dead).await;
        }
        let mut routed = Vec::with_capacity(1);
        let mut known = FxHashMap::default();
        self.route(outgoing, &mut routed, &mut known).await?;
        self.put_routed(routed).await
    }

    pub(super) async fn publish_batch(&self, batch: Vec<Outgoing>) -> Result<()> {
        let mut routed = Vec::with_capacity(batch.len());
        let mut known = FxHashMap::default();
        // Messages of the batch already out (native fanout publishes as it routes): if a later
        // step fails, publishing the batch again would send those twice, so the error says the
        // outcome is unknown and the producer does not retry it unless told to.
        let mut sent = false;
        for outgoing in batch {
            if let Some(delay) = outgoing.delay {
                // Routed now, stored apart until due (one store call per delayed message).
                let mut held = Vec::with_capacity(1);
                let stored = match self.route(outgoing, &mut held, &mut known).await {
                    Ok(_) if held.is_empty() => Ok(()),
                    Ok(_) => self.backend.put_delayed(held, delay).await,
                    Err(e) => Err(e),
                };
                match stored {
                    Ok(()) => sent = true,
                    Err(e) if sent => return Err(e.with_outcome_unknown()),
                    Err(e) => return Err(e),
                }
                continue;
            }
            match self.route(outgoing, &mut routed, &mut known).await {
                Ok(published) => sent |= published,
                Err(e) if sent => return Err(e.with_outcome_unknown()),
                Err(e) => return Err(e),
            }
        }
        match self.put_routed(routed).await {
            Err(e) if sent => Err(e.with_outcome_unknown()),
            other => other,
        }
    }

    async fn exchange_kind(&self, name: &str) -> Result<ExchangeKind> {
        match self.backend.exchange(name, None).await? {
            Some(ex) => Ok(ex.kind),
            None => Err(Error::new(
                ErrorKind::NotFound,
                format!("no exchange {name:?}: declare it before publishing to it"),
            )),
        }
    }

    /// Routes a message: appends a `(queue, envelope)` pair per destination queue to `sink`;
    /// true when it was published instead (native fanout).
    ///
    /// The default exchange sends to the queue named by the routing key without looking it
    /// up (as kombu does, so a queue that another client declared is reachable); only a
    /// mandatory publish asks whether the queue exists anywhere, once per distinct routing key
    /// of a batch (`known` remembers the answers).
    async fn route(
        &self,
        out: Outgoing,
        sink: &mut Vec<(String, Envelope)>,
        known: &mut FxHashMap<String, bool>,
    ) -> Result<bool> {
        let Outgoing {
            exchange,
            routing_key,
            message,
            mandatory,
            delay,
        } = out;
        if exchange.is_empty() {
            if mandatory && !self.known_queue(&routing_key, known).await? {
                return Err(Error::new(
                    ErrorKind::Unroutable,
                    format!("no queue {routing_key:?} for the default exchange"),
                ));
            }
            sink.push((
                routing_key.clone(),
                Envelope::new(message, exchange, routing_key),
            ));
            return Ok(false);
        }
        let kind = self.exchange_kind(&exchange).await?;
        let rows = self.backend.bindings(&exchange).await?;
        let mut queues = route(kind, &rows, &routing_key, &message.headers);
        let fresh;
        if queues.is_empty() {
            // The bindings may have been read before another process bound its queue.
            fresh = self.backend.fresh_bindings(&exchange).await?;
            queues = route(kind, &fresh, &routing_key, &message.headers);
        }
        let Some((last, others)) = queues.split_last() else {
            if mandatory {
                return Err(Error::new(
                    ErrorKind::Unroutable,
                    format!(
                        "no queue is bound to exchange {exchange:?} for routing key {routing_key:?}"
                    ),
                ));
            }
            tracing::debug!(%exchange, %routing_key, "unroutable message dropped");
            return Ok(false);
        };
        let envelope = Envelope::new(message, exchange, routing_key);
        // A mandatory message must be held by a queue: native fanout (Redis PUB/SUB) reaches
        // only the consumers listening at that moment, so it goes into the bound queues'
        // stores instead (a dead letter sent to a fanout dead-letter exchange, say).
        // A delayed one too: it is stored until due.
        if kind == ExchangeKind::Fanout && self.native_fanout && !mandatory && delay.is_none() {
            return self.backend.publish_fanout(envelope).await.map(|()| true);
        }
        for queue in others {
            sink.push(((*queue).to_owned(), envelope.clone()));
        }
        sink.push(((*last).to_owned(), envelope));
        Ok(false)
    }

    /// Whether a queue exists, asking the backend once per name in `known`.
    async fn known_queue(&self, queue: &str, known: &mut FxHashMap<String, bool>) -> Result<bool> {
        if let Some(&exists) = known.get(queue) {
            return Ok(exists);
        }
        let exists = self.backend.queue_exists(queue).await?;
        known.insert(queue.to_owned(), exists);
        Ok(exists)
    }

    /// Stores routed messages: one `put`, or one `put_many` round trip for several.
    async fn store(&self, mut items: Vec<(String, Envelope)>) -> Result<Vec<DeadLetter>> {
        if items.len() > 1 {
            return self.backend.put_many(items).await;
        }
        match items.pop() {
            Some((queue, env)) => self.backend.put(&queue, env).await,
            None => Ok(Vec::new()),
        }
    }

    async fn put_routed(&self, items: Vec<(String, Envelope)>) -> Result<()> {
        let dead = self.store(items).await?;
        self.dead_letter(dead).await
    }

    /// Republishes dead letters to their dead-letter exchanges with an `x-death` record.
    pub(super) async fn dead_letter(&self, dead: Vec<DeadLetter>) -> Result<()> {
        if dead.is_empty() {
            // The common case, kept out of the (large) future below.
            return Ok(());
        }
        self.dead_letter_all(dead).await
    }

    async fn dead_letter_all(&self, mut dead: Vec<DeadLetter>) -> Result<()> {
        let mut hops = 0;
        while !dead.is_empty() {
            hops += 1;
            if hops > MAX_DEAD_LETTER_HOPS {
                tracing::warn!(
                    count = dead.len(),
                    "dead-letter cycle: messages dropped after {MAX_DEAD_LETTER_HOPS} hops"
                );
                return Ok(());
            }
            let mut routed = Vec::new();
            let mut known = FxHashMap::default();
            for dl in dead.drain(..) {
                let routing_key = dl
                    .routing_key
                    .clone()
                    .unwrap_or_else(|| dl.envelope.routing_key.clone());
                let mut message = dl.envelope.message;
                record_death(
                    &mut message.headers,
                    &dl.queue,
                    dl.reason.as_str(),
                    &dl.envelope.exchange,
                    &dl.envelope.routing_key,
                );
                // A message expired by its own expiration is not expired again on the way.
                message.properties.expiration = None;
                let out = Outgoing {
                    exchange: dl.exchange,
                    routing_key,
                    message,
                    mandatory: false,
                    delay: None,
                };
                match self.route(out, &mut routed, &mut known).await {
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(queue = %dl.queue, %error, "dead-lettering failed");
                    }
                }
            }
            if routed.is_empty() {
                break;
            }
            dead = self.store(routed).await?;
        }
        Ok(())
    }
}

/// Appends a RabbitMQ-shaped `x-death` record (count per queue and reason).
fn record_death(headers: &mut Headers, queue: &str, reason: &str, exchange: &str, rk: &str) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut deaths = match headers.remove("x-death") {
        Some(Value::List(list)) => list,
        _ => Vec::new(),
    };
    let existing = deaths.iter_mut().find_map(|d| match d {
        Value::Map(m)
            if m.get("queue").and_then(Value::as_str) == Some(queue)
                && m.get("reason").and_then(Value::as_str) == Some(reason) =>
        {
            Some(m)
        }
        _ => None,
    });
    match existing {
        Some(m) => {
            let count = m.get("count").and_then(Value::as_i64).unwrap_or(0) + 1;
            m.insert("count".into(), Value::Int(count));
            m.insert(
                "time".into(),
                Value::Int(i64::try_from(now).unwrap_or(i64::MAX)),
            );
        }
        None => {
            let mut m = Headers::new();
            m.insert("count".into(), Value::Int(1));
            m.insert("reason".into(), reason.into());
            m.insert("queue".into(), queue.into());
            m.insert("exchange".into(), exchange.into());
            m.insert("routing-keys".into(), Value::List(vec![rk.into()]));
            m.insert(
                "time".into(),
                Value::Int(i64::try_from(now).unwrap_or(i64::MAX)),
            );
            deaths.insert(0, Value::Map(m));
        }
    }
    headers.insert("x-death".into(), Value::List(deaths));
    headers
        .entry("x-first-death-queue".into())
        .or_insert_with(|| queue.into());
    headers
        .entry("x-first-death-reason".into())
        .or_insert_with(|| reason.into());
    headers
        .entry("x-first-death-exchange".into())
        .or_insert_with(|| exchange.into());
}
