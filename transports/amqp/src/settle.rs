//! Settling deliveries: acks coalesced into `basic.ack` with `multiple`, rejects at once.
//!
//! A consumer acking message after message would send the broker one `basic.ack` each. Here an
//! ack is recorded and sent later, together with the acks around it, as one `basic.ack` with
//! `multiple` set (it settles every delivery of the AMQP channel up to its tag), which roughly
//! halves what the broker and the client spend per message. Acks are sent
//!
//! - when [`ACK_BATCH`] of them (at most a quarter of the prefetch window) are waiting;
//! - when a consumer of the channel has no delivery to hand out and is about to wait while at
//!   least half of its prefetch window is unsettled (the broker may be waiting for acks);
//! - [`ACK_LINGER`] after the first one waiting, at the latest;
//! - before any other operation on the channel, and before the channel or its connection
//!   closes.
//!
//! `multiple` may only cover deliveries the application acked: it is used only up to the
//! highest tag below which every delivery of the channel was seen here (the broker numbers the
//! deliveries of a channel 1, 2, 3, ... across all its consumers and `basic.get`s) and acked.
//! Acks above a delivery still held, or above one never seen, are sent one by one when a batch
//! is sent. Rejects and requeues are sent at once, one by one.
//!
//! Frames are handed to the lapin channel itself, in order, under one lock: lapin's per-delivery
//! ackers run each settlement as a task of its own, so a single ack could reach the broker after
//! a `multiple` one that already covered its tag (an error that closes the channel).
//!
//! An acked message whose `basic.ack` was not sent yet when the process dies is delivered again
//! (at-least-once), as one whose ack frame was still in a socket buffer would be.

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use kombu_core::transport::Outcome;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use parking_lot::Mutex;

/// Most acks waiting to be sent together.
pub(crate) const ACK_BATCH: usize = 64;
/// Longest an ack waits to be sent with others.
pub(crate) const ACK_LINGER: Duration = Duration::from_millis(10);
/// Deliveries seen out of order that are remembered while waiting for the ones before them;
/// past this, acks of the channel go one by one.
const MAX_PARKED: usize = 4096;

/// A settlement on its way to the broker.
pub(crate) type SettleFuture = Pin<Box<dyn Future<Output = lapin::Result<bool>> + Send>>;

/// Settlements handed to lapin's I/O loop without waiting for each to be written. Closing the
/// channel waits for them first, so a settlement is never overtaken by the channel's close.
#[derive(Default)]
pub(crate) struct InFlight {
    settlements: Mutex<FuturesUnordered<SettleFuture>>,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("settlements", &self.settlements.lock().len())
            .finish()
    }
}

impl InFlight {
    /// Starts `settlement` (its first poll hands the frame to lapin's I/O loop, in the order of
    /// the calls). Its result when it finished at once (a refused or failed settlement), else
    /// `None`: it is on its way.
    pub(crate) fn start(&self, mut settlement: SettleFuture) -> Option<lapin::Result<bool>> {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        if let Poll::Ready(done) = settlement.as_mut().poll(&mut cx) {
            return Some(done);
        }
        let mut all = self.settlements.lock();
        all.push(settlement);
        // Reap the ones written since.
        while let Poll::Ready(Some(done)) = all.poll_next_unpin(&mut cx) {
            match done {
                Ok(true) => {}
                Ok(false) => tracing::debug!("a settlement was refused: its channel ended"),
                Err(error) => tracing::debug!(%error, "a settlement failed"),
            }
        }
        None
    }

    /// Waits (at most `within`) until every started settlement is written.
    pub(crate) async fn drain(&self, within: Duration) {
        let all = std::mem::take(&mut *self.settlements.lock());
        if !all.is_empty() {
            let _ = tokio::time::timeout(within, all.collect::<Vec<_>>()).await;
        }
    }
}

/// The settlements of one AMQP channel's deliveries. See the module docs.
#[derive(Debug)]
pub(crate) struct Settlements {
    /// The AMQP channel the deliveries came on.
    channel: lapin::Channel,
    state: Mutex<State>,
    in_flight: Arc<InFlight>,
    /// A flush after [`ACK_LINGER`] is scheduled (outside `state`: the guard of a task that
    /// is dropped at once clears it while `state` is locked).
    timer: AtomicBool,
}

/// What is known of a channel's deliveries, and which acks wait to be sent.
#[derive(Debug)]
struct State {
    /// Deliveries handed out in ack mode and not settled on the broker yet, by ascending tag;
    /// `true` once acked here.
    open: VecDeque<(u64, bool)>,
    /// Entries of `open` that are acked here.
    acked: usize,
    /// Every delivery tag up to this one was seen.
    seen_through: u64,
    /// Tags seen above a gap.
    parked: BTreeSet<u64>,
    /// Off when a gap in the tags lasted too long: acks go one by one.
    coalesce: bool,
    /// Acks waiting for this many are sent (a quarter of the smallest prefetch, at most
    /// [`ACK_BATCH`]).
    batch: usize,
    /// The smallest prefetch window of the channel's consumers (0: none set).
    prefetch: usize,
}

/// An ack frame to send: the delivery tag, and whether it is `multiple`.
type AckFrame = (u64, bool);

impl State {
    fn new() -> State {
        State {
            open: VecDeque::new(),
            acked: 0,
            seen_through: 0,
            parked: BTreeSet::new(),
            coalesce: true,
            batch: ACK_BATCH,
            prefetch: 0,
        }
    }

    fn limit_batch(&mut self, prefetch: usize) {
        if prefetch > 0 {
            self.batch = self.batch.min((prefetch / 4).max(1));
            self.prefetch = match self.prefetch {
                0 => prefetch,
                p => p.min(prefetch),
            };
        }
    }

    fn seen(&mut self, tag: u64, ack_mode: bool) {
        if ack_mode {
            let at = self.open.partition_point(|(t, _)| *t < tag);
            self.open.insert(at, (tag, false));
        }
        if tag == self.seen_through + 1 {
            self.seen_through = tag;
            while self.parked.first() == Some(&(self.seen_through + 1)) {
                self.parked.pop_first();
                self.seen_through += 1;
            }
        } else if tag > self.seen_through {
            self.parked.insert(tag);
            if self.parked.len() > MAX_PARKED {
                tracing::debug!(
                    "AMQP delivery tags with a lasting gap: acks of this channel go one by one"
                );
                self.coalesce = false;
                self.parked.clear();
            }
        }
    }

    /// Records the ack of `tag`; `false` when it must be sent at once, alone.
    fn ack(&mut self, tag: u64) -> bool {
        if !self.coalesce {
            self.forget(tag);
            return false;
        }
        match self.open.binary_search_by_key(&tag, |(t, _)| *t) {
            Ok(at) => {
                if !self.open[at].1 {
                    self.open[at].1 = true;
                    self.acked += 1;
                }
                true
            }
            Err(_) => false,
        }
    }

    /// `tag` is settled by a frame of its own.
    fn forget(&mut self, tag: u64) {
        if let Ok(at) = self.open.binary_search_by_key(&tag, |(t, _)| *t) {
            if self.open[at].1 {
                self.acked -= 1;
            }
            self.open.remove(at);
        }
    }

    fn is_full(&self) -> bool {
        self.acked >= self.batch
    }

    /// Whether the broker may be holding deliveries back for the acks recorded here (half
    /// the prefetch window or more unsettled).
    fn is_blocking(&self) -> bool {
        self.acked > 0 && self.prefetch > 0 && self.open.len() * 2 >= self.prefetch
    }

    /// The frames that send every recorded ack: the acked prefix, up to what was seen without
    /// gaps, as one `multiple` ack; acks above a delivery still held (or not seen) one by one.
    fn take_frames(&mut self) -> Vec<AckFrame> {
        let mut frames = Vec::new();
        if self.acked == 0 {
            return frames;
        }
        let mut last = None;
        while let Some(&(tag, true)) = self.open.front()
            && tag <= self.seen_through
        {
            self.open.pop_front();
            self.acked -= 1;
            last = Some(tag);
        }
        if let Some(tag) = last {
            frames.push((tag, true));
        }
        if self.acked > 0 {
            self.open.retain(|&(tag, acked)| {
                if acked {
                    frames.push((tag, false));
                }
                !acked
            });
            self.acked = 0;
        }
        frames
    }
}

impl Settlements {
    /// Whether the AMQP channel the deliveries came on is still open.
    pub(crate) fn channel_open(&self) -> bool {
        self.channel.status().connected()
    }

    pub(crate) fn new(channel: lapin::Channel, in_flight: Arc<InFlight>) -> Arc<Settlements> {
        Arc::new(Settlements {
            channel,
            state: Mutex::new(State::new()),
            in_flight,
            timer: AtomicBool::new(false),
        })
    }

    /// A consumer with this prefetch window subscribes: acks must not wait long enough to
    /// fill its window.
    pub(crate) fn limit_batch(&self, prefetch: u16) {
        self.state.lock().limit_batch(usize::from(prefetch));
    }

    /// A consumer has nothing to hand out: sends the recorded acks if the broker may be
    /// holding deliveries back for them.
    pub(crate) fn idle(&self) {
        let mut state = self.state.lock();
        if state.is_blocking() {
            self.flush_locked(&mut state);
        }
    }

    /// Delivery `tag` of the channel was received; `ack_mode` when it waits for a settlement.
    pub(crate) fn seen(&self, tag: u64, ack_mode: bool) {
        self.state.lock().seen(tag, ack_mode);
    }

    /// Settles delivery `tag`. `Some` with the result when it is known at once (`Ok(false)`:
    /// the channel ended), `None` when it is recorded or on its way.
    pub(crate) fn settle(
        self: &Arc<Self>,
        tag: u64,
        outcome: Outcome,
    ) -> Option<lapin::Result<bool>> {
        if !self.channel.status().connected() {
            return Some(Ok(false));
        }
        let mut state = self.state.lock();
        if outcome == Outcome::Ack && state.ack(tag) {
            if state.is_full() {
                self.flush_locked(&mut state);
            } else if !self.timer.swap(true, Ordering::AcqRel) {
                self.schedule(&mut state);
            }
            return None;
        }
        state.forget(tag);
        // Sent while the lock is held, so that it is queued in order with the acks.
        self.in_flight.start(self.send(tag, outcome, false))
    }

    /// Sends every recorded ack.
    pub(crate) fn flush(&self) {
        let mut state = self.state.lock();
        self.flush_locked(&mut state);
    }

    fn flush_locked(&self, state: &mut State) {
        for (tag, multiple) in state.take_frames() {
            match self.in_flight.start(self.send(tag, Outcome::Ack, multiple)) {
                None | Some(Ok(true)) => {}
                Some(Ok(false)) => tracing::debug!("acks refused: their channel ended"),
                Some(Err(error)) => tracing::debug!(%error, "acks failed"),
            }
        }
    }

    /// The settlement frame for delivery `tag` (`multiple`: and every one before it on the
    /// channel). Its first poll queues the frame.
    fn send(&self, tag: u64, outcome: Outcome, multiple: bool) -> SettleFuture {
        let channel = self.channel.clone();
        Box::pin(async move {
            match outcome {
                Outcome::Ack => channel.basic_ack(tag, BasicAckOptions { multiple }).await,
                Outcome::Reject => {
                    channel
                        .basic_reject(tag, BasicRejectOptions { requeue: false })
                        .await
                }
                Outcome::Requeue => {
                    channel
                        .basic_reject(tag, BasicRejectOptions { requeue: true })
                        .await
                }
            }
            .map(|()| true)
        })
    }

    /// Flushes after [`ACK_LINGER`] (at once outside a tokio runtime). `timer` is set.
    fn schedule(self: &Arc<Self>, state: &mut State) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.timer.store(false, Ordering::Release);
            self.flush_locked(state);
            return;
        };
        let armed = Armed(Arc::downgrade(self));
        handle.spawn(async move {
            tokio::time::sleep(ACK_LINGER).await;
            armed.fire();
        });
    }
}

/// A scheduled flush. If its task is dropped unfinished (its runtime shut down), the next ack
/// schedules another.
struct Armed(Weak<Settlements>);

impl Armed {
    fn fire(mut self) {
        if let Some(this) = std::mem::take(&mut self.0).upgrade() {
            let mut state = this.state.lock();
            this.timer.store(false, Ordering::Release);
            this.flush_locked(&mut state);
        }
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        if let Some(this) = self.0.upgrade() {
            this.timer.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(prefetch: usize) -> State {
        let mut s = State::new();
        s.limit_batch(prefetch);
        s
    }

    #[test]
    fn acks_in_order_become_one_multiple_ack() {
        let mut s = state(100);
        for tag in 1..=5 {
            s.seen(tag, true);
        }
        for tag in 1..=5 {
            assert!(s.ack(tag));
        }
        assert_eq!(s.take_frames(), vec![(5, true)]);
        assert!(s.open.is_empty());
        assert_eq!(s.take_frames(), vec![]);
    }

    #[test]
    fn a_held_delivery_stops_the_multiple_ack_below_it() {
        let mut s = state(100);
        for tag in 1..=6 {
            s.seen(tag, true);
        }
        for tag in [1, 2, 4, 6] {
            assert!(s.ack(tag));
        }
        // 3 and 5 are still held: 1-2 together, 4 and 6 alone.
        assert_eq!(s.take_frames(), vec![(2, true), (4, false), (6, false)]);
        assert_eq!(s.open, VecDeque::from(vec![(3, false), (5, false)]));
        assert!(s.ack(5));
        assert!(s.ack(3));
        // 3 and 5 are the only open ones; nothing between them is unsettled.
        assert_eq!(s.take_frames(), vec![(5, true)]);
    }

    #[test]
    fn a_delivery_not_seen_yet_is_never_covered() {
        let mut s = state(100);
        // Tag 2 went to another consumer of the channel and has not been handed out.
        s.seen(1, true);
        s.seen(3, true);
        assert!(s.ack(1));
        assert!(s.ack(3));
        assert_eq!(s.take_frames(), vec![(1, true), (3, false)]);
        // Once 2 is seen, acks above it coalesce again.
        s.seen(2, true);
        s.seen(4, true);
        assert_eq!(s.seen_through, 4);
        assert!(s.ack(4));
        assert!(s.ack(2));
        assert_eq!(s.take_frames(), vec![(4, true)]);
    }

    #[test]
    fn no_ack_deliveries_and_rejects_leave_no_gap() {
        let mut s = state(100);
        s.seen(1, true);
        s.seen(2, false); // a no-ack delivery numbers a tag too
        s.seen(3, true);
        s.seen(4, true);
        s.forget(3); // rejected on its own
        assert!(s.ack(1));
        assert!(s.ack(4));
        assert_eq!(s.take_frames(), vec![(4, true)]);
    }

    #[test]
    fn unknown_tags_and_a_lasting_gap_are_sent_alone() {
        let mut s = state(100);
        assert!(!s.ack(9), "a tag never seen is acked on its own");
        s.seen(2, true);
        for tag in 3..(3 + MAX_PARKED as u64 + 1) {
            s.seen(tag, false);
        }
        assert!(!s.coalesce);
        assert!(!s.ack(2));
        assert!(s.open.is_empty());
    }

    #[test]
    fn the_batch_and_the_window_follow_the_prefetch() {
        let mut s = state(8);
        assert_eq!(s.batch, 2);
        for tag in 1..=4 {
            s.seen(tag, true);
        }
        assert!(s.ack(1));
        assert!(!s.is_full());
        assert!(s.is_blocking(), "4 of a window of 8 unsettled");
        assert!(s.ack(2));
        assert!(s.is_full());
        let mut one = state(1);
        assert_eq!(one.batch, 1);
        one.seen(1, true);
        assert!(one.ack(1));
        assert!(one.is_full());
        let unlimited = state(0);
        assert_eq!(unlimited.batch, ACK_BATCH);
        assert!(!unlimited.is_blocking());
    }
}
