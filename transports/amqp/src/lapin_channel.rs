//! The lapin channel under an [`AmqpChannel`](crate::AmqpChannel): opened lazily, replaced when
//! it ends (a channel-level error, a dropped connection), and the retry loop that runs an
//! operation again on a new one when the connection went away under it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryFutureExt;
use kombu_core::{Capabilities, Error, ErrorKind, Result};
use lapin::options::ConfirmSelectOptions;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::connection::{SendPending, Shared};
use crate::error::map;
use crate::publish::Unwritten;
use crate::settle::{InFlight, Settlements};

/// Pause between attempts of an operation interrupted by a lost connection.
pub(crate) const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// An open lapin channel with the settlements of its deliveries.
#[derive(Clone)]
pub(crate) struct Slot {
    pub(crate) channel: lapin::Channel,
    pub(crate) settlements: Arc<Settlements>,
}

/// The state of an [`AmqpChannel`](crate::AmqpChannel), shared with its consumers and the
/// connection (which asks it to send what waits).
pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    /// The lapin channel in use, if one is open.
    pub(crate) slot: Mutex<Option<Slot>>,
    /// One opening at a time.
    pub(crate) opening: tokio::sync::Mutex<()>,
    pub(crate) closed: AtomicBool,
    pub(crate) confirms: bool,
    pub(crate) capabilities: Capabilities,
    /// Settlements handed to lapin and not yet written.
    pub(crate) in_flight: Arc<InFlight>,
    /// Publishes without confirms queued and not yet written.
    pub(crate) unwritten: Arc<Unwritten>,
}

/// How long closing a channel waits for its settlements to be written.
pub(crate) const DRAIN: Duration = Duration::from_secs(5);

/// Whether the broker refused with RESOURCE_LOCKED (405: another connection's exclusive queue).
fn is_resource_locked(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(p)
            if matches!(
                p.kind(),
                lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::RESOURCELOCKED)
            )
    )
}

impl Inner {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The lapin channel to use: the open one, else a new one (on a recovered connection if
    /// the old one dropped), in confirm mode when confirms are on.
    pub(crate) async fn lapin(&self) -> Result<lapin::Channel> {
        Ok(self.slot().await?.channel)
    }

    /// Fails when this channel was closed.
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            return Err(Error::closed("the AMQP channel was closed"));
        }
        Ok(())
    }

    /// Asks whether an entity exists with `ask` (a passive declaration) on a lapin channel of
    /// its own, closed afterwards: the broker's "no" (404) closes the channel it is asked on, so
    /// this channel and its consumers stay untouched. NOT_FOUND is `false`; RESOURCE_LOCKED
    /// (another connection's exclusive queue) is `true`: it exists, it is just not ours.
    pub(crate) async fn exists<F, Fut>(&self, what: String, ask: F) -> Result<bool>
    where
        F: FnOnce(lapin::Channel) -> Fut,
        Fut: Future<Output = lapin::Result<()>>,
    {
        self.check_open()?;
        let (conn, _) = self.shared.connection().await?;
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| map(e, "open an AMQP channel"))?;
        let answer = ask(ch.clone()).await;
        if ch.status().connected() {
            let _ = ch.close(200, "OK".into()).await;
        }
        match answer {
            Ok(()) => Ok(true),
            Err(e) if is_resource_locked(&e) => Ok(true),
            Err(e) => match map(e, what) {
                e if e.kind() == ErrorKind::NotFound => Ok(false),
                e => Err(e),
            },
        }
    }

    /// The open lapin channel with its settlements, else a new one.
    pub(crate) async fn slot(&self) -> Result<Slot> {
        if self.is_closed() {
            return Err(Error::closed("the AMQP channel was closed"));
        }
        if let Some(slot) = self.slot.lock().as_ref()
            && slot.channel.status().connected()
        {
            return Ok(slot.clone());
        }
        let _one = self.opening.lock().await;
        if let Some(slot) = self.slot.lock().as_ref()
            && slot.channel.status().connected()
        {
            return Ok(slot.clone());
        }
        let (conn, _) = self.shared.connection().await?;
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| map(e, "open an AMQP channel"))?;
        if self.confirms {
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| map(e, "enable publisher confirms"))?;
        }
        if self.is_closed() {
            let _ = ch.close(200, "OK".into()).await;
            return Err(Error::closed("the AMQP channel was closed"));
        }
        let slot = Slot {
            settlements: Settlements::new(ch.clone(), self.in_flight.clone()),
            channel: ch,
        };
        *self.slot.lock() = Some(slot.clone());
        Ok(slot)
    }

    /// Whether an operation that failed with `e` is worth running again: the connection or the
    /// channel went away under it (not closed by us), recovery is on and there is time left.
    pub(crate) fn retryable(&self, e: &Error, deadline: Instant) -> bool {
        matches!(
            e.kind(),
            ErrorKind::Connection | ErrorKind::Closed | ErrorKind::Timeout
        ) && !self.is_closed()
            && !self.shared.is_closed()
            && self.shared.options().recover
            && Instant::now() < deadline
    }

    /// When an operation started now stops retrying: the recovery timeout from now.
    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.shared.options().recover_timeout
    }

    /// Runs `op` on the lapin channel, again on a new one when the connection or channel went
    /// away under it.
    pub(crate) async fn run<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn(lapin::Channel) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.run_on_slot(|slot| op(slot.channel)).await
    }

    /// Sends what waits before an operation other than a publish: recorded acks (so that a
    /// channel error the operation causes does not drop them), and publishes without confirms
    /// (lapin writes method frames before queued publishes, so a purge or a `get` could
    /// otherwise overtake a publish that already returned).
    pub(crate) async fn send_pending_now(&self) {
        let settlements = self.slot.lock().as_ref().map(|s| s.settlements.clone());
        if let Some(settlements) = settlements {
            settlements.flush();
        }
        self.unwritten.drain(DRAIN).await;
    }

    /// As [`run`](Inner::run), with the lapin channel's settlements too.
    pub(crate) async fn run_on_slot<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn(Slot) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.send_pending_now().await;
        let deadline = self.deadline();
        loop {
            match self.slot().and_then(&op).await {
                Ok(v) => return Ok(v),
                Err(e) if self.retryable(&e, deadline) => {
                    tracing::debug!(error = %e, "AMQP operation interrupted; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[async_trait]
impl SendPending for Inner {
    async fn send_pending(&self) {
        self.send_pending_now().await;
    }
}
