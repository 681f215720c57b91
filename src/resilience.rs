//! Retries, failover and pools in the facade: [`Connection::builder`], [`Connection::ensure`],
//! [`ConnectionBuilder`] and [`ConnectionPool`], which install this crate's transports before
//! they open anything (as [`Connection::open`] does).

use std::future::Future;
use std::time::Duration;

use crate::{
    Connection, FailoverStrategy, PooledConnection, Result, RetryEvent, RetryPolicy, install,
    serializers,
};

/// Opens a [`Connection`] with options: a [`RetryPolicy`] for connecting, declaring and
/// publishing, a [`FailoverStrategy`], a serializer registry, a retry callback. Made by
/// [`Connection::builder`]; see `kombu_core::ConnectionBuilder` for the details.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kombu::Result<()> {
/// use std::time::Duration;
/// use kombu::{Connection, FailoverStrategy, RetryPolicy};
///
/// let conn = Connection::builder("memory://facade-builder;memory://facade-builder-spare")
///     .retry_policy(RetryPolicy::default().deadline(Some(Duration::from_secs(60))))
///     .failover_strategy(FailoverStrategy::Shuffle)
///     .on_retry(|event| eprintln!("retry {}: {}", event.attempt, event.error))
///     .open()
///     .await?;
/// assert_eq!(conn.failover_strategy(), FailoverStrategy::Shuffle);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ConnectionBuilder(kombu_core::ConnectionBuilder);

impl ConnectionBuilder {
    /// A serializer registry of your own (extra serializers or compressors).
    #[must_use]
    pub fn registry(self, registry: serializers::Registry) -> Self {
        ConnectionBuilder(self.0.registry(registry))
    }

    /// Connects, declares and (for producers without a policy of their own) publishes under
    /// `policy`. Without one, a connection tries each URL once and declares without retrying.
    #[must_use]
    pub fn retry_policy(self, policy: RetryPolicy) -> Self {
        ConnectionBuilder(self.0.retry_policy(policy))
    }

    /// The order in which failover URLs are tried (overrides the first URL's
    /// `failover_strategy` option; round-robin by default).
    #[must_use]
    pub fn failover_strategy(self, strategy: FailoverStrategy) -> Self {
        ConnectionBuilder(self.0.failover_strategy(strategy))
    }

    /// Calls `callback` before each retry of connecting or declaring, and of publishes of
    /// producers that have no callback of their own.
    #[must_use]
    pub fn on_retry(self, callback: impl Fn(&RetryEvent<'_>) + Send + Sync + 'static) -> Self {
        ConnectionBuilder(self.0.on_retry(callback))
    }

    /// Installs this crate's transports ([`install`]) and connects: one round over the
    /// failover URLs in the strategy's order, again under the retry policy while every URL
    /// fails recoverably.
    pub async fn open(self) -> Result<Connection> {
        install();
        self.0.open().await.map(Connection)
    }
}

impl From<ConnectionBuilder> for kombu_core::ConnectionBuilder {
    fn from(builder: ConnectionBuilder) -> Self {
        builder.0
    }
}

impl From<&Connection> for kombu_core::ConnectionBuilder {
    /// A builder for new connections with `conn`'s settings (for [`ConnectionPool::new`]).
    fn from(conn: &Connection) -> Self {
        kombu_core::ConnectionBuilder::from(&conn.0)
    }
}

impl Connection {
    /// Starts a connection with options: a retry policy for connecting, declaring and
    /// publishing, a failover strategy, a registry. See [`ConnectionBuilder`].
    pub fn builder(url: &str) -> ConnectionBuilder {
        ConnectionBuilder(kombu_core::Connection::builder(url))
    }

    /// The retry policy the connection was built with, if any: declarations run under it, and
    /// producers start with it (else with [`RetryPolicy::default`]).
    pub fn retry_policy(&self) -> Option<&RetryPolicy> {
        self.0.retry_policy()
    }

    /// The order in which the failover URLs are tried.
    pub fn failover_strategy(&self) -> FailoverStrategy {
        self.0.failover_strategy()
    }

    /// Runs `op` under `policy` (kombu's `Connection.ensure`): again after each error the
    /// policy retries (recoverable ones, and not those whose outcome is unknown unless
    /// [`RetryPolicy::retry_unknown`] is on); returns the first success or the last error.
    /// The transports reconnect by themselves; `op` is simply run again.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> kombu::Result<()> {
    /// use kombu::{Connection, Queue, RetryPolicy};
    ///
    /// let conn = Connection::open("memory://facade-ensure").await?;
    /// let policy = RetryPolicy::default().max_retries(Some(5));
    /// let jobs = Queue::new("jobs");
    /// conn.ensure(&policy, || conn.declare_queue(&jobs)).await?;
    /// assert!(conn.queue_exists("jobs").await?);
    /// # Ok(()) }
    /// ```
    pub async fn ensure<T, F, Fut>(&self, policy: &RetryPolicy, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.0.ensure(policy, op).await
    }

    /// As [`Connection::ensure`], calling `on_retry` before each retry (kombu's `errback`).
    pub async fn ensure_with<T, F, Fut, R>(
        &self,
        policy: &RetryPolicy,
        on_retry: R,
        op: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
        R: FnMut(&RetryEvent<'_>),
    {
        self.0.ensure_with(policy, on_retry, op).await
    }
}

/// A bounded pool of connections (kombu's `kombu.pools.connections`): at most `max` open, an
/// acquire waits up to its timeout for one to be free, connections lost for good are replaced.
/// Installs this crate's transports when made. Guards dereference to the core connection type
/// (`kombu_core::Connection`, the same methods as [`Connection`]).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kombu::Result<()> {
/// use std::time::Duration;
/// use kombu::{ConnectionPool, ProducerPool, Queue};
///
/// let connections = ConnectionPool::new("memory://facade-pool", 4)
///     .acquire_timeout(Duration::from_secs(5));
/// let producers = ProducerPool::new(connections.clone())
///     .configure(|p| p.routing_key("jobs").declare(Queue::new("jobs")));
/// producers.acquire().await?.publish(&1).await?;
/// assert_eq!(connections.acquire().await?.queue_size("jobs").await?, 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ConnectionPool(kombu_core::ConnectionPool);

impl ConnectionPool {
    /// A pool of at most `max` connections (at least 1) opened from a URL, a
    /// [`ConnectionBuilder`], or a [`Connection`] whose settings new connections copy. Nothing
    /// is opened before the first acquire.
    pub fn new(source: impl Into<kombu_core::ConnectionBuilder>, max: usize) -> ConnectionPool {
        install();
        ConnectionPool(kombu_core::ConnectionPool::new(source, max))
    }

    /// How long an acquire may take, the wait for a free connection and the opening of a new
    /// one together, before failing with [`ErrorKind::Timeout`](crate::ErrorKind::Timeout)
    /// (10 s unless set).
    #[must_use]
    pub fn acquire_timeout(self, timeout: Duration) -> ConnectionPool {
        ConnectionPool(self.0.acquire_timeout(timeout))
    }

    /// The most connections this pool holds.
    pub fn max(&self) -> usize {
        self.0.max()
    }

    /// Connections given out now.
    pub fn in_use(&self) -> usize {
        self.0.in_use()
    }

    /// Connections opened and waiting to be given out.
    pub fn idle(&self) -> usize {
        self.0.idle()
    }

    /// Connections open now (in use plus idle).
    pub fn size(&self) -> usize {
        self.0.size()
    }

    /// A connection, idle or newly opened, waiting up to the acquire timeout while all `max`
    /// are in use; it goes back to the pool when the guard is dropped.
    pub async fn acquire(&self) -> Result<PooledConnection> {
        self.0.acquire().await
    }

    /// Closes the idle connections and refuses further acquires.
    pub async fn close(&self) -> Result<()> {
        self.0.close().await
    }
}

impl From<ConnectionPool> for kombu_core::ConnectionPool {
    fn from(pool: ConnectionPool) -> Self {
        pool.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorKind, ProducerPool, Queue};

    #[tokio::test]
    async fn pools_open_from_a_url_a_builder_or_a_connection_with_transports_installed()
    -> Result<()> {
        let conn = Connection::builder("memory://facade-pool-a;memory://facade-pool-b")
            .retry_policy(RetryPolicy::default().max_retries(Some(1)))
            .open()
            .await?;
        for pool in [
            ConnectionPool::new("memory://facade-pool-a", 1),
            ConnectionPool::new(Connection::builder("memory://facade-pool-a"), 1),
            ConnectionPool::new(&conn, 1),
        ] {
            let pool = pool.acquire_timeout(Duration::from_millis(20));
            let held = pool.acquire().await?;
            assert_eq!(held.url().host(), Some("facade-pool-a"));
            assert_eq!(
                pool.acquire().await.expect_err("max 1").kind(),
                ErrorKind::Timeout
            );
            drop(held);
            let producers = ProducerPool::new(pool.clone()).configure(|p| {
                p.routing_key("facade-pool")
                    .declare(Queue::new("facade-pool"))
            });
            producers.acquire().await?.publish("x").await?;
            pool.close().await?;
        }
        assert_eq!(conn.queue_size("facade-pool").await?, 3);
        assert_eq!(ConnectionPool::new(&conn, 2).max(), 2);
        Ok(())
    }
}
