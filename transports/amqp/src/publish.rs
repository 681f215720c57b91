//! Publishing on an AMQP channel: a batch's frames queued in order, confirms awaited together,
//! what a lost connection interrupted before any of it was written published again (what may
//! have reached the broker fails outcome-unknown instead: never a silent duplicate), and
//! publishes without confirms left to be written in the background (with backpressure).

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use kombu_core::transport::Outgoing;
use kombu_core::{Error, ErrorKind, Result};
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Confirmation};
use parking_lot::Mutex;

use crate::error::map;
use crate::lapin_channel::{DRAIN, Inner, RETRY_PAUSE};
use crate::mapping::{short_string, to_properties};

/// The outcome of a confirmed publish.
fn confirmation(
    confirmed: lapin::Result<Confirmation>,
    exchange: &str,
    routing_key: &str,
) -> Result<()> {
    let what = || format!("publish to exchange {exchange:?} with routing key {routing_key:?}");
    match confirmed.map_err(|e| map(e, what()))? {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(Error::new(
            ErrorKind::Unroutable,
            format!(
                "{}: returned by the broker ({} {}): no queue is bound to take it",
                what(),
                returned.reply_code,
                returned.reply_text.as_str()
            ),
        )),
        Confirmation::Nack(_) => Err(Error::new(
            ErrorKind::Broker,
            format!("{}: the broker refused it (nack)", what()),
        )),
    }
}

impl Inner {
    /// Publishes `batch` in order; again, on the next connection, when a lost connection
    /// interrupted it before any of its frames were written.
    pub(crate) async fn publish_all(&self, batch: &[Outgoing]) -> Result<()> {
        let inner = self;
        if inner.shared.is_closing() {
            return Err(Error::closed("the AMQP connection is closing"));
        }
        if batch.iter().any(|o| o.delay.is_some()) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "the AMQP transport does not delay messages yet",
            ));
        }
        let mut prepared = Vec::with_capacity(batch.len());
        for o in batch {
            prepared.push((
                short_string("exchange name", &o.exchange)?,
                short_string("routing key", &o.routing_key)?,
                to_properties(&o.message),
            ));
        }
        let deadline = inner.deadline();
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        // Messages whose frames may have reached the broker (written, or failed mid-write): if
        // one of them is still unconfirmed when this gives up, the outcome is unknown.
        let mut maybe_delivered = vec![false; batch.len()];
        let mut failure: Option<Error> = None;
        while !pending.is_empty() {
            let mut again = Vec::new();
            let mut interrupted: Option<Error> = None;
            match inner.lapin().await {
                Err(e) => {
                    interrupted = Some(e);
                    again = pending.clone();
                }
                Ok(ch) => {
                    // Each publish's first poll queues its frames, in order: the whole batch is
                    // on its way before any write is waited for (one wake-up, not one each).
                    let mut sends = Vec::with_capacity(pending.len());
                    for &i in &pending {
                        let (exchange, routing_key, properties) = &prepared[i];
                        let mut send =
                            publish_one(&ch, exchange, routing_key, &batch[i], properties.clone());
                        let first = send.as_mut().poll(&mut std::task::Context::from_waker(
                            futures::task::noop_waker_ref(),
                        ));
                        sends.push((i, send, first));
                    }
                    let mut confirms = Vec::with_capacity(sends.len());
                    for (i, send, first) in sends {
                        let sent = match first {
                            Poll::Ready(sent) => {
                                // Refused before anything was written, or written at once.
                                maybe_delivered[i] |= sent.is_ok();
                                sent
                            }
                            // Without confirms, queued is published (see `Unwritten`).
                            Poll::Pending if !inner.confirms => {
                                maybe_delivered[i] = true;
                                inner.unwritten.push(send).await;
                                if inner.is_closed() || inner.shared.is_closing() {
                                    // A close that began meanwhile may have drained already.
                                    inner.unwritten.drain(DRAIN).await;
                                }
                                continue;
                            }
                            Poll::Pending => {
                                maybe_delivered[i] = true;
                                send.await
                            }
                        };
                        match sent {
                            Ok(confirm) => confirms.push((i, confirm)),
                            Err(e) => {
                                again.push(i);
                                interrupted.get_or_insert(e);
                            }
                        }
                    }
                    // Awaited together: one round trip's wait for the whole batch.
                    for (i, confirm) in confirms {
                        let o = &batch[i];
                        if let Err(e) = confirmation(confirm.await, &o.exchange, &o.routing_key) {
                            // Written, then the connection or channel went away before the
                            // confirm: the broker may have it (a nack or a return is an
                            // answer, not this).
                            let e = if matches!(
                                e.kind(),
                                ErrorKind::Connection | ErrorKind::Closed | ErrorKind::Timeout
                            ) {
                                e.with_outcome_unknown()
                            } else {
                                e
                            };
                            if inner.retryable(&e, deadline) {
                                again.push(i);
                                interrupted.get_or_insert(e);
                            } else if failure.is_none() {
                                failure = Some(e);
                            }
                        }
                    }
                }
            }
            if let Some(e) = interrupted {
                // Published again only when none of what is left may have reached the broker:
                // a second copy of one that did would be a silent duplicate. Whether to try
                // again is then the caller's choice (the producer's `retry_unknown`).
                if again.iter().any(|&i| maybe_delivered[i]) {
                    if let Some(failure) = failure {
                        return Err(partly_done(failure, &maybe_delivered));
                    }
                    return Err(e.with_outcome_unknown());
                }
                if !inner.retryable(&e, deadline) {
                    let e = failure.unwrap_or(e);
                    return Err(partly_done(e, &maybe_delivered));
                }
                tracing::debug!(error = %e, left = again.len(), "AMQP publish interrupted; publishing again");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            again.sort_unstable();
            pending = again;
        }
        match failure {
            Some(e) => Err(partly_done(e, &maybe_delivered)),
            None => Ok(()),
        }
    }
}

/// The error a batch fails with, given which of its messages may have reached the broker
/// (confirmed, written, or queued to be written): a lost connection or channel (or a timeout)
/// after some of them did is outcome-unknown, since publishing the whole batch again would
/// duplicate those. An answer about one message (a nack, a return) stays as it is.
fn partly_done(error: Error, maybe_delivered: &[bool]) -> Error {
    let lost = matches!(
        error.kind(),
        ErrorKind::Connection | ErrorKind::Closed | ErrorKind::Timeout
    );
    if lost && !error.outcome_unknown() && maybe_delivered.iter().any(|&d| d) {
        error.with_outcome_unknown()
    } else {
        error
    }
}

/// A publish's frames handed to lapin (on the first poll) and written (when it completes). Owns
/// what it needs, so that a publish without confirms can be left to finish in the background.
fn publish_one(
    ch: &lapin::Channel,
    exchange: &ShortString,
    routing_key: &ShortString,
    o: &Outgoing,
    properties: BasicProperties,
) -> Pin<Box<dyn Future<Output = Result<lapin::PublisherConfirm>> + Send>> {
    let (ch, exchange, routing_key) = (ch.clone(), exchange.clone(), routing_key.clone());
    let body = o.message.body.clone();
    let options = BasicPublishOptions {
        mandatory: o.mandatory,
        immediate: false,
    };
    Box::pin(async move {
        ch.basic_publish(
            exchange.clone(),
            routing_key.clone(),
            options,
            &body,
            properties,
        )
        .await
        .map_err(|e| {
            map(
                e,
                format!(
                    "publish to exchange {:?} with routing key {:?}",
                    exchange.as_str(),
                    routing_key.as_str()
                ),
            )
        })
    })
}

/// Most publishes without confirms whose frames may wait to be written: past it, a publish
/// waits for the oldest writes (backpressure).
const MAX_UNWRITTEN: usize = 256;

/// Publishes without confirms whose frames are queued on the connection and not yet written,
/// oldest first: such a publish returns once its frames are queued (in order), not once they
/// are written, so one-by-one publishing does not wait for lapin's I/O loop each time. Closing
/// or dropping the channel waits for them.
#[derive(Default)]
pub(crate) struct Unwritten {
    writes: Mutex<std::collections::VecDeque<PublishFuture>>,
}

type PublishFuture = Pin<Box<dyn Future<Output = Result<lapin::PublisherConfirm>> + Send>>;

impl Unwritten {
    /// Keeps `write` until it completes; waits while too many are unwritten.
    pub(crate) async fn push(&self, write: PublishFuture) {
        let oldest = {
            let mut writes = self.writes.lock();
            writes.push_back(write);
            // Drop what was written since (in order: frames are written first in, first out).
            let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
            while let Some(front) = writes.front_mut() {
                match front.as_mut().poll(&mut cx) {
                    Poll::Ready(done) => {
                        if let Err(error) = done {
                            tracing::warn!(%error, "a publish without confirms was not written");
                        }
                        writes.pop_front();
                    }
                    Poll::Pending => break,
                }
            }
            if writes.len() > MAX_UNWRITTEN {
                writes.pop_front()
            } else {
                None
            }
        };
        if let Some(oldest) = oldest
            && let Err(error) = oldest.await
        {
            tracing::warn!(%error, "a publish without confirms was not written");
        }
    }

    /// Waits (at most `within`) until every queued publish is written.
    pub(crate) async fn drain(&self, within: Duration) {
        let writes = std::mem::take(&mut *self.writes.lock());
        if writes.is_empty() {
            return;
        }
        match tokio::time::timeout(within, futures::future::join_all(writes)).await {
            Ok(done) => {
                for error in done.into_iter().filter_map(std::result::Result::err) {
                    tracing::warn!(%error, "a publish without confirms was not written");
                }
            }
            Err(_) => tracing::warn!(
                ?within,
                "publishes without confirms still unwritten; going on without them"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_lost_after_part_of_it_may_have_arrived_has_an_unknown_outcome() {
        let lost = || Error::new(ErrorKind::Connection, "the AMQP connection dropped");
        // Nothing of the batch reached the broker: publishing it again is safe.
        let e = partly_done(lost(), &[false, false]);
        assert!(e.is_recoverable() && !e.outcome_unknown());
        // One message was confirmed (or written) before the rest was refused.
        let e = partly_done(lost(), &[true, false]);
        assert!(e.outcome_unknown(), "{e}");
        // The broker's answer about a message stays what it is.
        let nack = Error::new(ErrorKind::Broker, "the broker refused it (nack)");
        assert!(!partly_done(nack, &[true, false]).outcome_unknown());
    }
}
