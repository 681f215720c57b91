//! Handlers as [`tower::Service`]s, behind one type-erased [`Runner`] per route: it decodes
//! the body into the service's request type, and starts the attempt: the service called
//! once it is ready, its result reduced to an [`Attempt`], the message settled
//! ([`attempt::run`]), all in one boxed future per message.

use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;

use bytes::Bytes;
use futures::future::BoxFuture;
use kombu_core::Delivery;
use serde::de::DeserializeOwned;
use tower::{Service, ServiceExt};
use tracing::Instrument;

use super::attempt::{self, DeadLetter, Start};
use super::job::{BoxError, FailureKind, Job, JobContext, JobError, classify};

/// How one attempt at a message ended.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// The handler returned `Ok`.
    Done,
    /// The handler failed: what to do, and the reason to record.
    Failed(FailureKind, String),
}

/// A started attempt: settles its message, and returns what only the lane can do with it.
pub(crate) type Running = BoxFuture<'static, Option<DeadLetter>>;

/// A body that did not decode into the handler's type, with its delivery: the consumer's
/// error policy decides.
pub(crate) type Undecodable = (Delivery, kombu_core::Error);

/// One route's handler, type-erased: starts an attempt at a message.
pub(crate) trait Runner: Send + 'static {
    /// The attempt at `delivery`, as a future for the lane to poll.
    fn start(&mut self, delivery: Delivery, start: Start) -> Result<Running, Undecodable>;
}

/// A service taking `Job<T>`, with the body decoded as `T` (JSON, or whatever the message's
/// content type says).
pub(crate) struct Typed<T, S> {
    service: S,
    _value: PhantomData<fn() -> T>,
}

impl<T, S> Typed<T, S> {
    pub(crate) fn new(service: S) -> Self {
        Typed {
            service,
            _value: PhantomData,
        }
    }
}

/// The attempt: a clone of `service` (clones of a tower service share what they limit)
/// called with the job `request(context)` once it is ready, then the settlement.
fn call<Req, S>(
    service: &S,
    delivery: Delivery,
    start: Start,
    request: impl FnOnce(JobContext) -> Req,
) -> Running
where
    Req: Send + 'static,
    S: Service<Req, Response = ()> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    let context = JobContext::new(delivery);
    let work = service.clone().oneshot(request(context.clone()));
    attempt(start, context, async move {
        match work.await {
            Ok(()) => Attempt::Done,
            Err(error) => {
                let (kind, reason) = classify(&error.into());
                Attempt::Failed(kind, reason)
            }
        }
    })
}

/// The attempt running `work` at the message `context` holds, boxed, in its `process` span
/// when a subscriber wants that.
fn attempt<W>(start: Start, context: JobContext, work: W) -> Running
where
    W: Future<Output = Attempt> + Send + 'static,
{
    let Start {
        settings,
        worker_permit,
        span,
    } = start;
    let attempt = attempt::run(settings, worker_permit, context, work);
    // No span (no subscriber wants it): nothing to enter at each poll.
    match span.is_disabled() {
        true => Box::pin(attempt),
        false => Box::pin(attempt.instrument(span)),
    }
}

impl<T, S> Runner for Typed<T, S>
where
    T: DeserializeOwned + Send + 'static,
    S: Service<Job<T>, Response = ()> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    fn start(&mut self, delivery: Delivery, start: Start) -> Result<Running, Undecodable> {
        match delivery.decode::<T>() {
            Ok(value) => Ok(call(&self.service, delivery, start, |context| {
                Job::new(value, context)
            })),
            Err(error) => Err((delivery, error)),
        }
    }
}

/// An async function of the decoded value and its context ([`WorkerBuilder::handle`]):
/// called by reference, with no clone or readiness check per message (the straight path of
/// the common handler).
///
/// [`WorkerBuilder::handle`]: super::WorkerBuilder::handle
pub(crate) struct Func<T, F> {
    handler: F,
    _value: PhantomData<fn() -> T>,
}

impl<T, F> Func<T, F> {
    pub(crate) fn new(handler: F) -> Self {
        Func {
            handler,
            _value: PhantomData,
        }
    }
}

impl<T, F, Fut> Runner for Func<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T, JobContext) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), JobError>> + Send + 'static,
{
    fn start(&mut self, delivery: Delivery, start: Start) -> Result<Running, Undecodable> {
        let value = match delivery.decode::<T>() {
            Ok(value) => value,
            Err(error) => return Err((delivery, error)),
        };
        let context = JobContext::new(delivery);
        // In the span too, and caught as a failure as a panic of its future is: what the
        // function does before it returns its future.
        let called = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let _in_span = start.span.enter();
            (self.handler)(value, context.clone())
        }));
        match called {
            Ok(work) => Ok(attempt(start, context, async move {
                match work.await {
                    Ok(()) => Attempt::Done,
                    Err(error) => Attempt::Failed(error.kind(), error.reason()),
                }
            })),
            Err(panic) => {
                let failed = attempt::panicked(&*panic);
                Ok(attempt(start, context, std::future::ready(failed)))
            }
        }
    }
}

/// A service taking `Job<Bytes>`: the body after decompression, not decoded.
pub(crate) struct Raw<S> {
    service: S,
}

impl<S> Raw<S> {
    pub(crate) fn new(service: S) -> Self {
        Raw { service }
    }
}

impl<S> Runner for Raw<S>
where
    S: Service<Job<Bytes>, Response = ()> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    fn start(&mut self, delivery: Delivery, start: Start) -> Result<Running, Undecodable> {
        match delivery.decompressed_body() {
            Ok(body) => Ok(call(&self.service, delivery, start, |context| {
                Job::new(body, context)
            })),
            Err(error) => Err((delivery, error)),
        }
    }
}
