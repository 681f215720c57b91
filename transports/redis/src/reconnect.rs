//! Healing: the multiplexed connection every command goes over is replaced when it breaks.
//!
//! A command that fails with a connection-kind error (I/O, dropped, refused, a reply that
//! never came) marks the connection it went over broken (every command goes over a [`Conn`],
//! which does; a late failure on a connection already replaced leaves the new one alone).
//! The next command asks [`RedisBackend::conn`] for a connection and gets a new one: one
//! reconnection runs at a time (the others wait for it and use its result), attempts are
//! spaced by a back-off (100 ms, growing by 200 ms a try, at most 2 s), and each attempt
//! tries the failover alternatives in the connection's `failover_strategy` order: round-robin
//! (the default) from the one in use (a server that restarts is found again first) to the
//! ones after it, wrapping around; shuffle, a fresh random order each attempt. A failed attempt is a recoverable
//! [`ErrorKind::Connection`] error for the command that asked, so the caller's retry policy
//! (a consumer's, a publisher's) decides how long to keep going. The backend's epoch rises
//! when a loss is found (core's consumers then return what they had taken into their buffers
//! before it; takes made after it went over the new connection). Once a new connection is in
//! place, takes whose reply was lost are returned to their queues, and the exchanges,
//! queues and bindings declared through this backend are declared again (a server restarted
//! without persistence lost them). The [`LinkState`] is reported throughout.
//!
//! Dedicated connections heal on their own: watchers (`watch.rs`) and the PUB/SUB listener
//! (`fanout.rs`) open a new one after a failure.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use kombu_core::FailoverStrategy;
use kombu_core::transport::virtual_transport::{Backend, BindingRow};
use kombu_core::{
    BrokerUrl, Error, ErrorKind, Exchange, LinkReporter, LinkState, LinkWatch, Queue, Result,
};
use parking_lot::Mutex;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::time::Instant;

use crate::backend::RedisBackend;
use crate::connect;
use crate::options::Options;

/// The first pause between reconnection attempts.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// How much each further attempt adds to the pause.
const PAUSE_STEP: Duration = Duration::from_millis(200);
/// The longest pause between attempts.
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// One failover alternative: its options, its masked URL, the URL.
pub(crate) type Alternative = (Options, String, BrokerUrl);

/// The connection in use.
struct Current {
    conn: MultiplexedConnection,
    /// Which alternative it goes to.
    index: usize,
    /// Connections made before this one.
    generation: u64,
    /// A command on it failed as if it were dead.
    broken: AtomicBool,
}

/// Reconnection bookkeeping, under the single-flight lock.
#[derive(Default)]
struct Attempts {
    /// Attempts failed since the loss.
    failed: u32,
    /// No attempt before this.
    next: Option<Instant>,
}

/// What this backend declared, to declare again on a new connection.
#[derive(Default)]
pub(crate) struct Declared {
    exchanges: HashMap<String, Exchange>,
    queues: HashMap<String, Queue>,
    bindings: Vec<BindingRow>,
}

/// The backend's link to its server: the connection in use, its replacement, its state.
pub(crate) struct Link {
    current: ArcSwap<Current>,
    attempts: tokio::sync::Mutex<Attempts>,
    reporter: LinkReporter,
    /// Losses found ([`Backend::epoch`](kombu_core::transport::virtual_transport::Backend::epoch)).
    losses: Arc<AtomicU64>,
    /// The failover alternatives, in order; the first is the one opened.
    alternatives: Vec<Alternative>,
    /// The order a reconnection tries them in.
    strategy: FailoverStrategy,
    /// Takes whose reply was lost: `(token, most fields, queue)`.
    lost_takes: Mutex<Vec<(String, usize, String)>>,
    /// Entities declared through this backend.
    pub(crate) declared: Mutex<Declared>,
    /// Set from the moment a new connection is in place until what this backend declared is
    /// declared again on it: routing reads wait meanwhile ([`Link::replayed`]), so a publish
    /// to a server restarted empty is not routed before its bindings are back.
    replaying: AtomicBool,
    /// Wakes the routing reads once the replay is done.
    replay_done: tokio::sync::Notify,
}

impl Link {
    /// A link over a connection just opened to the first of `alternatives`.
    pub(crate) fn new(
        conn: MultiplexedConnection,
        alternatives: Vec<Alternative>,
        strategy: FailoverStrategy,
    ) -> Self {
        Link {
            current: ArcSwap::from_pointee(Current {
                conn,
                index: 0,
                generation: 0,
                broken: AtomicBool::new(false),
            }),
            attempts: tokio::sync::Mutex::new(Attempts::default()),
            reporter: LinkReporter::new(),
            losses: Arc::new(AtomicU64::new(0)),
            alternatives,
            strategy,
            lost_takes: Mutex::new(Vec::new()),
            declared: Mutex::new(Declared::default()),
            replaying: AtomicBool::new(false),
            replay_done: tokio::sync::Notify::new(),
        }
    }

    /// Returns once no replay of declarations is under way (at most [`REPLAY_WAIT`]: a
    /// replay that hangs does not hold routing forever). Holds no lock, so a command it is
    /// followed by may reconnect freely.
    pub(crate) async fn replayed(&self) {
        let until = Instant::now() + REPLAY_WAIT;
        while self.replaying.load(Ordering::Acquire) {
            let done = self.replay_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if !self.replaying.load(Ordering::Acquire) {
                return;
            }
            if tokio::time::timeout_at(until, done).await.is_err() {
                return;
            }
        }
    }

    /// Losses found so far.
    pub(crate) fn epoch(&self) -> u64 {
        self.losses.load(Ordering::Acquire)
    }

    /// The URL of the alternative in use.
    pub(crate) fn url_in_use(&self) -> Option<BrokerUrl> {
        let index = self.current.load().index;
        self.alternatives.get(index).map(|(_, _, url)| url.clone())
    }

    /// The link's state, as a watch channel.
    pub(crate) fn watch(&self) -> LinkWatch {
        self.reporter.subscribe()
    }

    /// Remembers a take whose reply was lost: its leases (fields `token1..=tokenN`) go back to
    /// `queue` once a new connection is in place.
    pub(crate) fn lost_take(&self, token: String, max: usize, queue: &str) {
        self.lost_takes.lock().push((token, max, queue.to_owned()));
    }
}

/// The connection a command goes over ([`RedisBackend::conn`]): the multiplexed connection in
/// use, which it marks broken when a command fails as if it were dead.
pub(crate) struct Conn {
    inner: MultiplexedConnection,
    current: Arc<Current>,
    link: Loss,
}

/// What a [`Conn`] updates when it finds its connection dead.
#[derive(Clone)]
struct Loss {
    reporter: LinkReporter,
    losses: Arc<AtomicU64>,
}

impl Conn {
    fn new(current: Arc<Current>, link: &Link) -> Self {
        Conn {
            inner: current.conn.clone(),
            current,
            link: Loss {
                reporter: link.reporter.clone(),
                losses: link.losses.clone(),
            },
        }
    }
}

/// Marks `current` broken when `result` says its connection is dead: the first to find it
/// counts the loss and reports it.
fn check<T>(current: &Current, link: &Loss, result: &redis::RedisResult<T>) {
    if let Err(err) = result
        && dead_connection(err)
        && !current.broken.swap(true, Ordering::AcqRel)
    {
        link.losses.fetch_add(1, Ordering::AcqRel);
        link.reporter.report(LinkState::Reconnecting {
            attempt: 0,
            error: err.to_string(),
        });
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let (current, link) = (&self.current, &self.link);
        let sent = self.inner.req_packed_command(cmd);
        Box::pin(async move {
            let result = sent.await;
            check(current, link, &result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let (current, link) = (&self.current, &self.link);
        let sent = self.inner.req_packed_commands(pipeline, offset, count);
        Box::pin(async move {
            let result = sent.await;
            check(current, link, &result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

/// Whether a command's failure means its connection is dead (or silent: a reply that did
/// not come in time, as across a network partition).
pub(crate) fn dead_connection(err: &redis::RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
}

/// Whether a failed write may have been carried out by the server: the command was sent and
/// its reply was lost.
pub(crate) fn maybe_written(error: Error) -> Error {
    // A refused connection carried nothing: the write is safe to try again.
    let refused = std::error::Error::source(&error)
        .and_then(|e| e.downcast_ref::<redis::RedisError>())
        .is_some_and(redis::RedisError::is_connection_refusal);
    match error.kind() {
        ErrorKind::Connection | ErrorKind::Timeout if !refused => error.with_outcome_unknown(),
        _ => error,
    }
}

/// An error and its first cause, for a [`LinkState`] (the redis crate's errors repeat their
/// source in their own text, so the whole chain says it twice).
fn described(error: &Error) -> String {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(next) = cause.and_then(std::error::Error::source) {
        cause = Some(next);
    }
    match cause {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

/// Longest a routing read waits for a replay of declarations ([`Link::replayed`]).
const REPLAY_WAIT: Duration = Duration::from_secs(5);

/// Ends a replay of declarations when dropped (done, or abandoned).
struct Replaying<'a>(&'a Link);

impl Drop for Replaying<'_> {
    fn drop(&mut self) {
        self.0.replaying.store(false, Ordering::Release);
        self.0.replay_done.notify_waiters();
    }
}

/// The pause before attempt `failed + 1`.
fn pause(failed: u32) -> Duration {
    (FIRST_PAUSE + PAUSE_STEP * failed.saturating_sub(1)).min(MAX_PAUSE)
}

impl RedisBackend {
    /// The multiplexed connection to send a command over: the one in use, or, when it broke,
    /// a new one (see the module docs). Fails (recoverably) while the server cannot be
    /// reached.
    // Not an `async fn`: see the comment inside.
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn conn(&self) -> impl Future<Output = Result<Conn>> + Send + '_ {
        // Not an `async fn`: the future is declared `Send`, since reconnecting declares again,
        // which sends commands through here (a cycle the compiler cannot see through).
        async move {
            let current = self.link.current.load_full();
            if !current.broken.load(Ordering::Acquire) {
                return Ok(Conn::new(current, &self.link));
            }
            let seen = current.generation;
            drop(current);
            let reconnect: BoxFuture<'_, Result<Conn>> = Box::pin(self.reconnect(seen));
            reconnect.await
        }
    }

    /// Replaces the broken connection of generation `seen`, one caller at a time.
    async fn reconnect(&self, seen: u64) -> Result<Conn> {
        let link = &self.link;
        let mut attempts = link.attempts.lock().await;
        {
            let current = link.current.load_full();
            if current.generation != seen || !current.broken.load(Ordering::Acquire) {
                // Another caller replaced it while this one waited.
                return Ok(Conn::new(current, link));
            }
        }
        if let Some(next) = attempts.next {
            tokio::time::sleep_until(next).await;
        }
        let mut last = None;
        let (from, n) = (link.current.load().index, link.alternatives.len());
        for index in link.strategy.order(n, from) {
            let (options, label, _) = &link.alternatives[index];
            match connect::open(options, label).await {
                Ok((_, conn)) => {
                    let fresh = Arc::new(Current {
                        conn,
                        index,
                        generation: seen + 1,
                        broken: AtomicBool::new(false),
                    });
                    // Routing waits until the declarations are back (see `replayed`); the
                    // guard ends the wait even if this future is dropped midway.
                    link.replaying.store(true, Ordering::Release);
                    let replaying = Replaying(link);
                    link.current.store(fresh.clone());
                    *attempts = Attempts::default();
                    // Released first: what follows sends commands, and a failure among them
                    // reconnects again through this lock.
                    drop(attempts);
                    tracing::info!(url = %label, "redis connection replaced");
                    self.after_reconnect().await;
                    drop(replaying);
                    if !link.current.load().broken.load(Ordering::Acquire) {
                        link.reporter.report(LinkState::Connected);
                    }
                    return Ok(Conn::new(fresh, link));
                }
                Err(error) => last = Some(error),
            }
        }
        let error = last.unwrap_or_else(|| {
            Error::new(ErrorKind::Connection, "redis: no server to reconnect to")
        });
        attempts.failed = attempts.failed.saturating_add(1);
        attempts.next = Some(Instant::now() + pause(attempts.failed));
        link.reporter.report(if error.is_recoverable() {
            LinkState::Reconnecting {
                attempt: attempts.failed,
                error: described(&error),
            }
        } else {
            LinkState::Failed {
                error: described(&error),
            }
        });
        Err(error.context("reconnecting"))
    }

    /// On a new connection: returns takes whose reply was lost, declares again what this
    /// backend declared. Failures are logged (a broken connection is replaced again by the
    /// next command).
    async fn after_reconnect(&self) {
        self.forget_topology();
        let lost: Vec<_> = std::mem::take(&mut *self.link.lost_takes.lock());
        for (token, max, queue) in lost {
            let fields: Vec<String> = (1..=max).map(|n| format!("{token}{n}")).collect();
            if let Err(error) = self.restore_tags(&fields, Some(&queue), None).await {
                tracing::warn!(url = %self.label, %queue, %error, "could not return a take whose reply was lost; it comes back when its lease ends");
            }
        }
        let (exchanges, queues, bindings) = {
            let declared = self.link.declared.lock();
            (
                declared.exchanges.values().cloned().collect::<Vec<_>>(),
                declared.queues.values().cloned().collect::<Vec<_>>(),
                declared.bindings.clone(),
            )
        };
        for exchange in &exchanges {
            if let Err(error) = self.exchange(&exchange.name, Some(exchange)).await {
                tracing::warn!(url = %self.label, exchange = %exchange.name, %error, "could not declare an exchange again");
            }
        }
        for queue in &queues {
            if let Err(error) = self.queue(&queue.name, Some(queue)).await {
                tracing::warn!(url = %self.label, queue = %queue.name, %error, "could not declare a queue again");
            }
        }
        for row in &bindings {
            if let Err(error) = self.bind(row).await {
                tracing::warn!(url = %self.label, queue = %row.queue, exchange = %row.exchange, %error, "could not bind a queue again");
            }
        }
    }
}

impl Declared {
    /// Records a declared exchange.
    pub(crate) fn exchange(&mut self, exchange: &Exchange) {
        self.exchanges
            .insert(exchange.name.clone(), exchange.clone());
    }

    /// Records a declared queue.
    pub(crate) fn queue(&mut self, queue: &Queue) {
        self.queues.insert(queue.name.clone(), queue.clone());
    }

    /// Records a binding.
    pub(crate) fn bind(&mut self, row: &BindingRow) {
        if !self.bindings.contains(row) {
            self.bindings.push(row.clone());
        }
    }

    /// Forgets a binding.
    pub(crate) fn unbind(&mut self, row: &BindingRow) {
        self.bindings.retain(|r| r != row);
    }

    /// Forgets an exchange and its bindings.
    pub(crate) fn delete_exchange(&mut self, name: &str) {
        self.exchanges.remove(name);
        self.bindings.retain(|r| r.exchange != name);
    }

    /// Forgets a queue and its bindings.
    pub(crate) fn delete_queue(&mut self, name: &str) {
        self.queues.remove(name);
        self.bindings.retain(|r| r.queue != name);
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::connect::redis_error;

    fn io_error(kind: io::ErrorKind) -> Error {
        redis_error(
            "t",
            "publish",
            redis::RedisError::from(io::Error::new(kind, "x")),
        )
    }

    #[test]
    fn a_server_still_loading_is_retried_and_wrote_nothing() {
        let loading = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading),
            "Redis is loading the dataset in memory",
        ));
        let error = maybe_written(redis_error("t", "publish", loading));
        assert!(error.is_recoverable());
        assert!(!error.outcome_unknown());
        let syntax = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "ERR syntax",
        ));
        assert!(!redis_error("t", "publish", syntax).is_recoverable());
    }

    #[test]
    fn a_refused_connection_wrote_nothing() {
        let refused = maybe_written(io_error(io::ErrorKind::ConnectionRefused));
        assert_eq!(refused.kind(), ErrorKind::Connection);
        assert!(!refused.outcome_unknown());
        let reset = maybe_written(io_error(io::ErrorKind::ConnectionReset));
        assert!(reset.outcome_unknown());
        let broken = maybe_written(io_error(io::ErrorKind::BrokenPipe));
        assert!(broken.outcome_unknown());
    }
}
