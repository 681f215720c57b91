//! Bounded pools of connections and producers, as kombu's `kombu.pools`: a service whose many
//! tasks publish shares a few broker connections instead of opening one per task.
//!
//! [`ConnectionPool`] holds at most `max` connections, opened when first needed and kept for
//! reuse; [`acquire`](ConnectionPool::acquire) waits up to the pool's acquire timeout for one to
//! be free ([`ErrorKind::Timeout`] after that) and returns a guard that gives the connection
//! back when dropped. A connection whose link failed for good or closed
//! ([`LinkState::Failed`], [`LinkState::Closed`]) is not given out again: the pool opens a new
//! one in its place. [`ProducerPool`] hands out producers on the pool's connections.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use kombu_core::{ConnectionPool, ProducerPool, Queue};
//!
//! # kombu_core::transport::memory::register();
//! let connections = ConnectionPool::new("memory://doc-pool", 4)
//!     .acquire_timeout(Duration::from_secs(5));
//! let producers = ProducerPool::new(connections.clone())
//!     .configure(|producer| producer.routing_key("jobs").declare(Queue::new("jobs")));
//!
//! let tasks: Vec<_> = (0..20)
//!     .map(|n| {
//!         let producers = producers.clone();
//!         tokio::spawn(async move {
//!             let producer = producers.acquire().await?;
//!             producer.publish(&n).await
//!         })
//!     })
//!     .collect();
//! for task in tasks {
//!     task.await??;
//! }
//! assert!(connections.size() <= 4);
//! let conn = connections.acquire().await?;
//! assert_eq!(conn.queue_size("jobs").await?, 20);
//! # Ok(()) }
//! ```

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::connection::Connection;
use crate::connection_builder::ConnectionBuilder;
use crate::error::{Error, ErrorKind, Result};
use crate::link::LinkState;
use crate::producer::Producer;

/// How long [`ConnectionPool::acquire`] waits for a free connection by default.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// A bounded pool of connections to one broker (or failover list). Cheap to clone: clones
/// share the pool. See the [module](crate::pool) docs.
#[derive(Clone)]
pub struct ConnectionPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    builder: ConnectionBuilder,
    max: usize,
    acquire_timeout: Duration,
    permits: Arc<Semaphore>,
    /// Connections opened and not in use, the most recently returned last.
    idle: Mutex<Vec<Connection>>,
}

impl fmt::Debug for ConnectionPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionPool")
            .field("builder", &self.inner.builder)
            .field("max", &self.inner.max)
            .field("acquire_timeout", &self.inner.acquire_timeout)
            .field("in_use", &self.in_use())
            .field("idle", &self.idle())
            .finish()
    }
}

/// Whether a connection may be given out again: not failed for good, not closed.
fn usable(conn: &Connection) -> bool {
    !matches!(
        *conn.link().borrow(),
        LinkState::Failed { .. } | LinkState::Closed
    )
}

impl ConnectionPool {
    /// A pool of at most `max` connections (at least 1) opened from `source`: a URL (a
    /// `;`-separated failover list), a [`ConnectionBuilder`] (retry policy, failover strategy,
    /// registry), or a [`Connection`] whose settings new connections copy (as kombu's
    /// `connections[conn]`: the pool opens connections of its own, the given one is not
    /// among them). No connection is opened before the first [`acquire`](Self::acquire).
    pub fn new(source: impl Into<ConnectionBuilder>, max: usize) -> ConnectionPool {
        let max = max.max(1);
        ConnectionPool {
            inner: Arc::new(PoolInner {
                builder: source.into(),
                max,
                acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
                permits: Arc::new(Semaphore::new(max)),
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    /// How long [`acquire`](Self::acquire) may take (the wait for a free slot and the opening
    /// of a new connection together) before failing with [`ErrorKind::Timeout`]
    /// ([`DEFAULT_ACQUIRE_TIMEOUT`] unless set). Set it before cloning the pool: it makes a new
    /// pool with the same settings.
    #[must_use]
    pub fn acquire_timeout(self, timeout: Duration) -> ConnectionPool {
        let max = self.inner.max;
        ConnectionPool {
            inner: Arc::new(PoolInner {
                builder: self.inner.builder.clone(),
                max,
                acquire_timeout: timeout,
                permits: Arc::new(Semaphore::new(max)),
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The most connections this pool holds.
    pub fn max(&self) -> usize {
        self.inner.max
    }

    /// Connections given out now.
    pub fn in_use(&self) -> usize {
        self.inner.max - self.inner.permits.available_permits()
    }

    /// Connections opened and waiting to be given out.
    pub fn idle(&self) -> usize {
        self.inner.idle.lock().len()
    }

    /// Connections open now: in use plus idle (never more than [`max`](Self::max)).
    pub fn size(&self) -> usize {
        self.in_use() + self.idle()
    }

    /// A connection: an idle one if there is one (the most recently returned), else a new
    /// one, opened with the pool's settings, if fewer than `max` are open; else waits for one
    /// to be returned, up to the acquire timeout ([`ErrorKind::Timeout`]). The wait for a
    /// free slot is what the timeout bounds; opening a new connection follows the builder's
    /// retry policy. Idle connections whose link failed or closed are dropped and replaced.
    pub async fn acquire(&self) -> Result<PooledConnection> {
        let inner = &self.inner;
        // One bound for the whole acquire: the wait for a slot and the opening of a
        // connection in it.
        let now = tokio::time::Instant::now();
        // A timeout too long for the clock is a wait of thirty years.
        let until = now
            .checked_add(inner.acquire_timeout)
            .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400));
        let permit =
            match tokio::time::timeout_at(until, inner.permits.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => return Err(Error::closed("the connection pool was closed")),
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "no pooled connection free within {:?} (all {} in use)",
                            inner.acquire_timeout, inner.max
                        ),
                    ));
                }
            };
        let reused = loop {
            let Some(conn) = inner.idle.lock().pop() else {
                break None;
            };
            if usable(&conn) {
                break Some(conn);
            }
            tracing::debug!(url = %conn.url(), "pooled connection lost for good; replacing it");
        };
        let conn = match reused {
            Some(conn) => conn,
            None => match tokio::time::timeout_at(until, inner.builder.clone().open()).await {
                Ok(opened) => opened?,
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "no pooled connection within {:?}: opening a new one took too long",
                            inner.acquire_timeout
                        ),
                    ));
                }
            },
        };
        Ok(PooledConnection {
            conn,
            discarded: false,
            pool: self.inner.clone(),
            _permit: permit,
        })
    }

    /// Closes the idle connections and refuses further acquires ([`ErrorKind::Closed`]);
    /// connections in use are closed when they are returned.
    pub async fn close(&self) -> Result<()> {
        self.inner.permits.close();
        let idle = std::mem::take(&mut *self.inner.idle.lock());
        let mut first_error = None;
        for conn in idle {
            if let Err(e) = conn.close().await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// A connection taken from a [`ConnectionPool`]; dereferences to [`Connection`] and goes back
/// to the pool when dropped (unless its link failed or closed, or it was
/// [`discard`](PooledConnection::discard)ed).
pub struct PooledConnection {
    conn: Connection,
    discarded: bool,
    pool: Arc<PoolInner>,
    // Released after `drop` put the connection back: a waiting acquire then finds it idle.
    _permit: OwnedSemaphorePermit,
}

impl fmt::Debug for PooledConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PooledConnection").field(&self.conn).finish()
    }
}

impl PooledConnection {
    /// Drops the connection instead of returning it to the pool (after an error that makes it
    /// unusable to you); the pool opens a new one when needed.
    pub fn discard(mut self) {
        self.discarded = true;
    }
}

impl Deref for PooledConnection {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        if self.discarded {
            return;
        }
        // A clone shares the broker connection: this one is the pool's again.
        let conn = self.conn.clone();
        if self.pool.permits.is_closed() {
            // The pool was closed meanwhile: close this one too, in the background if a runtime
            // runs (a drop cannot wait).
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = conn.close().await;
                });
            }
            return;
        }
        if usable(&conn) {
            self.pool.idle.lock().push(conn);
        }
    }
}

/// Producers on a [`ConnectionPool`]'s connections, as kombu's `producers[conn]`. Cheap to
/// clone: clones share the pool.
#[derive(Clone)]
pub struct ProducerPool {
    connections: ConnectionPool,
    configure: Arc<dyn Fn(Producer) -> Producer + Send + Sync>,
}

impl fmt::Debug for ProducerPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProducerPool")
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

impl ProducerPool {
    /// Producers on `connections`' connections, with a connection's default producer settings
    /// (see [`configure`](ProducerPool::configure)). At most the connection pool's `max`
    /// producers are out at once.
    pub fn new(connections: impl Into<ConnectionPool>) -> ProducerPool {
        ProducerPool {
            connections: connections.into(),
            configure: Arc::new(|producer| producer),
        }
    }

    /// Sets up each producer handed out (exchange, routing key, serializer, retry policy,
    /// entities to declare).
    #[must_use]
    pub fn configure(
        mut self,
        configure: impl Fn(Producer) -> Producer + Send + Sync + 'static,
    ) -> ProducerPool {
        self.configure = Arc::new(configure);
        self
    }

    /// The connection pool the producers use.
    pub fn connections(&self) -> &ConnectionPool {
        &self.connections
    }

    /// A producer on a pooled connection (waits as [`ConnectionPool::acquire`] does).
    pub async fn acquire(&self) -> Result<PooledProducer> {
        let conn = self.connections.acquire().await?;
        let producer = (self.configure)(conn.producer());
        Ok(PooledProducer { producer, conn })
    }
}

/// A producer taken from a [`ProducerPool`]; dereferences to [`Producer`]; its connection goes
/// back to the pool when dropped.
#[derive(Debug)]
pub struct PooledProducer {
    producer: Producer,
    conn: PooledConnection,
}

impl PooledProducer {
    /// The pooled connection the producer publishes on.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

impl Deref for PooledProducer {
    type Target = Producer;

    fn deref(&self) -> &Producer {
        &self.producer
    }
}
