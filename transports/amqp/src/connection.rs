//! The broker connection: one lapin connection, replaced after it drops (recovery), and the
//! topology this connection declared, replayed on every new one.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use kombu_core::transport::{BrokerConnection, Channel};
use kombu_core::{
    Binding, BrokerUrl, Capabilities, Error, ErrorKind, Exchange, FailoverStrategy, LinkReporter,
    LinkState, LinkWatch, Queue, Result,
};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use parking_lot::Mutex;

use crate::channel::AmqpChannel;
use crate::error::map;
use crate::mapping::{short_string, to_table};
use crate::options::AmqpOptions;

/// What this connection declared, in order, so that a new connection can declare it again.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Declared {
    Exchange(Exchange),
    Queue(Queue),
    Binding(String, Binding),
    /// An exchange bound to another (RabbitMQ's extension): what reaches `source` with a
    /// key matching `routing_key` goes on to `destination` too. Delayed delivery uses them.
    ExchangeBinding {
        destination: String,
        source: String,
        routing_key: String,
    },
}

pub(crate) struct Shared {
    /// The failover alternatives, the first one the URL this connection was opened with.
    pub(crate) urls: Vec<AmqpOptions>,
    /// The same alternatives as URLs (to say which one is in use); may be empty when the
    /// connection was opened from options alone.
    brokers: Vec<BrokerUrl>,
    /// The order in which recovery tries `urls`.
    strategy: FailoverStrategy,
    /// The lapin connection in use and its generation (bumped by every reconnect).
    current: Mutex<(Arc<lapin::Connection>, u64)>,
    /// One reconnect at a time.
    reconnecting: tokio::sync::Mutex<()>,
    pub(crate) topology: Mutex<Vec<Declared>>,
    closed: AtomicBool,
    /// Which of `urls` is in use.
    url_index: AtomicU64,
    /// The channels opened on this connection, to send what they hold back before it closes.
    channels: Mutex<Vec<Weak<dyn SendPending>>>,
    /// Set when closing begins (before the channels send what they hold back).
    closing: AtomicBool,
    /// Recovery rounds that failed, and the last one's error.
    failed_rounds: AtomicU64,
    last_failure: Mutex<String>,
    /// The connection's [`LinkState`](kombu_core::LinkState), as `Connection::link` shows it.
    link: LinkReporter,
    /// Connection attempts since the loss (reset once connected again).
    attempts: AtomicU32,
    /// One declaration of the delayed-delivery levels at a time (`delayed.rs`).
    pub(crate) delayed_setup: tokio::sync::Mutex<()>,
    /// Set once the delayed-delivery levels are declared on this connection (replayed after).
    pub(crate) delayed_ready: AtomicBool,
}

/// A channel's acks and publishes recorded but not yet written (see `channel.rs`).
#[async_trait]
pub(crate) trait SendPending: Send + Sync {
    /// Writes them (bounded in time).
    async fn send_pending(&self);
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConnection")
            .field("url", &self.options())
            .field("generation", &self.current.lock().1)
            .finish()
    }
}

/// Opens a lapin connection to `options`, within its connect timeout.
pub(crate) async fn connect(options: &AmqpOptions) -> Result<lapin::Connection> {
    let shown = format!(
        "amqp{}://{}:{}/{}",
        if options.tls { "s" } else { "" },
        options.host,
        options.port,
        options.vhost
    );
    let read = |option: &str, path: &str| {
        std::fs::read(path)
            .map_err(|e| Error::config(format!("{option}: cannot read {path:?}")).with_source(e))
    };
    let cert_chain = match &options.ca_certs {
        None => None,
        Some(path) => Some(String::from_utf8(read("ssl_ca_certs", path)?).map_err(|e| {
            Error::config(format!("ssl_ca_certs: {path:?} is not a PEM file")).with_source(e)
        })?),
    };
    let identity = match (&options.certfile, &options.keyfile) {
        (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
            pem: read("ssl_certfile", cert)?,
            key: read("ssl_keyfile", key)?,
        }),
        _ => None,
    };
    let tls = OwnedTLSConfig {
        identity,
        cert_chain,
    };
    let runtime =
        lapin::runtime::default_runtime().map_err(|e| map(e, format!("connect to {shown}")))?;
    let properties = lapin::ConnectionProperties::default().with_connection_name("kombu-rs".into());
    let connecting =
        lapin::Connection::connect_uri_with_config(options.uri(), properties, tls, runtime);
    // The URI carries the timeout for the TCP connect; this bounds the handshake too.
    match tokio::time::timeout(options.connect_timeout + Duration::from_secs(1), connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => {
            let error = map(e.clone(), format!("connect to {shown}"));
            // A refused login is not worth retrying; everything else is a connection error
            // (failover moves on), caused by lapin's.
            if error.kind() == ErrorKind::AccessRefused {
                return Err(error);
            }
            Err(Error::new(ErrorKind::Connection, format!("connect to {shown}")).with_source(e))
        }
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "connect to {shown}: no answer within {:?}",
                options.connect_timeout
            ),
        )),
    }
}

/// Declares what `entry` describes on `channel`.
pub(crate) async fn declare(channel: &lapin::Channel, entry: &Declared) -> Result<()> {
    match entry {
        Declared::Exchange(e) => declare_exchange(channel, e).await,
        Declared::Queue(q) => declare_queue_only(channel, q).await.map(|_| ()),
        Declared::Binding(q, b) => bind(channel, q, b).await,
        Declared::ExchangeBinding {
            destination,
            source,
            routing_key,
        } => channel
            .exchange_bind(
                short_string("exchange name", destination)?,
                short_string("exchange name", source)?,
                short_string("routing key", routing_key)?,
                lapin::options::ExchangeBindOptions::default(),
                no_arguments(),
            )
            .await
            .map_err(|e| {
                map(
                    e,
                    format!(
                        "bind exchange {destination:?} to exchange {source:?} with key {routing_key:?}"
                    ),
                )
            }),
    }
}

/// Whether kombu would declare this exchange: not the default exchange, not `amq.*`.
pub(crate) fn declarable(exchange: &str) -> bool {
    !exchange.is_empty() && !exchange.starts_with("amq.")
}

pub(crate) async fn declare_exchange(channel: &lapin::Channel, e: &Exchange) -> Result<()> {
    if !declarable(&e.name) {
        return Ok(());
    }
    let name = short_string("exchange name", &e.name)?;
    let kind = match e.kind {
        kombu_core::ExchangeKind::Direct => lapin::ExchangeKind::Direct,
        kombu_core::ExchangeKind::Topic => lapin::ExchangeKind::Topic,
        kombu_core::ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
        kombu_core::ExchangeKind::Headers => lapin::ExchangeKind::Headers,
    };
    channel
        .exchange_declare(
            name,
            kind,
            ExchangeDeclareOptions {
                durable: e.durable,
                auto_delete: e.auto_delete,
                ..ExchangeDeclareOptions::default()
            },
            to_table(&e.arguments),
        )
        .await
        .map_err(|err| map(err, format!("declare exchange {:?}", e.name)))
}

pub(crate) async fn declare_queue_only(channel: &lapin::Channel, q: &Queue) -> Result<u32> {
    q.validate()?;
    let name = short_string("queue name", &q.name)?;
    let declared = channel
        .queue_declare(
            name,
            QueueDeclareOptions {
                durable: q.durable,
                exclusive: q.exclusive,
                // kombu: exclusive implies auto_delete.
                auto_delete: q.auto_delete || q.exclusive,
                ..QueueDeclareOptions::default()
            },
            to_table(&q.declare_arguments()),
        )
        .await
        .map_err(|err| map(err, format!("declare queue {:?}", q.name)))?;
    Ok(declared.message_count())
}

pub(crate) async fn bind(channel: &lapin::Channel, queue: &str, b: &Binding) -> Result<()> {
    channel
        .queue_bind(
            short_string("queue name", queue)?,
            short_string("exchange name", &b.exchange)?,
            short_string("routing key", &b.routing_key)?,
            QueueBindOptions::default(),
            to_table(&b.arguments),
        )
        .await
        .map_err(|err| {
            map(
                err,
                format!(
                    "bind queue {queue:?} to exchange {:?} with key {:?}",
                    b.exchange, b.routing_key
                ),
            )
        })
}

/// How often the watcher looks at the connection besides lapin's events.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// The watcher's pause after a recovery that failed.
const WATCH_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// Recovers a dropped connection in the background, without waiting for it to be used: woken by
/// the lapin connection's events (and every [`WATCH_EVERY`]), it reconnects (redeclaring the
/// topology) when the connection in use is down. Ends with the connection, or when recovery is
/// off.
fn spawn_watcher(me: Weak<Shared>) {
    use futures::StreamExt;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (events, generation) = {
                let Some(shared) = me.upgrade() else { return };
                if shared.is_closed() || !shared.options().recover {
                    return;
                }
                let current = shared.current.lock();
                (current.0.events_listener(), current.1)
            };
            let mut events = Some(Box::pin(events));
            loop {
                match events.as_mut() {
                    Some(stream) => {
                        tokio::select! {
                            event = stream.next() => if event.is_none() { events = None },
                            _ = tick.tick() => {}
                        }
                    }
                    None => {
                        tick.tick().await;
                    }
                }
                let Some(shared) = me.upgrade() else { return };
                if shared.is_closed() {
                    return;
                }
                if !shared.connection_alive() {
                    if let Err(error) = shared.connection().await {
                        tracing::warn!(%error, "AMQP connection not recovered in the background");
                        drop(shared);
                        // Refused logins and unreachable brokers are tried again, slowly.
                        tokio::time::sleep(WATCH_AFTER_FAILURE).await;
                    }
                    break;
                }
                if shared.current.lock().1 != generation {
                    break; // recovered on use: watch the new connection
                }
            }
        }
    });
}

impl Shared {
    pub(crate) async fn open(
        urls: Vec<AmqpOptions>,
        brokers: Vec<BrokerUrl>,
        strategy: FailoverStrategy,
    ) -> Result<Arc<Shared>> {
        let first = urls
            .first()
            .ok_or_else(|| Error::config("no AMQP URL given"))?;
        let conn = connect(first).await?;
        let shared = Arc::new(Shared {
            urls,
            brokers,
            strategy,
            current: Mutex::new((Arc::new(conn), 0)),
            reconnecting: tokio::sync::Mutex::new(()),
            topology: Mutex::new(Vec::new()),
            delayed_setup: tokio::sync::Mutex::new(()),
            delayed_ready: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            url_index: AtomicU64::new(0),
            channels: Mutex::new(Vec::new()),
            closing: AtomicBool::new(false),
            failed_rounds: AtomicU64::new(0),
            last_failure: Mutex::new(String::new()),
            link: LinkReporter::new(),
            attempts: AtomicU32::new(0),
        });
        spawn_watcher(Arc::downgrade(&shared));
        Ok(shared)
    }

    /// The options of the URL in use.
    pub(crate) fn options(&self) -> &AmqpOptions {
        let i = usize::try_from(self.url_index.load(Ordering::Relaxed)).unwrap_or(0);
        // ok: `urls` is never empty (checked in `open`) and the index stays in range.
        self.urls.get(i).unwrap_or(&self.urls[0])
    }

    /// The generation of the lapin connection in use (bumped by every reconnect).
    pub(crate) fn generation(&self) -> u64 {
        self.current.lock().1
    }

    /// Whether the lapin connection in use is up.
    pub(crate) fn connection_alive(&self) -> bool {
        self.current.lock().0.status().connected()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether closing has begun (it may still be sending what channels hold back).
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire) || self.is_closed()
    }

    /// A live lapin connection and its generation, reconnecting first when the current one
    /// dropped (and recovery is on).
    pub(crate) async fn connection(&self) -> Result<(Arc<lapin::Connection>, u64)> {
        if self.is_closed() {
            return Err(Error::closed("the AMQP connection was closed"));
        }
        {
            let current = self.current.lock();
            if current.0.status().connected() {
                return Ok((current.0.clone(), current.1));
            }
        }
        if !self.options().recover {
            let error = Error::new(
                ErrorKind::Connection,
                "the AMQP connection dropped (recovery is off: recover=false)",
            );
            self.link.report(LinkState::Failed {
                error: error.to_string(),
            });
            return Err(error);
        }
        self.reconnect().await
    }

    /// The URL in use, when the connection knows its URLs.
    pub(crate) fn url_in_use(&self) -> Option<BrokerUrl> {
        let i = usize::try_from(self.url_index.load(Ordering::Relaxed)).ok()?;
        self.brokers.get(i).cloned()
    }

    /// Reconnects (single flight): tries every failover URL in turn, backing off exponentially
    /// between rounds, until one connects or `recover_timeout` passes; then declares this
    /// connection's topology again.
    async fn reconnect(&self) -> Result<(Arc<lapin::Connection>, u64)> {
        let failed_before = self.failed_rounds.load(Ordering::Acquire);
        let _one = self.reconnecting.lock().await;
        {
            let current = self.current.lock();
            if current.0.status().connected() {
                return Ok((current.0.clone(), current.1));
            }
        }
        // A round that ended while this waited failed: its outcome is this one's too (else a
        // caller could wait for two whole rounds).
        if self.failed_rounds.load(Ordering::Acquire) != failed_before {
            return Err(Error::new(
                ErrorKind::Connection,
                format!(
                    "AMQP connection lost and not recovered: {}",
                    self.last_failure.lock()
                ),
            ));
        }
        let result = self.reconnect_round().await;
        if let Err(e) = &result {
            *self.last_failure.lock() = e.to_string();
            self.failed_rounds.fetch_add(1, Ordering::AcqRel);
        }
        result
    }

    /// One recovery round of [`reconnect`](Shared::reconnect).
    async fn reconnect_round(&self) -> Result<(Arc<lapin::Connection>, u64)> {
        let timeout = self.options().recover_timeout;
        let started = tokio::time::Instant::now();
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build();
        let start = usize::try_from(self.url_index.load(Ordering::Relaxed)).unwrap_or(0);
        let mut last_error = None;
        if self.attempts.load(Ordering::Acquire) == 0 {
            self.link.report(LinkState::Reconnecting {
                attempt: 0,
                error: "the AMQP connection dropped".to_owned(),
            });
        }
        loop {
            // Round-robin: the one in use first (it may be back already), then the next ones;
            // shuffle: a new random order each round.
            for index in self.strategy.order(self.urls.len(), start) {
                if self.is_closed() {
                    return Err(Error::closed("the AMQP connection was closed"));
                }
                let options = &self.urls[index];
                match connect(options).await {
                    Ok(conn) => match self.replay(&conn).await {
                        Ok(()) if self.is_closed() => {
                            // Closed while this connected: the new connection is not kept.
                            let _ = conn.close(200, "OK".into()).await;
                            return Err(Error::closed("the AMQP connection was closed"));
                        }
                        Ok(()) => {
                            self.url_index.store(index as u64, Ordering::Relaxed);
                            self.attempts.store(0, Ordering::Release);
                            self.link.report(LinkState::Connected);
                            let mut current = self.current.lock();
                            current.0 = Arc::new(conn);
                            current.1 += 1;
                            tracing::info!(
                                host = %options.host,
                                port = options.port,
                                generation = current.1,
                                "AMQP connection recovered"
                            );
                            return Ok((current.0.clone(), current.1));
                        }
                        Err(e) => last_error = Some(self.attempt_failed(e)),
                    },
                    Err(e) if e.kind() == ErrorKind::AccessRefused => {
                        self.attempts.store(0, Ordering::Release);
                        self.link.report(LinkState::Failed {
                            error: e.to_string(),
                        });
                        return Err(e);
                    }
                    Err(e) => last_error = Some(self.attempt_failed(e)),
                }
            }
            let delay = backoff.next().unwrap_or(Duration::from_secs(2));
            if started.elapsed() + delay > timeout {
                let error = last_error
                    .unwrap_or_else(|| {
                        Error::new(ErrorKind::Connection, "no AMQP URL could be reached")
                    })
                    .context(format!(
                        "AMQP connection lost and not recovered within {timeout:?}"
                    ));
                // This round gave up: the link says so, and the next round (the background
                // watcher tries again) reports Reconnecting from attempt 0.
                self.attempts.store(0, Ordering::Release);
                self.link.report(LinkState::Failed {
                    error: format!("{error:#}"),
                });
                return Err(error);
            }
            tracing::debug!(?delay, "AMQP broker unreachable; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Counts a failed connection attempt and reports it; returns the error.
    fn attempt_failed(&self, error: Error) -> Error {
        let attempt = self
            .attempts
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        self.link.report(LinkState::Reconnecting {
            attempt,
            error: error.to_string(),
        });
        error
    }

    /// The connection's link state, as a watch channel.
    pub(crate) fn link(&self) -> LinkWatch {
        self.link.subscribe()
    }

    /// Declares this connection's topology on a new connection.
    async fn replay(&self, conn: &lapin::Connection) -> Result<()> {
        let entries = self.topology.lock().clone();
        if entries.is_empty() {
            return Ok(());
        }
        let open = || async {
            conn.create_channel()
                .await
                .map_err(|e| map(e, "open a channel to redeclare the topology"))
        };
        let mut channel = open().await?;
        for entry in &entries {
            if let Err(e) = declare(&channel, entry).await {
                if e.kind() == ErrorKind::Connection || !conn.status().connected() {
                    return Err(e);
                }
                // An entity that cannot be declared the same way any more (someone redeclared
                // it differently) is reported, not fatal: the rest still recovers.
                tracing::warn!(error = %e, "redeclaring after a reconnect failed");
                channel = open().await?;
            }
        }
        let _ = channel.close(200, "OK".into()).await;
        Ok(())
    }

    /// Whether a declaration is recorded (made on this connection, replayed on the next).
    pub(crate) fn is_recorded(&self, entry: &Declared) -> bool {
        self.topology.lock().contains(entry)
    }

    /// Remembers a declaration for replay (once).
    pub(crate) fn record(&self, entry: Declared) {
        let mut topology = self.topology.lock();
        if !topology.contains(&entry) {
            // A redeclared queue or exchange replaces its earlier definition.
            topology.retain(|old| !same_entity(old, &entry));
            topology.push(entry);
        }
    }

    /// Forgets declarations that `gone` matches.
    pub(crate) fn forget(&self, gone: impl Fn(&Declared) -> bool) {
        self.topology.lock().retain(|d| !gone(d));
    }

    /// Remembers a channel, so that closing the connection writes what it holds back first.
    pub(crate) fn register(&self, channel: Weak<dyn SendPending>) {
        let mut channels = self.channels.lock();
        channels.retain(|c| c.strong_count() > 0);
        channels.push(channel);
    }

    pub(crate) async fn close(&self) -> Result<()> {
        self.closing.store(true, Ordering::Release);
        let open: Vec<Arc<dyn SendPending>> = self
            .channels
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        futures::future::join_all(open.iter().map(|channel| channel.send_pending())).await;
        self.closed.store(true, Ordering::Release);
        self.link.report(LinkState::Closed);
        let conn = self.current.lock().0.clone();
        if conn.status().connected() {
            conn.close(200, "OK".into())
                .await
                .map_err(|e| map(e, "close the AMQP connection"))?;
        }
        Ok(())
    }
}

fn same_entity(a: &Declared, b: &Declared) -> bool {
    match (a, b) {
        (Declared::Exchange(x), Declared::Exchange(y)) => x.name == y.name,
        (Declared::Queue(x), Declared::Queue(y)) => x.name == y.name,
        _ => false,
    }
}

/// A connection to RabbitMQ (or any AMQP 0-9-1 broker). Channels are multiplexed over it.
#[derive(Debug, Clone)]
pub struct AmqpConnection {
    pub(crate) shared: Arc<Shared>,
}

impl AmqpConnection {
    /// Connects to the first of `urls` (failover alternatives for recovery, tried in turn).
    pub async fn open(urls: Vec<AmqpOptions>) -> Result<AmqpConnection> {
        Ok(AmqpConnection {
            shared: Shared::open(urls, Vec::new(), FailoverStrategy::RoundRobin).await?,
        })
    }

    /// Connects to the first of `urls`, whose URLs are `brokers` (in the same order); after a
    /// loss, recovery tries them in `strategy`'s order.
    pub(crate) async fn open_failover(
        urls: Vec<AmqpOptions>,
        brokers: Vec<BrokerUrl>,
        strategy: FailoverStrategy,
    ) -> Result<AmqpConnection> {
        Ok(AmqpConnection {
            shared: Shared::open(urls, brokers, strategy).await?,
        })
    }

    /// How many times this connection was re-established after dropping.
    pub fn recoveries(&self) -> u64 {
        self.shared.current.lock().1
    }
}

/// What RabbitMQ does.
pub(crate) fn capabilities(confirms: bool) -> Capabilities {
    let mut c = Capabilities::none();
    c.direct = true;
    c.topic = true;
    c.fanout = true;
    c.headers = true;
    c.priorities = true;
    c.message_ttl = true;
    c.max_length = true;
    c.dead_lettering = true;
    c.persistent = true;
    c.shared_between_processes = true;
    c.restore_on_drop = true;
    c.publisher_confirms = confirms;
    // kombu's native delayed delivery (delayed.rs).
    c.delayed_delivery = true;
    // Returned messages are matched to their publish through the confirm.
    c.mandatory = confirms;
    c
}

#[async_trait]
impl BrokerConnection for AmqpConnection {
    fn capabilities(&self) -> Capabilities {
        capabilities(self.shared.options().confirm_publish)
    }

    async fn channel(&self) -> Result<Arc<dyn Channel>> {
        let channel = AmqpChannel::open(self.shared.clone()).await?;
        Ok(Arc::new(channel))
    }

    async fn close(&self) -> Result<()> {
        self.shared.close().await
    }

    fn url_in_use(&self) -> Option<BrokerUrl> {
        self.shared.url_in_use()
    }

    fn link(&self) -> LinkWatch {
        self.shared.link()
    }
}

/// An empty field table.
pub(crate) fn no_arguments() -> FieldTable {
    FieldTable::default()
}
