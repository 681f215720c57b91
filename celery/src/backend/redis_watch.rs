//! One PUB/SUB connection per Redis result backend for every waiting client. Each wait asks
//! for its result key's channel; one task (the only one that sends `SUBSCRIBE` and
//! `UNSUBSCRIBE`, so they never cross) subscribes the channel for its first waiter and
//! unsubscribes it after its last; a reader task hands each published document to the
//! channel's waiters through a watch channel. A connection that drops wakes every waiter (who
//! reads the key itself) and is replaced at the next wait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};

type Latest = watch::Sender<Option<Vec<u8>>>;
type Channels = Arc<Mutex<HashMap<String, (usize, Latest)>>>;

enum Request {
    Subscribe {
        channel: String,
        done: oneshot::Sender<redis::RedisResult<watch::Receiver<Option<Vec<u8>>>>>,
    },
    Unsubscribe {
        channel: String,
    },
}

/// The shared subscription connection.
pub(crate) struct Watcher {
    requests: mpsc::UnboundedSender<Request>,
    alive: Arc<AtomicBool>,
}

impl Watcher {
    /// Opens the connection and starts its two tasks (they end with the connection, or once
    /// the watcher and every subscription are gone).
    pub(crate) async fn open(client: &redis::Client) -> redis::RedisResult<Watcher> {
        let (mut sink, mut stream) = client.get_async_pubsub().await?.split();
        let channels: Channels = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let reader = {
            let channels = channels.clone();
            let alive = alive.clone();
            tokio::spawn(async move {
                while let Some(message) = stream.next().await {
                    let name = message.get_channel_name();
                    if let Ok(channels) = channels.lock()
                        && let Some((_, latest)) = channels.get(name)
                    {
                        latest.send_replace(Some(message.get_payload_bytes().to_vec()));
                    }
                }
                // Gone: dropping the senders wakes every waiter.
                alive.store(false, Ordering::Release);
                if let Ok(mut channels) = channels.lock() {
                    channels.clear();
                }
            })
        };
        let (requests, mut incoming) = mpsc::unbounded_channel::<Request>();
        tokio::spawn(async move {
            while let Some(request) = incoming.recv().await {
                match request {
                    Request::Subscribe { channel, done } => {
                        let (first, receiver) = match channels.lock() {
                            Ok(mut channels) => {
                                let entry = channels
                                    .entry(channel.clone())
                                    .or_insert_with(|| (0, watch::channel(None).0));
                                entry.0 += 1;
                                (entry.0 == 1, entry.1.subscribe())
                            }
                            Err(_) => {
                                let _ = done.send(Err(poisoned()));
                                continue;
                            }
                        };
                        let subscribed = match first {
                            true => sink.subscribe(&channel).await,
                            false => Ok(()),
                        };
                        let failed = subscribed.is_err();
                        // A failed SUBSCRIBE, or a waiter gone meanwhile (its wait cancelled),
                        // is not counted: the channel stays subscribed only while waited on.
                        if done.send(subscribed.map(|()| receiver)).is_err() || failed {
                            let last = forget(&channels, &channel);
                            if last && !failed {
                                let _ = sink.unsubscribe(&channel).await;
                            }
                        }
                    }
                    Request::Unsubscribe { channel } => {
                        if forget(&channels, &channel) {
                            // A failure leaves a subscription nobody listens to, until the
                            // connection ends.
                            let _ = sink.unsubscribe(&channel).await;
                        }
                    }
                }
            }
            // The backend and every waiter are gone: so is the connection.
            reader.abort();
        });
        Ok(Watcher { requests, alive })
    }

    /// Whether its connection still stands.
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire) && !self.requests.is_closed()
    }

    /// One more waiter of `channel`: the documents published there from the moment this
    /// returns (the subscription confirmed), until the [`Subscription`] drops.
    pub(crate) async fn subscribe(&self, channel: &str) -> redis::RedisResult<Subscription> {
        let (done, confirmed) = oneshot::channel();
        let request = Request::Subscribe {
            channel: channel.to_owned(),
            done,
        };
        if self.requests.send(request).is_err() {
            return Err(gone());
        }
        let latest = confirmed.await.map_err(|_| gone())??;
        Ok(Subscription {
            channel: channel.to_owned(),
            latest,
            requests: self.requests.clone(),
        })
    }
}

/// One waiter fewer on `channel`: whether it was the last.
fn forget(channels: &Channels, channel: &str) -> bool {
    match channels.lock() {
        Ok(mut channels) => match channels.get_mut(channel) {
            Some(entry) if entry.0 > 1 => {
                entry.0 -= 1;
                false
            }
            Some(_) => {
                channels.remove(channel);
                true
            }
            None => false,
        },
        Err(_) => false,
    }
}

fn gone() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Io,
        "the result backend's subscription connection is gone",
    ))
}

fn poisoned() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Client, "the waiters' table is poisoned"))
}

/// One waiter's interest in one channel.
pub(crate) struct Subscription {
    channel: String,
    /// The latest document published on the channel (`None` before the first).
    pub(crate) latest: watch::Receiver<Option<Vec<u8>>>,
    requests: mpsc::UnboundedSender<Request>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let channel = std::mem::take(&mut self.channel);
        // Closed only when the connection's tasks ended: nothing to unsubscribe then.
        let _ = self.requests.send(Request::Unsubscribe { channel });
    }
}
