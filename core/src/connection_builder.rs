//! [`ConnectionBuilder`]: a connection opened under a [`RetryPolicy`], with a
//! [`FailoverStrategy`] and a serializer registry of its own.

use std::fmt;
use std::sync::Arc;

use kombu_serializers::Registry;

use crate::connection::Connection;
use crate::error::{Error, ErrorKind, Result};
use crate::failover::FailoverStrategy;
use crate::retry::{OnRetry, RetryEvent, RetryPolicy, report};
use crate::transport::{BrokerConnection, transport_for};
use crate::url::BrokerUrl;

/// Opens a [`Connection`] with options: made by [`Connection::builder`].
///
/// - [`retry_policy`](ConnectionBuilder::retry_policy): connecting is retried under it (each
///   try is one round over every failover URL), and so are the connection's declarations
///   ([`Connection::declare_queue`], ...) and its producers' publishes when they have no
///   policy of their own. Without it (and with [`Connection::open`]) a connection tries each
///   URL once and declares without retrying, as before.
/// - [`failover_strategy`](ConnectionBuilder::failover_strategy): the order of the failover
///   URLs (else the first URL's `failover_strategy` option, else round-robin).
/// - [`on_retry`](ConnectionBuilder::on_retry): sees each retry of the connection's own
///   operations (for logs and metrics).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kombu_core::Result<()> {
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use kombu_core::{Connection, FailoverStrategy, RetryPolicy};
///
/// # kombu_core::transport::memory::register();
/// let retries = Arc::new(AtomicU32::new(0));
/// let seen = retries.clone();
/// let conn = Connection::builder("memory://doc-builder;memory://doc-builder-spare")
///     .retry_policy(RetryPolicy::default().deadline(Some(Duration::from_secs(10))))
///     .failover_strategy(FailoverStrategy::RoundRobin)
///     .on_retry(move |_| {
///         seen.fetch_add(1, Ordering::Relaxed);
///     })
///     .open()
///     .await?;
/// assert_eq!(conn.url().host(), Some("doc-builder"));
/// assert_eq!(retries.load(Ordering::Relaxed), 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ConnectionBuilder {
    url: String,
    registry: Registry,
    retry: Option<RetryPolicy>,
    strategy: Option<FailoverStrategy>,
    on_retry: Option<OnRetry>,
}

impl fmt::Debug for ConnectionBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry passwords: shown only once parsed and masked.
        let urls = BrokerUrl::parse_failover(&self.url)
            .map(|all| all.iter().map(ToString::to_string).collect::<Vec<_>>())
            .unwrap_or_default();
        f.debug_struct("ConnectionBuilder")
            .field("urls", &urls)
            .field("retry", &self.retry)
            .field("strategy", &self.strategy)
            .finish_non_exhaustive()
    }
}

impl ConnectionBuilder {
    pub(crate) fn new(url: &str) -> Self {
        ConnectionBuilder {
            url: url.to_owned(),
            registry: Registry::default(),
            retry: None,
            strategy: None,
            on_retry: None,
        }
    }

    /// A serializer registry of your own (extra serializers or compressors).
    #[must_use]
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Connects, declares and (for producers without a policy of their own) publishes under
    /// `policy`. See the [type](ConnectionBuilder) docs.
    #[must_use]
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// The order in which failover URLs are tried (overrides the URL's `failover_strategy`).
    #[must_use]
    pub fn failover_strategy(mut self, strategy: FailoverStrategy) -> Self {
        self.strategy = Some(strategy);
        self
    }

    /// Calls `callback` before each retry of connecting or declaring, and of publishes of
    /// producers that have no callback of their own.
    #[must_use]
    pub fn on_retry(mut self, callback: impl Fn(&RetryEvent<'_>) + Send + Sync + 'static) -> Self {
        self.on_retry = Some(OnRetry::new(callback));
        self
    }

    /// Connects: one round over the failover URLs in the strategy's order, again under the
    /// retry policy while every URL fails recoverably. A failure that is not recoverable (a
    /// bad URL, a refused login) stops at once.
    pub async fn open(self) -> Result<Connection> {
        let alternates = BrokerUrl::parse_failover(&self.url)?;
        let strategy = match self.strategy {
            Some(strategy) => strategy,
            None => FailoverStrategy::from_urls(&alternates)?,
        };
        let policy = self.retry.clone().unwrap_or_else(RetryPolicy::never);
        let (candidate, broker) = policy
            .run(
                || connect_round(&alternates, strategy),
                |event| report("connect", event, self.on_retry.as_ref()),
            )
            .await?;
        let default_channel = broker.channel().await?;
        Ok(Connection::from_parts(
            candidate,
            alternates,
            broker,
            default_channel,
            self.registry,
            strategy,
            self.retry,
            self.on_retry,
        ))
    }
}

/// Tries each of `alternates` once, in `strategy`'s order; the first that connects, else the
/// last recoverable error (or the first one that is not).
async fn connect_round(
    alternates: &[BrokerUrl],
    strategy: FailoverStrategy,
) -> Result<(BrokerUrl, Arc<dyn BrokerConnection>)> {
    let order = strategy.order(alternates.len(), 0);
    let mut last_error = None;
    for (n, &i) in order.iter().enumerate() {
        let candidate = &alternates[i];
        let Some(transport) = transport_for(candidate) else {
            return Err(Error::new(
                ErrorKind::InvalidUrl,
                format!(
                    "no transport for scheme {:?} in {candidate} (registered: {}); enable \
                     the matching feature of the kombu crate",
                    candidate.scheme(),
                    crate::transport::registered_schemes().join(", ")
                ),
            ));
        };
        match transport
            .connect_failover(candidate, alternates, strategy)
            .await
        {
            Ok(broker) => return Ok((candidate.clone(), broker)),
            Err(e) if e.is_recoverable() => {
                // The last one's error is returned: logging it too would say it twice.
                if n + 1 < order.len() {
                    tracing::warn!(url = %candidate, error = %format_args!("{e:#}"), "broker unreachable, trying the next URL");
                }
                last_error = Some(e.context(format!("connect to {candidate}")));
            }
            Err(e) => return Err(e.context(format!("connect to {candidate}"))),
        }
    }
    Err(last_error
        .unwrap_or_else(|| Error::new(ErrorKind::Connection, "no broker URL could be used")))
}

impl From<&str> for ConnectionBuilder {
    /// A builder for a URL (a `;`-separated failover list), as [`Connection::builder`].
    fn from(url: &str) -> Self {
        ConnectionBuilder::new(url)
    }
}

impl From<String> for ConnectionBuilder {
    /// A builder for a URL (a `;`-separated failover list), as [`Connection::builder`].
    fn from(url: String) -> Self {
        ConnectionBuilder::new(&url)
    }
}

impl From<&Connection> for ConnectionBuilder {
    /// A builder for new connections with `conn`'s settings: its failover URLs (in their
    /// written order), registry, failover strategy, retry policy and retry callback.
    fn from(conn: &Connection) -> Self {
        let url = conn
            .alternates()
            .iter()
            .map(BrokerUrl::expose)
            .collect::<Vec<_>>()
            .join(";");
        ConnectionBuilder {
            url,
            registry: conn.registry().clone(),
            retry: conn.retry_policy().cloned(),
            strategy: Some(conn.failover_strategy()),
            on_retry: conn.on_retry().cloned(),
        }
    }
}
