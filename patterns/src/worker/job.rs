//! What a handler is given ([`Job`], [`JobContext`]) and what it returns on failure
//! ([`JobError`]: retry, dead-letter at once, or requeue).

use std::fmt;
use std::sync::Arc;

use kombu_core::{Delivery, Headers, Properties, Value};

/// A boxed error, as tower's layers return them (`tower::BoxError`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Header: how many times the worker has retried the message (absent: never). The worker
/// republishes a failed message with this header one higher; once it reaches the route's
/// `max_retries`, the next failure dead-letters the message. An integer, readable by any
/// client (Python: `message.headers["x-kombu-retries"]`).
pub const RETRIES_HEADER: &str = "x-kombu-retries";

/// One message for a handler: the decoded value and where it came from.
///
/// A [`tower::Service`] used as a handler takes `Job<T>` as its request; the worker decodes
/// the body into `T` first (a raw handler gets the body as `bytes::Bytes`).
#[derive(Debug)]
pub struct Job<T> {
    value: T,
    context: JobContext,
}

impl<T> Job<T> {
    /// A job of `value` taken from the delivery `context` describes (the worker makes them;
    /// public for unit tests of a handler service).
    pub fn new(value: T, context: JobContext) -> Self {
        Job { value, context }
    }

    /// The decoded value.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// Where the message came from.
    pub fn context(&self) -> &JobContext {
        &self.context
    }

    /// The decoded value, giving up the context.
    pub fn into_value(self) -> T {
        self.value
    }

    /// The value and the context.
    pub fn into_parts(self) -> (T, JobContext) {
        (self.value, self.context)
    }
}

/// The delivery a job came from: queue, headers, properties, the retries so far; cheap to
/// clone.
///
/// The worker settles the delivery once the handler's future is done, so a context must not
/// outlive it (do not move it into a task of your own that runs on): a context still alive
/// then keeps the worker from settling the message, which goes back to its queue, counted as
/// a failure, when the last clone is dropped.
#[derive(Clone)]
pub struct JobContext {
    delivery: Arc<Delivery>,
    retries: u32,
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("queue", &self.delivery.queue())
            .field("delivery_tag", &self.delivery.delivery_tag())
            .field("retries", &self.retries)
            .finish()
    }
}

impl JobContext {
    /// The context of `delivery` (the worker makes them; public for unit tests of a handler).
    pub fn new(delivery: Delivery) -> Self {
        let retries = retries(&delivery);
        JobContext {
            delivery: Arc::new(delivery),
            retries,
        }
    }

    /// The delivery back, unless a clone of this context is still alive.
    pub(crate) fn into_delivery(self) -> Result<Delivery, ()> {
        Arc::try_unwrap(self.delivery).map_err(|_shared| ())
    }

    /// The delivery (message, body, headers, routing); settling it is the worker's job.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// The queue the message was taken from.
    pub fn queue(&self) -> &str {
        self.delivery.queue()
    }

    /// How many times the worker has retried this message before ([`RETRIES_HEADER`]): 0 on
    /// the first attempt.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Headers of the message.
    pub fn headers(&self) -> &Headers {
        self.delivery.headers()
    }

    /// Properties of the message.
    pub fn properties(&self) -> &Properties {
        self.delivery.properties()
    }

    /// Whether the broker delivered it before (a consumer went away holding it, or it was
    /// requeued).
    pub fn redelivered(&self) -> bool {
        self.delivery.redelivered()
    }

    /// Restarts the message's lease (see `Delivery::extend_lease`); the worker does it by
    /// itself at its lease heartbeat while the handler runs.
    pub async fn extend_lease(&self) -> kombu_core::Result<()> {
        self.delivery.extend_lease().await
    }
}

/// The retries counted in a delivery's [`RETRIES_HEADER`].
pub(crate) fn retries(delivery: &Delivery) -> u32 {
    match delivery.headers().get(RETRIES_HEADER) {
        Some(Value::Int(n)) => u32::try_from(*n).unwrap_or(0),
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

/// What the worker does with a message whose handler failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// Try again after the route's backoff (republished with [`RETRIES_HEADER`] + 1), and
    /// dead-letter it once the retries are used up. Any error that is not a [`JobError`]
    /// counts as this, a timeout and a panic too.
    Retry,
    /// Dead-letter it at once, with the error as its reason: trying again cannot help.
    Permanent,
    /// Put it back in its queue as it is (marked redelivered, no retry counted), for this or
    /// another worker to take again.
    Requeue,
}

/// A handler's failure saying what to do with the message ([`FailureKind`]). Any error
/// converts into one with `?` (as a [`FailureKind::Retry`]); [`JobError::permanent`] and
/// [`JobError::requeue`] say otherwise.
///
/// A handler [`tower::Service`] may return any error that converts into a [`BoxError`]; a
/// `JobError` does, and the worker finds its kind again behind the box.
///
/// ```
/// use kombu_patterns::worker::{FailureKind, JobError};
///
/// fn check(amount: i64) -> Result<(), JobError> {
///     if amount < 0 {
///         return Err(JobError::permanent(format!("negative amount {amount}")));
///     }
///     let _n: u32 = "42".parse()?; // any error: retried
///     Ok(())
/// }
/// assert_eq!(check(-1).map_err(|e| e.kind()), Err(FailureKind::Permanent));
/// ```
pub struct JobError {
    kind: FailureKind,
    error: BoxError,
}

impl JobError {
    /// Retry after the backoff; dead-letter once the retries are used up.
    pub fn retry(error: impl Into<BoxError>) -> Self {
        JobError {
            kind: FailureKind::Retry,
            error: error.into(),
        }
    }

    /// Dead-letter at once (a permanent error), with `error` as the reason.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        JobError {
            kind: FailureKind::Permanent,
            error: error.into(),
        }
    }

    /// Put the message back in its queue as it is (no retry counted).
    pub fn requeue(error: impl Into<BoxError>) -> Self {
        JobError {
            kind: FailureKind::Requeue,
            error: error.into(),
        }
    }

    /// What the worker does with the message.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The error.
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.error
    }

    /// The reason to record: the error with its sources.
    pub(crate) fn reason(&self) -> String {
        chain(&*self.error)
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobError")
            .field("kind", &self.kind)
            .field("error", &self.error)
            .finish()
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

/// Any error is a [`FailureKind::Retry`].
impl<E> From<E> for JobError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        JobError::retry(error)
    }
}

/// Boxed (for tower's layers), keeping its kind for the worker to read.
impl From<JobError> for BoxError {
    fn from(error: JobError) -> Self {
        Box::new(Classified(error))
    }
}

/// A [`JobError`] in a box: an error type, so a `BoxError` can hold it and be downcast.
struct Classified(JobError);

impl fmt::Debug for Classified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Classified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Classified {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.error.source()
    }
}

/// What a failed handler's error asks for, and the reason to record (the error with its
/// sources).
pub(crate) fn classify(error: &BoxError) -> (FailureKind, String) {
    if let Some(Classified(job)) = error.downcast_ref::<Classified>() {
        return (job.kind, chain(&*job.error));
    }
    if error.is::<tower::timeout::error::Elapsed>() {
        return (FailureKind::Retry, "the handler timed out".to_owned());
    }
    (FailureKind::Retry, chain(&**error))
}

/// `error: source: source ...`.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(source) = next {
        let more = source.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        next = source.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_error_keeps_its_kind_through_a_box() {
        let boxed: BoxError = JobError::permanent("bad input").into();
        assert_eq!(
            classify(&boxed),
            (FailureKind::Permanent, "bad input".to_owned())
        );
        let boxed: BoxError = JobError::requeue("later").into();
        assert_eq!(classify(&boxed).0, FailureKind::Requeue);
    }

    #[test]
    fn any_other_error_is_retried() {
        let parse = "x".parse::<u32>().map_err(JobError::from);
        assert!(matches!(parse, Err(ref e) if e.kind() == FailureKind::Retry));
        let boxed: BoxError = "plain".into();
        assert_eq!(classify(&boxed), (FailureKind::Retry, "plain".to_owned()));
    }
}
