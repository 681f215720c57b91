//! A worker runtime: the role of kombu's `ConsumerMixin`, with typed async handlers.
//!
//! A [`Worker`] consumes several queues, each with a handler of its own ([`Route`]), and runs
//! the handlers of its messages concurrently (each queue's attempts are polled by that queue's
//! loop, not spawned: a handler with CPU-heavy work spawns it, e.g. with
//! `tokio::task::spawn_blocking`):
//!
//! - **Typed handlers**: the body is decoded into the handler's `T: DeserializeOwned` (a body
//!   that does not decode, or is not accepted, goes to the consumer's error policy:
//!   dead-lettered by default, or the worker stops with the error under
//!   [`ErrorAction::Stop`], see [`WorkerBuilder::error_action`]); raw handlers get the body
//!   as bytes. A handler is an async closure or any [`tower::Service`] taking a [`Job`], so
//!   tower's layers compose with it (timeout, concurrency limit, rate limit, tracing, ...).
//! - **Bounded concurrency**: at most [`WorkerBuilder::concurrency`] handlers at once in the
//!   worker and [`Route::concurrency`] per queue; each queue's consumer prefetches as many
//!   messages as its route may run.
//! - **Settlement**: a message is acked once its handler returns `Ok`.
//! - **Timeouts**: a handler running longer than its timeout has failed.
//! - **Retries**: a failed message (an error, a timeout, a panic) is republished to its queue
//!   (same body, headers and properties) with the [`RETRIES_HEADER`] (`x-kombu-retries`) one
//!   higher after the route's [`Backoff`], and the original acked; once the retries are used
//!   up it is dead-lettered with the error as its reason (`x-kombu-dead-reason`): to the
//!   queue's dead-letter exchange, else to `<queue>.dlq` (core's dead-letter path,
//!   [`kombu_core::dead_letter`]). A handler returns [`JobError::permanent`] to dead-letter
//!   at once, [`JobError::requeue`] to put the message back as it is. The backoff is the
//!   transport's delayed publish (`Outgoing::delay`) on the virtual transports that have one
//!   (memory, and the stores whose `Capabilities::delayed_delivery` is set); elsewhere
//!   (RabbitMQ, whose native delays need a topic exchange as destination) the worker holds
//!   the message, its lease kept alive, and republishes it when due; a worker stopped
//!   meanwhile returns it to its queue as it was.
//! - **Graceful stop**: [`WorkerHandle::stop`] or a signal ([`Worker::run_until_signal`]):
//!   no new message is taken, the handlers in flight get the shutdown timeout to finish (past
//!   it they are dropped and their messages go back), the messages prefetched and not started
//!   go back to their queues, then [`Worker::run`] returns.
//! - **Reconnects**: the consumers heal by themselves after a lost connection; the worker
//!   goes on.
//! - **Counters**: [`WorkerHandle::stats`].
//! - **Tracing and metrics**: each handler runs in its message's `process` span (a child of
//!   the producer's span when the message carries a trace context, see
//!   [`kombu_core::telemetry`]), and its duration is recorded as
//!   [`kombu_core::metrics::HANDLER_DURATION`] when a metrics recorder is installed.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use kombu_core::{Connection, Queue};
//! use kombu_patterns::worker::{JobContext, JobError, Route, Worker};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Resize { width: u32 }
//!
//! # kombu_core::transport::memory::register();
//! let conn = Connection::open("memory://doc-worker").await?;
//! let worker = Worker::builder(&conn)
//!     .concurrency(8)
//!     .timeout(Duration::from_secs(30))
//!     .handle(Route::from("resize").concurrency(2), |job: Resize, ctx: JobContext| async move {
//!         if job.width == 0 {
//!             return Err(JobError::permanent("width 0")); // dead-lettered at once
//!         }
//!         println!("resizing to {} (attempt {})", job.width, ctx.retries() + 1);
//!         Ok(())
//!     })
//!     .build()?;
//! let handle = worker.handle();
//! let running = tokio::spawn(worker.run());
//!
//! // The worker declares its queues when it starts; declaring here too means the publish
//! // below cannot come first (the memory transport drops messages for unknown queues).
//! conn.declare_queue(&Queue::new("resize")).await?;
//! conn.producer().routing_key("resize").publish(&serde_json::json!({"width": 640})).await?;
//! while handle.stats().handled < 1 {
//!     tokio::time::sleep(Duration::from_millis(5)).await;
//! }
//! handle.stop(); // or worker.run_until_signal() for SIGINT / SIGTERM
//! running.await??;
//! # Ok(()) }
//! ```
//!
//! # Tower
//!
//! [`WorkerBuilder::service`] takes any `Service<Job<T>, Response = ()>` that is `Clone`
//! (each message calls a clone once it is ready; clones of tower's layers share their state,
//! so `ConcurrencyLimitLayer` bounds them together) and whose error converts into a
//! [`BoxError`]. tower's `TimeoutLayer` error counts as a failure (retried); a [`JobError`]
//! keeps its kind through the box. Plain functions become services with
//! `tower::service_fn`.

mod attempt;
mod control;
mod handler;
mod job;
mod lane;
mod route;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use bytes::Bytes;
use kombu_core::{Connection, Error, ErrorAction, ErrorKind, Result};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tower::Service;

pub use control::{WorkerHandle, WorkerStats};
pub use job::{BoxError, FailureKind, Job, JobContext, JobError, RETRIES_HEADER};
pub use route::{Backoff, Route};

use handler::{Func, Raw, Runner, Typed};

/// Handlers running at once in a worker by default.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// Retries of a failed message by default before it is dead-lettered.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// How long a stopped worker lets its handlers finish by default.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a running handler's lease is extended when the visibility timeout is unknown.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(60);

/// Configures a [`Worker`]; from [`Worker::builder`].
pub struct WorkerBuilder {
    conn: Connection,
    routes: Vec<(Route, Box<dyn Runner>)>,
    concurrency: usize,
    timeout: Option<Duration>,
    max_retries: u32,
    backoff: Backoff,
    shutdown_timeout: Duration,
    visibility_timeout: Option<Duration>,
    heartbeat: Option<Duration>,
    accept: Option<Vec<String>>,
    error_action: ErrorAction,
    max_redeliveries: Option<u32>,
}

impl fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field(
                "routes",
                &self.routes.iter().map(|(r, _)| r).collect::<Vec<_>>(),
            )
            .field("concurrency", &self.concurrency)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("backoff", &self.backoff)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish()
    }
}

impl WorkerBuilder {
    /// Most handlers running at once in the whole worker (default [`DEFAULT_CONCURRENCY`];
    /// at least 1). Each route runs at most this many, or its own
    /// [`Route::concurrency`].
    pub fn concurrency(mut self, max: usize) -> Self {
        self.concurrency = max.max(1);
        self
    }

    /// How long a handler may run before its attempt has failed (default: no limit); a
    /// route's [`Route::timeout`] wins.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Retries of a failed message before it is dead-lettered (default
    /// [`DEFAULT_MAX_RETRIES`]); a route's [`Route::max_retries`] wins.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// The wait before each retry (default [`Backoff::default`]); a route's
    /// [`Route::backoff`] wins.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long a stopped worker lets its handlers in flight finish (default
    /// [`DEFAULT_SHUTDOWN_TIMEOUT`]); past it they are dropped and their messages go back to
    /// their queues.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// The visibility timeout of the worker's consumers (where the transport has one; default:
    /// the connection's).
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = Some(timeout);
        self
    }

    /// How often a running handler's message lease is extended (default: a third of the
    /// visibility timeout when the worker or the URL sets one, else every 60 s);
    /// `Duration::ZERO` turns it off.
    pub fn lease_heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = Some(interval);
        self
    }

    /// Accepted serializers, by name or content type (default: the connection's registry
    /// default). A message of another content type goes to the error policy.
    pub fn accept<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.accept = Some(names.into_iter().map(|s| s.as_ref().to_owned()).collect());
        self
    }

    /// What to do with a message whose body does not decode or is not accepted (default
    /// [`ErrorAction::DeadLetter`]; under [`ErrorAction::Stop`] the message stays in its
    /// queue and the worker stops: [`Worker::run`] returns the error once the handlers in
    /// flight are done).
    pub fn error_action(mut self, action: ErrorAction) -> Self {
        self.error_action = action;
        self
    }

    /// How often [`ErrorAction::Requeue`] puts a message back before dead-lettering it.
    pub fn max_redeliveries(mut self, max: u32) -> Self {
        self.max_redeliveries = Some(max);
        self
    }

    /// Handles the route's messages with an async function of the decoded value and its
    /// [`JobContext`]. `Err` is a failure (retried, see [`JobError`]).
    pub fn handle<T, F, Fut>(mut self, route: impl Into<Route>, handler: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(T, JobContext) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<(), JobError>> + Send + 'static,
    {
        self.routes
            .push((route.into(), Box::new(Func::new(handler))));
        self
    }

    /// Handles the route's messages with an async function of the raw body (decompressed, not
    /// decoded) and its [`JobContext`] (which holds the delivery).
    pub fn handle_raw<F, Fut>(self, route: impl Into<Route>, handler: F) -> Self
    where
        F: Fn(Bytes, JobContext) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = std::result::Result<(), JobError>> + Send + 'static,
    {
        self.service_raw(
            route,
            tower::service_fn(move |job: Job<Bytes>| {
                let (body, context) = job.into_parts();
                handler(body, context)
            }),
        )
    }

    /// Handles the route's messages with a tower service taking [`Job<T>`] (see the module
    /// docs: layers compose with it).
    pub fn service<T, S>(mut self, route: impl Into<Route>, service: S) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        S: Service<Job<T>, Response = ()> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
    {
        self.routes
            .push((route.into(), Box::new(Typed::<T, S>::new(service))));
        self
    }

    /// Handles the route's messages with a tower service taking the raw body
    /// ([`Job<Bytes>`], decompressed, not decoded).
    pub fn service_raw<S>(mut self, route: impl Into<Route>, service: S) -> Self
    where
        S: Service<Job<Bytes>, Response = ()> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
    {
        self.routes
            .push((route.into(), Box::new(Raw::new(service))));
        self
    }

    /// The worker; fails when it has no route or two routes of one queue.
    pub fn build(self) -> Result<Worker> {
        if self.routes.is_empty() {
            return Err(Error::new(
                ErrorKind::Config,
                "a worker needs at least one route (WorkerBuilder::handle)",
            ));
        }
        for (i, (route, _)) in self.routes.iter().enumerate() {
            if self.routes[..i]
                .iter()
                .any(|(r, _)| r.queue.name == route.queue.name)
            {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("queue {:?} has two handlers", route.queue.name),
                ));
            }
        }
        Ok(Worker {
            builder: self,
            handle: WorkerHandle::new(),
        })
    }
}

/// Consumes its routes' queues and runs their handlers; see the [module docs](self).
pub struct Worker {
    builder: WorkerBuilder,
    handle: WorkerHandle,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("builder", &self.builder)
            .field("handle", &self.handle)
            .finish()
    }
}

impl Worker {
    /// A worker on `conn` (the facade's `kombu::Connection` or core's).
    pub fn builder(conn: &impl AsRef<Connection>) -> WorkerBuilder {
        WorkerBuilder {
            conn: conn.as_ref().clone(),
            routes: Vec::new(),
            concurrency: DEFAULT_CONCURRENCY,
            timeout: None,
            max_retries: DEFAULT_MAX_RETRIES,
            backoff: Backoff::default(),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            visibility_timeout: None,
            heartbeat: None,
            accept: None,
            error_action: ErrorAction::default(),
            max_redeliveries: None,
        }
    }

    /// Reads the counters and stops the worker, from any task.
    pub fn handle(&self) -> WorkerHandle {
        self.handle.clone()
    }

    /// Runs until stopped ([`WorkerHandle::stop`]) and wound down (see the module docs), or
    /// until a consumer fails for good (its error is returned after the others wound down
    /// too). Declares the queues first.
    pub async fn run(self) -> Result<()> {
        let Worker { builder, handle } = self;
        if handle.is_stopped() {
            return Ok(());
        }
        let heartbeat = heartbeat(&builder)?;
        let conn = builder.conn.clone();
        let caps = conn.capabilities();
        // Each route runs at most its own bound, and the worker's: one semaphore bounds the
        // lanes together only where their bounds add up to more than the worker's.
        let bounds: Vec<usize> = builder
            .routes
            .iter()
            .map(|(route, _)| {
                route
                    .concurrency
                    .unwrap_or(builder.concurrency)
                    .min(builder.concurrency)
            })
            .collect();
        let worker_permits = (bounds.iter().sum::<usize>() > builder.concurrency)
            .then(|| Arc::new(Semaphore::new(builder.concurrency)));
        let mut lanes = Vec::with_capacity(builder.routes.len());
        for ((route, runner), concurrency) in builder.routes.into_iter().zip(bounds) {
            let mut consumer = conn
                .consumer([route.queue.clone()])
                .prefetch(u16::try_from(concurrency).unwrap_or(u16::MAX))
                .error_action(builder.error_action);
            if let Some(names) = &builder.accept {
                consumer = consumer.accept(names);
            }
            if let Some(timeout) = builder.visibility_timeout {
                consumer = consumer.visibility_timeout(timeout);
            }
            if let Some(max) = builder.max_redeliveries {
                consumer = consumer.max_redeliveries(max);
            }
            let mut consumer = consumer.build().await.map_err(|e| {
                e.context(format!(
                    "starting the worker's consumer of {:?}",
                    route.queue.name
                ))
            })?;
            // Each attempt runs in the consumer's `process` span instead.
            consumer.processed_in_spans();
            let settings = attempt::Settings {
                timeout: route.timeout.or(builder.timeout),
                max_retries: route.max_retries.unwrap_or(builder.max_retries),
                backoff: route.backoff.unwrap_or(builder.backoff),
                // Leases need extending only where they run out.
                heartbeat: heartbeat.filter(|_| caps.visibility_timeout),
                producer: conn.producer(),
                mandatory: caps.mandatory,
                native_delay: caps.delayed_delivery && caps.visibility_timeout,
                counters: handle.counters.clone(),
                running: AtomicUsize::new(0),
            };
            lanes.push(lane::Lane {
                queue: route.queue.name.clone(),
                consumer,
                runner,
                settings: Arc::new(settings),
                concurrency,
                worker_permits: worker_permits.clone(),
                error_action: builder.error_action,
                handle: handle.clone(),
                shutdown_timeout: builder.shutdown_timeout,
            });
        }
        let results = futures::future::join_all(lanes.into_iter().map(lane::Lane::run)).await;
        results.into_iter().collect::<Result<Vec<()>>>().map(|_| ())
    }

    /// [`run`](Self::run), stopping gracefully on SIGINT (Ctrl-C) or SIGTERM.
    pub async fn run_until_signal(self) -> Result<()> {
        let handle = self.handle();
        let run = self.run();
        tokio::pin!(run);
        tokio::select! {
            done = &mut run => return done,
            () = kombu_core::shutdown_signal() => {
                tracing::info!("signal received: the worker stops");
                handle.stop();
            }
        }
        run.await
    }
}

/// The lease heartbeat: the builder's, else a third of the visibility timeout the worker or
/// the URL sets, else [`DEFAULT_HEARTBEAT`]; none when turned off.
fn heartbeat(builder: &WorkerBuilder) -> Result<Option<Duration>> {
    if let Some(interval) = builder.heartbeat {
        return Ok((!interval.is_zero()).then_some(interval));
    }
    let visibility = match builder.visibility_timeout {
        Some(timeout) => Some(timeout),
        None => builder.conn.url().query_seconds("visibility_timeout")?,
    };
    Ok(Some(visibility.map_or(DEFAULT_HEARTBEAT, |v| {
        (v / 3).max(Duration::from_millis(10))
    })))
}
