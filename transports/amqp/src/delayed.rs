//! Delayed delivery on RabbitMQ in kombu's native delayed-delivery layout, the one Celery uses
//! (`kombu/transport/native_delayed_delivery.py`), so Celery workers and kombu-rs see the same
//! messages:
//!
//! - 28 topic exchanges `celery_delayed_27` .. `celery_delayed_0`, each with a queue of its
//!   name bound with `1.#` shifted by level (`*.*.1.#`...), `x-message-ttl` = 2^level s,
//!   dead-lettering to the next level and, from level 0, to the topic exchange
//!   `celery_delayed_delivery`; each level's exchange is bound to the next one's with the `0`
//!   pattern of that level, so a message skips the levels whose bit is 0.
//! - A delayed message is published to `celery_delayed_27` with the routing key
//!   `<delay in seconds as 28 binary digits, dot-separated>.<routing key>`: it waits 2^level s in
//!   each level whose bit is 1, then reaches `celery_delayed_delivery`.
//! - `celery_delayed_delivery` is bound to the message's destination exchange with
//!   `#.<routing key>` (kombu-rs binds it on the first delayed publish to that exchange and key;
//!   Celery's `bind_queue_to_native_delayed_delivery_exchange` does it per queue); the
//!   destination must be a **topic** exchange whose queues are bound with a pattern that takes
//!   the prefixed key, such as `#.<routing key>` (as that kombu function binds them). The
//!   delivery exchange routes by routing key alone: every exchange bound to it for a key gets
//!   a copy of each due message with that key, as in Celery, so a delayed routing key should
//!   name one destination.
//!
//! Whole seconds only: a delay is rounded up (never early), from 1 s to 2^28 - 1 s (about 8.5
//! years). The queues are declared as quorum queues, as Celery declares them, unless they exist
//! already (then they are used as they are). The topology and bindings are replayed after a
//! reconnect like every other declaration.

use std::sync::atomic::Ordering;
use std::time::Duration;

use kombu_core::transport::{Channel, Outgoing};
use kombu_core::{Binding, Error, ErrorKind, Exchange, ExchangeKind, Queue, Result};

use crate::channel::AmqpChannel;
use crate::connection::Declared;

/// Bits of the delay in seconds: 28 levels.
const LEVELS: u32 = 28;
/// The exchange due messages leave the levels by.
pub const DELIVERY_EXCHANGE: &str = "celery_delayed_delivery";
/// The longest delay, in seconds.
const MAX_SECONDS: u64 = (1 << LEVELS) - 1;

/// The name of one level's exchange and queue (`celery_delayed_N`).
pub fn level_name(level: u32) -> String {
    format!("celery_delayed_{level}")
}

/// The delay in whole seconds, rounded up; an error past 2^28 - 1 s.
fn seconds(delay: Duration) -> Result<u64> {
    let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    if secs > MAX_SECONDS {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "a delay of {delay:?} is longer than RabbitMQ's native delayed delivery allows ({MAX_SECONDS} s)"
            ),
        ));
    }
    Ok(secs.max(1))
}

/// Whether `key` starts with a delay prefix (28 binary digits, each followed by a dot).
fn has_prefix(key: &str) -> bool {
    let bytes = key.as_bytes();
    let len = 2 * LEVELS as usize;
    bytes.len() >= len
        && bytes[..len]
            .chunks(2)
            .all(|pair| matches!(pair, [b'0' | b'1', b'.']))
}

/// The routing key of a message delayed `secs` seconds (kombu's `calculate_routing_key`): a
/// prefix an earlier delay left on `routing_key` is replaced, not stacked.
pub fn delayed_routing_key(secs: u64, routing_key: &str) -> String {
    let key = if has_prefix(routing_key) {
        &routing_key[2 * LEVELS as usize..]
    } else {
        routing_key
    };
    let mut out = String::with_capacity(2 * LEVELS as usize + key.len());
    for level in (0..LEVELS).rev() {
        out.push(if secs >> level & 1 == 1 { '1' } else { '0' });
        out.push('.');
    }
    out.push_str(key);
    out
}

/// The pattern of a level's own queue: `1.#` after as many `*.` as levels above it.
fn level_pattern(level: u32, bit: char) -> String {
    let mut pattern = "*.".repeat((LEVELS - 1 - level) as usize);
    pattern.push(bit);
    pattern.push_str(".#");
    pattern
}

impl AmqpChannel {
    /// Turns a delayed message into its publish to `celery_delayed_27`, declaring the levels
    /// (once per connection) and binding the delivery exchange to its destination (once per
    /// exchange and key).
    pub(crate) async fn route_delayed(&self, mut outgoing: Outgoing) -> Result<Outgoing> {
        let Some(delay) = outgoing.delay.take() else {
            return Ok(outgoing);
        };
        if outgoing.exchange.is_empty() || outgoing.exchange.starts_with("amq.") {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "RabbitMQ's native delayed delivery routes through a topic exchange of the application's, not {:?}",
                    outgoing.exchange
                ),
            ));
        }
        if outgoing.message.properties.expiration.is_some() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "a delayed message cannot expire on RabbitMQ: its expiration would end its wait in the delay queues early",
            ));
        }
        let secs = seconds(delay)?;
        let key = delayed_routing_key(secs, &outgoing.routing_key);
        let plain = &key[2 * LEVELS as usize..];
        self.ensure_levels().await?;
        let route = Declared::ExchangeBinding {
            destination: outgoing.exchange.clone(),
            source: DELIVERY_EXCHANGE.to_owned(),
            routing_key: format!("#.{plain}"),
        };
        if !self.shared().is_recorded(&route) {
            self.declare_entry(&route).await?;
        }
        outgoing.exchange = level_name(LEVELS - 1);
        outgoing.routing_key = key;
        Ok(outgoing)
    }

    /// Declares the levels and the delivery exchange, once per connection.
    async fn ensure_levels(&self) -> Result<()> {
        let shared = self.shared();
        if shared.delayed_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let _one = shared.delayed_setup.lock().await;
        if shared.delayed_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        // Queues Celery (or an earlier run) declared are used as they are: declaring them
        // again with other arguments would fail.
        let have_queues = Channel::queue_exists(self, &level_name(0)).await?;
        for level in (0..LEVELS).rev() {
            let name = level_name(level);
            let exchange = Exchange::new(name.clone(), ExchangeKind::Topic);
            self.declare_entry(&Declared::Exchange(exchange)).await?;
            let next = match level {
                0 => DELIVERY_EXCHANGE.to_owned(),
                _ => level_name(level - 1),
            };
            if !have_queues {
                let queue = Queue::new(name.clone())
                    .argument("x-queue-type", "quorum")
                    .argument("x-overflow", "reject-publish")
                    .argument("x-dead-letter-strategy", "at-least-once")
                    .message_ttl(Duration::from_secs(1 << level))
                    .dead_letter_exchange(next.clone());
                self.declare_entry(&Declared::Queue(queue)).await?;
            }
            self.declare_entry(&Declared::Binding(
                name.clone(),
                Binding::new(name.clone(), level_pattern(level, '1')),
            ))
            .await?;
        }
        self.declare_entry(&Declared::Exchange(Exchange::new(
            DELIVERY_EXCHANGE,
            ExchangeKind::Topic,
        )))
        .await?;
        for level in (1..LEVELS).rev() {
            self.declare_entry(&Declared::ExchangeBinding {
                destination: level_name(level - 1),
                source: level_name(level),
                routing_key: level_pattern(level, '0'),
            })
            .await?;
        }
        // Level 0's `0` pattern leads to the delivery exchange (kombu binds it so too).
        self.declare_entry(&Declared::ExchangeBinding {
            destination: DELIVERY_EXCHANGE.to_owned(),
            source: level_name(0),
            routing_key: level_pattern(0, '0'),
        })
        .await?;
        shared.delayed_ready.store(true, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_are_kombus() {
        // kombu: calculate_routing_key(5, "q") == "0." * 25 + "1.0.1.q"
        let key = delayed_routing_key(5, "q");
        assert_eq!(key, format!("{}1.0.1.q", "0.".repeat(25)));
        // A prefix from an earlier delay is replaced.
        assert_eq!(
            delayed_routing_key(1, &key),
            format!("{}1.q", "0.".repeat(27))
        );
        assert_eq!(
            delayed_routing_key(MAX_SECONDS, "a.b"),
            format!("{}a.b", "1.".repeat(28))
        );
    }

    #[test]
    fn delays_round_up_to_whole_seconds() -> Result<()> {
        assert_eq!(seconds(Duration::from_millis(1))?, 1);
        assert_eq!(seconds(Duration::from_millis(1500))?, 2);
        assert_eq!(seconds(Duration::from_secs(3))?, 3);
        assert!(seconds(Duration::from_secs(MAX_SECONDS + 1)).is_err());
        Ok(())
    }

    #[test]
    fn level_patterns_are_kombus() {
        assert_eq!(level_pattern(27, '1'), "1.#");
        assert_eq!(level_pattern(26, '1'), "*.1.#");
        assert_eq!(level_pattern(0, '0'), format!("{}0.#", "*.".repeat(27)));
    }
}
