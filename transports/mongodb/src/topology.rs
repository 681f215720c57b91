//! Exchanges, queues and bindings in the database: kombu's routing and queues collections,
//! kombu-rs's exchange collection, and what a queue's recorded arguments mean for its
//! messages (TTL, dead-letter exchange).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use kombu_core::transport::virtual_transport::router::kombu_topic_pattern;
use kombu_core::transport::virtual_transport::{BindingRow, StoredQueue, queue_settings};
use kombu_core::{Error, ErrorKind, Exchange, ExchangeKind, Headers, Queue, Result, Value};
use mongodb::bson::{Bson, DateTime, Document, doc};
use mongodb::options::UpdateOptions;

use crate::backend::MongoBackend;
use crate::documents::{DUE, QUEUE, delayed, leased};
use crate::errors::Op;

/// How long a queue's arguments read from the store are used before they are read again.
pub(crate) const SPEC_TTL: Duration = Duration::from_secs(1);

/// What a queue's recorded arguments mean for its messages.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct QueueSpec {
    /// `x-message-ttl`.
    pub(crate) message_ttl: Option<Duration>,
    /// `x-expires` (kombu's `ttl` mode: the queue document's `expire_at`).
    pub(crate) expires: Option<Duration>,
    /// `x-dead-letter-exchange`.
    pub(crate) dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`.
    pub(crate) dead_letter_routing_key: Option<String>,
}

impl QueueSpec {
    fn from_arguments(arguments: &Headers) -> QueueSpec {
        let millis = |key: &str| {
            arguments
                .get(key)
                .and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()))
                .and_then(|ms| u64::try_from(ms).ok())
                .map(Duration::from_millis)
        };
        let text = |key: &str| {
            arguments
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        QueueSpec {
            message_ttl: millis("x-message-ttl"),
            expires: millis("x-expires"),
            dead_letter_exchange: text("x-dead-letter-exchange"),
            dead_letter_routing_key: text("x-dead-letter-routing-key"),
        }
    }
}

/// A BSON value as a kombu-rs value (what Python kombu recorded in `options.arguments`).
fn value_of(bson: &Bson) -> Value {
    match bson {
        Bson::Boolean(b) => Value::Bool(*b),
        Bson::Int32(i) => Value::Int(i64::from(*i)),
        Bson::Int64(i) => Value::Int(*i),
        Bson::Double(f) if f.fract() == 0.0 && f.abs() < 9e15 => Value::Int(*f as i64),
        Bson::Double(f) => Value::Float(*f),
        Bson::String(s) => Value::String(s.clone()),
        Bson::Document(d) => Value::Map(d.iter().map(|(k, v)| (k.clone(), value_of(v))).collect()),
        Bson::Array(items) => Value::List(items.iter().map(value_of).collect()),
        _ => Value::Null,
    }
}

/// A kombu-rs value as BSON (for kombu's `options.arguments`).
fn bson_of(value: &Value) -> Bson {
    match value {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Int(i) => Bson::Int64(*i),
        Value::Float(f) => Bson::Double(*f),
        Value::String(s) => Bson::String(s.clone()),
        Value::Bytes(b) => Bson::Binary(mongodb::bson::Binary {
            subtype: mongodb::bson::spec::BinarySubtype::Generic,
            bytes: b.clone(),
        }),
        Value::List(items) => Bson::Array(items.iter().map(bson_of).collect()),
        Value::Map(map) => {
            Bson::Document(map.iter().map(|(k, v)| (k.clone(), bson_of(v))).collect())
        }
    }
}

/// The settings recorded on a queue document, as core compares them with a redeclaration:
/// kombu-rs's (`kombu_rs_settings`, JSON text), else those of Python kombu's record (its
/// `options`: `arguments` and the `durable`, `exclusive` and `auto_delete` flags, kombu's
/// defaults for those missing), so a Rust declaration that differs from Python's fails as on
/// RabbitMQ; `None` for a document with neither. And the arguments that give the queue's TTL
/// and dead-letter exchange.
fn read_queue_document(document: &Document) -> (Option<Headers>, Headers) {
    if let Ok(text) = document.get_str(SETTINGS) {
        // An unreadable record reads as none recorded, so a redeclaration fails naming
        // every setting.
        let settings: Headers = serde_json::from_str(text).unwrap_or_default();
        return (Some(settings.clone()), settings);
    }
    let Ok(options) = document.get_document("options") else {
        return (None, Headers::new());
    };
    let arguments: Headers = options
        .get_document("arguments")
        .map(|a| a.iter().map(|(k, v)| (k.clone(), value_of(v))).collect())
        .unwrap_or_default();
    let mut settings = arguments.clone();
    for (flag, default) in [
        ("durable", true),
        ("exclusive", false),
        ("auto_delete", false),
    ] {
        let on = options.get_bool(flag).unwrap_or(default);
        settings.insert(format!("kombu-rs:{flag}"), Value::Bool(on));
    }
    (Some(settings), arguments)
}

/// The field of a queue document holding kombu-rs's settings.
const SETTINGS: &str = "kombu_rs_settings";

impl MongoBackend {
    // --- exchanges -------------------------------------------------------------------------

    /// Reads an exchange's record; for one kombu-rs never declared that has bindings (Python
    /// kombu keeps its exchanges in memory), the type its bindings show: kombu's `^...$`
    /// pattern means topic, anything else direct.
    pub(crate) async fn read_exchange(&self, name: &str) -> Result<Option<Exchange>> {
        let found = self
            .exchanges
            .find_one(doc! { "_id": name })
            .await
            .map_err(self.err("look up exchange", Op::Read))?;
        if let Some(record) = found {
            let kind: ExchangeKind = record.get_str("type").unwrap_or("direct").parse()?;
            let mut exchange = Exchange::new(name, kind);
            exchange.durable = record.get_bool("durable").unwrap_or(true);
            exchange.auto_delete = record.get_bool("auto_delete").unwrap_or(false);
            exchange.arguments = record
                .get_str("arguments")
                .ok()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| {
                    Error::new(ErrorKind::Protocol, "stored exchange arguments").with_source(e)
                })?
                .unwrap_or_default();
            return Ok(Some(exchange));
        }
        let binding = self
            .routing
            .find_one(doc! { "exchange": name })
            .await
            .map_err(self.err("look up exchange bindings", Op::Read))?;
        Ok(binding.map(|b| {
            let topic = b.get_str("pattern").is_ok_and(|p| p.starts_with('^'));
            Exchange::new(
                name,
                if topic {
                    ExchangeKind::Topic
                } else {
                    ExchangeKind::Direct
                },
            )
        }))
    }

    /// Records an exchange unless one of that name is recorded; returns the record stored.
    pub(crate) async fn store_exchange(&self, exchange: &Exchange) -> Result<Option<Exchange>> {
        let arguments = serde_json::to_string(&exchange.arguments)
            .map_err(|e| Error::new(ErrorKind::Codec, "exchange arguments").with_source(e))?;
        let result = self
            .exchanges
            .update_one(
                doc! { "_id": exchange.name.as_str() },
                doc! { "$setOnInsert": {
                    "type": exchange.kind.as_str(),
                    "durable": exchange.durable,
                    "auto_delete": exchange.auto_delete,
                    "arguments": arguments,
                } },
            )
            .with_options(UpdateOptions::builder().upsert(true).build())
            .await
            .map_err(self.err("declare exchange", Op::Write))?;
        self.topology.clear();
        if result.upserted_id.is_some() {
            return Ok(Some(exchange.clone()));
        }
        self.read_exchange(&exchange.name).await
    }

    pub(crate) async fn remove_exchange(&self, name: &str) -> Result<()> {
        self.exchanges
            .delete_one(doc! { "_id": name })
            .await
            .map_err(self.err("delete exchange", Op::Write))?;
        self.routing
            .delete_many(doc! { "exchange": name })
            .await
            .map_err(self.err("delete exchange bindings", Op::Write))?;
        self.fanout.forget_exchange(name);
        self.topology.clear();
        Ok(())
    }

    // --- queues ----------------------------------------------------------------------------

    /// Declares (with `declare`) or looks up a queue.
    pub(crate) async fn queue_record(
        &self,
        name: &str,
        declare: Option<&Queue>,
    ) -> Result<Option<StoredQueue>> {
        if let Some(queue) = declare {
            self.store_queue(queue).await?;
        }
        let document = self
            .queues
            .find_one(doc! { "_id": name })
            .await
            .map_err(self.err("look up queue", Op::Read))?;
        let ready = self.ready_count(name).await?;
        let Some(document) = document else {
            if ready > 0 || self.mentioned(name).await? {
                return Ok(Some(StoredQueue::new(None, ready)));
            }
            return Ok(None);
        };
        let (settings, _) = read_queue_document(&document);
        Ok(Some(StoredQueue::new(settings, ready)))
    }

    /// Records a queue's settings (kombu-rs's, and kombu's `options` for Python) unless the
    /// queue has a record.
    async fn store_queue(&self, queue: &Queue) -> Result<()> {
        let settings = serde_json::to_string(&queue_settings(queue))
            .map_err(|e| Error::new(ErrorKind::Codec, "queue arguments").with_source(e))?;
        let arguments: Document = queue
            .declare_arguments()
            .iter()
            .map(|(k, v)| (k.clone(), bson_of(v)))
            .collect();
        let options = doc! {
            "durable": queue.durable,
            "exclusive": queue.exclusive,
            "auto_delete": queue.auto_delete,
            "arguments": arguments,
        };
        let expire_at = queue
            .expires
            .filter(|_| self.options.ttl)
            .and_then(after_now);
        // A record that exists (kombu-rs's, or Python kombu's with `ttl=True`) is left as it
        // is (core compares it with this declaration), but for its expiry: every declaration
        // of a queue with `x-expires` moves it, as kombu's `ttl` mode does.
        let mut on_insert = doc! { "options": options, SETTINGS: settings };
        let mut update = Document::new();
        match expire_at {
            Some(at) => {
                update.insert("$set", doc! { "expire_at": at });
            }
            None => {
                on_insert.insert("expire_at", Bson::Null);
            }
        }
        update.insert("$setOnInsert", on_insert);
        self.queues
            .update_one(doc! { "_id": queue.name.as_str() }, update)
            .with_options(UpdateOptions::builder().upsert(true).build())
            .await
            .map_err(self.err("declare queue", Op::Write))?;
        self.specs.lock().remove(&queue.name);
        Ok(())
    }

    /// Ready messages of a queue (0 with `calc_queue_size=false`, as kombu answers).
    pub(crate) async fn ready_count(&self, queue: &str) -> Result<u64> {
        let stored = if self.options.calc_queue_size {
            self.messages
                .count_documents(doc! { QUEUE: queue })
                .await
                .map_err(self.err("count messages", Op::Read))?
                // Delayed messages already due are ready: the next take moves them.
                + self
                    .messages
                    .count_documents(
                        doc! { QUEUE: delayed(queue), DUE: { "$lte": DateTime::now() } },
                    )
                    .await
                    .map_err(self.err("count messages", Op::Read))?
        } else {
            0
        };
        Ok(stored + self.fanout.len(queue) as u64)
    }

    /// Whether any message is leased from the queue or delayed for it, or any binding names it.
    async fn mentioned(&self, queue: &str) -> Result<bool> {
        if self.fanout.is_fanout_queue(queue) {
            return Ok(true);
        }
        let leased = self
            .messages
            .find_one(doc! { QUEUE: { "$in": [leased(queue), delayed(queue)] } })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(self.err("look up queue", Op::Read))?;
        if leased.is_some() {
            return Ok(true);
        }
        let ready = self
            .messages
            .find_one(doc! { QUEUE: queue })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(self.err("look up queue", Op::Read))?;
        if ready.is_some() {
            return Ok(true);
        }
        let bound = self
            .routing
            .find_one(doc! { "queue": queue })
            .await
            .map_err(self.err("look up queue bindings", Op::Read))?;
        Ok(bound.is_some())
    }

    /// What a queue's recorded arguments say (cached for [`SPEC_TTL`]).
    pub(crate) async fn spec(&self, queue: &str) -> Result<Arc<QueueSpec>> {
        if let Some((at, spec)) = self.specs.lock().get(queue)
            && at.elapsed() < SPEC_TTL
        {
            return Ok(spec.clone());
        }
        let document = self
            .queues
            .find_one(doc! { "_id": queue })
            .await
            .map_err(self.err("read queue arguments", Op::Read))?;
        let spec = Arc::new(
            document
                .map(|d| QueueSpec::from_arguments(&read_queue_document(&d).1))
                .unwrap_or_default(),
        );
        self.specs
            .lock()
            .insert(queue.to_owned(), (Instant::now(), spec.clone()));
        Ok(spec)
    }

    /// kombu's `ttl` mode: moves a queue's `expire_at` (on its queue and routing documents)
    /// to now + `x-expires` on every take.
    pub(crate) async fn refresh_queue_expiry(&self, queue: &str, spec: &QueueSpec) -> Result<()> {
        let Some(at) = spec
            .expires
            .filter(|_| self.options.ttl)
            .and_then(after_now)
        else {
            return Ok(());
        };
        self.routing
            .update_many(
                doc! { "queue": queue },
                doc! { "$set": { "expire_at": at } },
            )
            .await
            .map_err(self.err("refresh queue expiry", Op::Write))?;
        self.queues
            .update_many(doc! { "_id": queue }, doc! { "$set": { "expire_at": at } })
            .await
            .map_err(self.err("refresh queue expiry", Op::Write))?;
        Ok(())
    }

    // --- bindings --------------------------------------------------------------------------

    /// kombu's routing document for a row of an exchange of `kind` (the lookup part; kombu
    /// upserts on it).
    fn binding_document(row: &BindingRow, kind: ExchangeKind) -> Result<Document> {
        let pattern = match kind {
            ExchangeKind::Topic => Bson::String(kombu_topic_pattern(&row.routing_key)),
            _ => Bson::Null,
        };
        let mut lookup = doc! {
            "exchange": row.exchange.as_str(),
            "queue": row.queue.as_str(),
            "routing_key": row.routing_key.as_str(),
            "pattern": pattern,
        };
        if !row.arguments.is_empty() {
            let arguments = serde_json::to_string(&row.arguments)
                .map_err(|e| Error::new(ErrorKind::Codec, "binding arguments").with_source(e))?;
            lookup.insert("kombu_rs_arguments", arguments);
        }
        Ok(lookup)
    }

    async fn exchange_kind(&self, name: &str) -> Result<ExchangeKind> {
        Ok(self
            .read_exchange(name)
            .await?
            .map_or(ExchangeKind::Direct, |e| e.kind))
    }

    pub(crate) async fn add_binding(&self, row: &BindingRow) -> Result<()> {
        let kind = self.exchange_kind(&row.exchange).await?;
        let lookup = Self::binding_document(row, kind)?;
        let mut data = lookup.clone();
        if let Some(spec) = Some(self.spec(&row.queue).await?)
            && let Some(at) = spec
                .expires
                .filter(|_| self.options.ttl)
                .and_then(after_now)
        {
            data.insert("expire_at", at);
        }
        self.routing
            .update_one(lookup, doc! { "$set": data })
            .with_options(UpdateOptions::builder().upsert(true).build())
            .await
            .map_err(self.err("bind", Op::Write))?;
        if kind == ExchangeKind::Fanout {
            self.fanout
                .subscribe(
                    &row.queue,
                    &row.exchange,
                    &self.broadcast,
                    &self.waker,
                    self.options.polling_interval,
                )
                .await;
        }
        self.topology.clear();
        Ok(())
    }

    pub(crate) async fn remove_binding(&self, row: &BindingRow) -> Result<()> {
        let kind = self.exchange_kind(&row.exchange).await?;
        let mut filter = Self::binding_document(row, kind)?;
        if row.arguments.is_empty() {
            filter.insert("kombu_rs_arguments", doc! { "$exists": false });
        }
        filter.remove("pattern");
        self.routing
            .delete_many(filter)
            .await
            .map_err(self.err("unbind", Op::Write))?;
        if kind == ExchangeKind::Fanout {
            self.fanout.unsubscribe(&row.queue, Some(&row.exchange));
        }
        self.topology.clear();
        Ok(())
    }

    /// Every binding of an exchange, kombu-rs's and Python kombu's, in insertion order.
    pub(crate) async fn read_bindings(&self, exchange: &str) -> Result<Arc<[BindingRow]>> {
        if let Some(rows) = self.topology.bindings(exchange) {
            return Ok(rows);
        }
        let documents: Vec<Document> = self
            .routing
            .find(doc! { "exchange": exchange })
            .sort(doc! { "_id": 1 })
            .await
            .map_err(self.err("read bindings", Op::Read))?
            .try_collect()
            .await
            .map_err(self.err("read bindings", Op::Read))?;
        let mut rows = Vec::with_capacity(documents.len());
        for d in documents {
            let (Ok(queue), routing_key) = (d.get_str("queue"), d.get_str("routing_key")) else {
                continue;
            };
            let arguments: Headers = d
                .get_str("kombu_rs_arguments")
                .ok()
                .and_then(|a| serde_json::from_str(a).ok())
                .unwrap_or_default();
            let row = BindingRow {
                exchange: exchange.to_owned(),
                routing_key: routing_key.unwrap_or_default().to_owned(),
                queue: queue.to_owned(),
                arguments,
            };
            if !rows.contains(&row) {
                rows.push(row);
            }
        }
        let rows: Arc<[BindingRow]> = rows.into();
        self.topology.put_bindings(exchange, rows.clone());
        Ok(rows)
    }
}

/// Now + `after` as a BSON date (`None` past the calendar's end).
fn after_now(after: Duration) -> Option<DateTime> {
    let millis = i64::try_from(after.as_millis()).ok()?;
    DateTime::now()
        .timestamp_millis()
        .checked_add(millis)
        .map(DateTime::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_arguments_and_kombu_rs_settings_give_the_same_spec() {
        let python = doc! { "_id": "q", "options": { "arguments": {
        "x-message-ttl": 1500_i32, "x-dead-letter-exchange": "dlx" } } };
        let (python_settings, arguments) = read_queue_document(&python);
        let spec = QueueSpec::from_arguments(&arguments);
        assert_eq!(spec.message_ttl, Some(Duration::from_millis(1500)));
        assert_eq!(spec.dead_letter_exchange.as_deref(), Some("dlx"));
        let queue = Queue::new("q")
            .message_ttl(Duration::from_millis(1500))
            .dead_letter_exchange("dlx");
        // The same declaration in Rust matches what Python recorded (kombu's default flags).
        assert_eq!(python_settings, Some(queue_settings(&queue)));
        let rust = doc! {
            "_id": "q",
            SETTINGS: serde_json::to_string(&queue_settings(&queue)).unwrap_or_default(),
        };
        let (settings, arguments) = read_queue_document(&rust);
        assert_eq!(settings, Some(queue_settings(&queue)));
        assert_eq!(QueueSpec::from_arguments(&arguments), spec);
        assert_eq!(
            read_queue_document(&doc! { "_id": "q" }),
            (None, Headers::new())
        );
    }
}
