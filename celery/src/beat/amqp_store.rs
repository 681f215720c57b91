//! The beat's lease and runs on RabbitMQ ([`AmqpStore`]).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use kombu_core::{Connection, DeliveryMode, Error, ErrorKind, Queue, Result};
use tokio::sync::Mutex;

use super::store::{BeatStore, Run, lease_lost};

/// How long reading the runs waits for their message (none: nothing recorded yet).
const READ_WAIT: Duration = Duration::from_millis(500);

/// On RabbitMQ: the lease is an exclusive queue
/// (`kombu_rs.beat.<name>.lease`): the broker lets one connection hold it and drops it when
/// that connection goes (at once on a close, after missed heartbeats on a crash), so another
/// beat takes over then. The runs are the one message of a durable queue that keeps only its
/// newest (`kombu_rs.beat.<name>.runs`, `x-max-length` 1), written over the lease's own
/// connection: a beat whose connection (so whose lease) is gone cannot write them. The
/// connection does not recover by itself (`recover=false`): a lost one is a lost lease, and
/// the next tick opens a new one and asks for the lease again.
pub struct AmqpStore {
    url: String,
    lease_queue: String,
    runs_queue: String,
    state: Mutex<State>,
}

struct State {
    conn: Option<Connection>,
    /// The runs as this holder last wrote or read them (valid while it holds the lease).
    runs: Option<HashMap<String, Run>>,
}

impl std::fmt::Debug for AmqpStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpStore")
            .field("lease_queue", &self.lease_queue)
            .finish_non_exhaustive()
    }
}

impl AmqpStore {
    /// Connects to RabbitMQ at `url` for the schedule `name`.
    pub async fn connect(url: &str, name: &str) -> Result<AmqpStore> {
        let sep = if url.contains('?') { '&' } else { '?' };
        let store = AmqpStore {
            url: format!("{url}{sep}recover=false"),
            lease_queue: format!("kombu_rs.beat.{name}.lease"),
            runs_queue: format!("kombu_rs.beat.{name}.runs"),
            state: Mutex::new(State {
                conn: None,
                runs: None,
            }),
        };
        store.state.lock().await.conn = Some(store.open().await?);
        Ok(store)
    }

    async fn open(&self) -> Result<Connection> {
        let conn = Connection::open(&self.url).await?;
        if conn.messaging_system() != "rabbitmq" {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "AmqpStore needs an AMQP broker (amqp://)",
            ));
        }
        conn.declare_queue(&self.runs_declaration()).await?;
        Ok(conn)
    }

    fn runs_declaration(&self) -> Queue {
        Queue::new(self.runs_queue.as_str()).max_length(1)
    }

    fn lease_declaration(&self) -> Queue {
        Queue::new(self.lease_queue.as_str())
            .durable(false)
            .exclusive(true)
    }

    /// Closes its connection: the lease goes with it.
    pub async fn close(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        state.runs = None;
        match state.conn.take() {
            Some(conn) => conn.close().await,
            None => Ok(()),
        }
    }

    /// Reads the runs' message (and puts it back).
    async fn read(conn: &Connection, queue: &str) -> Result<HashMap<String, Run>> {
        let mut consumer = conn
            .consumer([Queue::new(queue)])
            .prefetch(1)
            .declare(false)
            .build()
            .await?;
        let got = tokio::time::timeout(READ_WAIT, consumer.next()).await;
        let runs = match got {
            Ok(Some(Ok(delivery))) => {
                let doc: serde_json::Value = delivery.decode()?;
                let mut runs = HashMap::new();
                if let serde_json::Value::Object(entries) = doc {
                    for (entry, run) in entries {
                        runs.insert(entry.clone(), Run::from_value(&entry, &run)?);
                    }
                }
                delivery.requeue().await.map_err(Error::from)?;
                runs
            }
            Ok(Some(Err(refused))) => {
                return Err(Error::new(
                    ErrorKind::Codec,
                    format!("beat state: the runs' message does not read: {refused}"),
                ));
            }
            Ok(None) | Err(_) => HashMap::new(),
        };
        consumer.close().await?;
        Ok(runs)
    }
}

#[async_trait]
impl BeatStore for AmqpStore {
    async fn lease(&self, _owner: &str, _ttl: Duration) -> Result<bool> {
        let mut state = self.state.lock().await;
        if state.conn.is_none() {
            state.runs = None;
            state.conn = Some(self.open().await?);
        }
        let Some(conn) = state.conn.clone() else {
            return Ok(false);
        };
        match conn.declare_queue(&self.lease_declaration()).await {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == ErrorKind::Locked => {
                state.runs = None;
                Ok(false)
            }
            Err(error) => {
                // A connection in trouble: a new one next time (the lease went with it).
                state.runs = None;
                state.conn = None;
                let _ = conn.close().await;
                Err(error)
            }
        }
    }

    async fn release(&self, _owner: &str) -> Result<()> {
        self.close().await
    }

    async fn runs(&self) -> Result<HashMap<String, Run>> {
        let mut state = self.state.lock().await;
        if let Some(runs) = &state.runs {
            return Ok(runs.clone());
        }
        let Some(conn) = state.conn.clone() else {
            return Err(lease_lost(&self.lease_queue));
        };
        let runs = AmqpStore::read(&conn, &self.runs_queue).await?;
        state.runs = Some(runs.clone());
        Ok(runs)
    }

    async fn record(&self, _owner: &str, entry: &str, run: Run) -> Result<()> {
        let mut state = self.state.lock().await;
        let (Some(conn), Some(mut runs)) = (state.conn.clone(), state.runs.clone()) else {
            return Err(lease_lost(&self.lease_queue));
        };
        runs.insert(entry.to_owned(), run);
        let doc: serde_json::Map<String, serde_json::Value> = runs
            .iter()
            .map(|(name, run)| (name.clone(), run.to_value()))
            .collect();
        // Over the lease's connection, confirmed: written only while the lease is held.
        let written = conn
            .producer()
            .routing_key(self.runs_queue.as_str())
            .message(&doc)
            .delivery_mode(DeliveryMode::Persistent)
            .send()
            .await;
        match written {
            Ok(()) => {
                state.runs = Some(runs);
                Ok(())
            }
            Err(error) => {
                state.runs = None;
                state.conn = None;
                Err(lease_lost(&self.lease_queue).with_source(error))
            }
        }
    }
}
