//! The wait of a store that cannot block on a write from another process: look, sleep,
//! look again, backing off while idle, and return at once when this process writes.

use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::sync::futures::Notified;

use crate::error::Result;

/// Looks with `ready` until it says a message may be ready, `woken` fires (a put through
/// this backend), or `timeout` passes, whichever is first: the body of a
/// [`Backend::wait`](super::Backend::wait) for a store that can only be asked.
///
/// Between looks it sleeps, starting at `first_pause` (short, so a consumer right after
/// activity sees the next message soon) and doubling up to `longest_pause` (the transport's
/// polling interval, so an idle consumer costs little). `woken` should be enabled before the
/// first look, so a put between the look and the sleep is not missed.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kombu_core::Result<()> {
/// use std::time::Duration;
/// use kombu_core::transport::virtual_transport::poll_until_ready;
///
/// let wake = tokio::sync::Notify::new();
/// let notified = wake.notified();
/// tokio::pin!(notified);
/// notified.as_mut().enable();
/// let mut looks = 0;
/// let pauses = (Duration::from_millis(1), Duration::from_millis(4));
/// poll_until_ready(notified, Duration::from_secs(5), pauses, || {
///     looks += 1;
///     let seen = looks;
///     async move { Ok(seen == 3) }
/// })
/// .await?;
/// assert_eq!(looks, 3);
/// # Ok(()) }
/// ```
pub async fn poll_until_ready<F, Fut>(
    mut woken: Pin<&mut Notified<'_>>,
    timeout: Duration,
    (first_pause, longest_pause): (Duration, Duration),
    mut ready: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    let longest_pause = longest_pause.max(first_pause);
    let mut pause = first_pause;
    loop {
        if ready().await? {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        tokio::select! {
            _ = woken.as_mut() => return Ok(()),
            _ = tokio::time::sleep(pause.min(left)) => {}
        }
        pause = (pause * 2).min(longest_pause);
    }
}
