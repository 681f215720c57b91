//! The lease heartbeat of the handler styles: while a handler runs, the lease of the delivery
//! it handles is extended at an interval, so a slow task is not restored to its queue (and
//! handed to another consumer) while it still runs.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::channel::{Delivery, Settler};
use crate::error::{ErrorKind, Result};

/// Shortest interval between two extensions of one lease.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// How often a consumer extends the lease of the delivery its handler runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Heartbeat {
    /// A third of the delivery's visibility timeout, where it has one (the default).
    #[default]
    Auto,
    /// Every this long (where the delivery has a lease).
    Every(Duration),
    /// Never.
    Off,
}

impl Heartbeat {
    /// `Duration::ZERO` is off.
    pub(crate) fn every(interval: Duration) -> Self {
        if interval.is_zero() {
            Heartbeat::Off
        } else {
            Heartbeat::Every(interval)
        }
    }
}

/// What extends one delivery's lease, and how often.
pub(crate) struct Keeper {
    settler: Arc<dyn Settler>,
    tag: u64,
    interval: Duration,
}

/// The keeper of `delivery`'s lease under `heartbeat`; `None` when nothing is to be extended
/// (no lease, no-ack, heartbeat off).
pub(crate) fn keeper(delivery: &Delivery, heartbeat: Heartbeat) -> Option<Keeper> {
    if heartbeat == Heartbeat::Off {
        return None;
    }
    let (settler, tag, lease) = delivery.lease_keeper()?;
    let lease = lease?;
    let interval = match heartbeat {
        Heartbeat::Every(interval) => interval,
        _ => lease / 3,
    };
    Some(Keeper {
        settler,
        tag,
        interval: interval.max(MIN_INTERVAL),
    })
}

/// Runs `work` to its end, extending the lease `keeper` names every interval meanwhile. The
/// extensions stop once the lease is gone (the handler settled the delivery, or the lease had
/// already ended); a failed extension is logged and tried again at the next beat.
pub(crate) async fn run<Fut>(keeper: Option<Keeper>, work: Fut) -> Result<()>
where
    Fut: Future<Output = Result<()>>,
{
    let Some(keeper) = keeper else {
        return work.await;
    };
    let beat = async move {
        loop {
            // An interval too long for the clock: never beats.
            let Some(next) = Instant::now().checked_add(keeper.interval) else {
                return std::future::pending::<()>().await;
            };
            tokio::time::sleep_until(next).await;
            match keeper.settler.extend_lease(keeper.tag).await {
                Ok(()) => {}
                Err(error) if error.kind() == ErrorKind::StaleDelivery => {
                    tracing::debug!(tag = keeper.tag, %error, "lease heartbeat stops: the lease is gone");
                    return std::future::pending::<()>().await;
                }
                Err(error) => {
                    tracing::warn!(
                        tag = keeper.tag,
                        error = %format_args!("{error:#}"),
                        "could not extend a lease; trying again at the next beat"
                    );
                }
            }
        }
    };
    tokio::pin!(work);
    tokio::pin!(beat);
    // The handler and the beat are polled together: an extension in flight never holds the
    // handler back.
    match futures::future::select(work, beat).await {
        futures::future::Either::Left((done, _)) => done,
        futures::future::Either::Right(((), work)) => work.await,
    }
}
