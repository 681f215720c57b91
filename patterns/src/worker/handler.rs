//! Handlers as [`tower::Service`]s, behind one type-erased [`Runner`] per route: it decodes
//! the body into the service's request type, waits for the service to be ready, calls it and
//! reduces its result to an [`Attempt`].

use std::marker::PhantomData;

use bytes::Bytes;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use tower::{Service, ServiceExt};

use super::job::{BoxError, FailureKind, Job, JobContext, classify};

/// How one attempt at a message ended.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// The handler returned `Ok`.
    Done,
    /// The handler failed: what to do, and the reason to record.
    Failed(FailureKind, String),
    /// The body did not decode into the handler's type: the consumer's error policy decides.
    Undecodable(kombu_core::Error),
}

/// One route's handler, type-erased: starts an attempt at a message.
pub(crate) trait Runner: Send + 'static {
    /// The attempt at the message `context` holds, as a future to spawn.
    fn start(&mut self, context: JobContext) -> BoxFuture<'static, Attempt>;
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

/// Calls a clone of `service` (clones of a tower service share what they limit) once it is
/// ready.
fn call<Req, S>(service: &S, request: Req) -> BoxFuture<'static, Attempt>
where
    Req: Send + 'static,
    S: Service<Req, Response = ()> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    let service = service.clone();
    Box::pin(async move {
        match service.oneshot(request).await {
            Ok(()) => Attempt::Done,
            Err(error) => {
                let (kind, reason) = classify(&error.into());
                Attempt::Failed(kind, reason)
            }
        }
    })
}

impl<T, S> Runner for Typed<T, S>
where
    T: DeserializeOwned + Send + 'static,
    S: Service<Job<T>, Response = ()> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    fn start(&mut self, context: JobContext) -> BoxFuture<'static, Attempt> {
        match context.delivery().decode::<T>() {
            Ok(value) => call(&self.service, Job::new(value, context)),
            Err(error) => Box::pin(std::future::ready(Attempt::Undecodable(error))),
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
    fn start(&mut self, context: JobContext) -> BoxFuture<'static, Attempt> {
        match context.delivery().decompressed_body() {
            Ok(body) => call(&self.service, Job::new(body, context)),
            Err(error) => Box::pin(std::future::ready(Attempt::Undecodable(error))),
        }
    }
}
