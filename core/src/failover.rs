//! [`FailoverStrategy`]: the order in which `;`-separated failover URLs are tried, as kombu's
//! `failover_strategy` transport option: `round-robin` (the default: in order, starting with
//! the URL given first, or after the one just lost) or `shuffle` (a new random order for each
//! round, so that many clients spread over the alternatives).
//!
//! It is read from the `failover_strategy` query option of the first URL
//! (`amqp://a/?failover_strategy=shuffle;amqp://b/`) or set with
//! [`ConnectionBuilder::failover_strategy`](crate::ConnectionBuilder::failover_strategy). The
//! connection tries the alternatives in this order when it opens; a transport that reconnects
//! by itself after a loss (AMQP) follows it too, through [`FailoverStrategy::order`].
//!
//! ```
//! use kombu_core::FailoverStrategy;
//!
//! # fn main() -> kombu_core::Result<()> {
//! let strategy: FailoverStrategy = "round-robin".parse()?;
//! // Three alternatives, the one at index 1 just lost: the next round starts after it.
//! assert_eq!(strategy.order(3, 2), [2, 0, 1]);
//!
//! let shuffled = FailoverStrategy::Shuffle.order(3, 0);
//! let mut sorted = shuffled.clone();
//! sorted.sort();
//! assert_eq!(sorted, [0, 1, 2]);
//! # Ok(()) }
//! ```

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, ErrorKind, Result};
use crate::url::BrokerUrl;

/// The URL query option naming the strategy (on the first URL of a failover list).
pub const FAILOVER_STRATEGY_OPTION: &str = "failover_strategy";

/// The order in which failover URLs are tried. See the [module](crate::failover) docs.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailoverStrategy {
    /// In order, starting with a given alternative and wrapping around (kombu's
    /// `round-robin`, its default).
    #[default]
    RoundRobin,
    /// Every alternative once per round, in a new random order each round (kombu's
    /// `shuffle`).
    Shuffle,
}

impl FailoverStrategy {
    /// The strategy named in the `failover_strategy` query option of the first of
    /// `alternates`; [`FailoverStrategy::RoundRobin`] when absent. An unknown name is an
    /// [`ErrorKind::InvalidUrl`] error.
    pub fn from_urls(alternates: &[BrokerUrl]) -> Result<FailoverStrategy> {
        match alternates
            .first()
            .and_then(|url| url.query(FAILOVER_STRATEGY_OPTION))
        {
            None => Ok(FailoverStrategy::RoundRobin),
            Some(name) => name.parse().map_err(|e: Error| {
                Error::new(
                    ErrorKind::InvalidUrl,
                    format!("{}: {}", alternates[0], e.message()),
                )
            }),
        }
    }

    /// The indexes of `count` alternatives in the order one round tries them. Round-robin
    /// starts at `start` (taken modulo `count`) and wraps around; shuffle is a fresh random
    /// permutation of all of them (`start` is not used). Empty when `count` is 0.
    pub fn order(self, count: usize, start: usize) -> Vec<usize> {
        if count == 0 {
            return Vec::new();
        }
        match self {
            FailoverStrategy::RoundRobin => (0..count).map(|i| (start + i) % count).collect(),
            FailoverStrategy::Shuffle => {
                let mut order: Vec<usize> = (0..count).collect();
                // Fisher-Yates with a fresh UUID's random bits: no extra dependency for this.
                for i in (1..count).rev() {
                    let bits = uuid::Uuid::new_v4().as_u128();
                    let j = usize::try_from(bits % (i as u128 + 1)).unwrap_or(0);
                    order.swap(i, j);
                }
                order
            }
        }
    }

    /// The name kombu uses (`round-robin`, `shuffle`).
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverStrategy::RoundRobin => "round-robin",
            FailoverStrategy::Shuffle => "shuffle",
        }
    }
}

impl fmt::Display for FailoverStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FailoverStrategy {
    type Err = Error;

    /// `round-robin` (or `round_robin`, `roundrobin`) and `shuffle`, in any case.
    fn from_str(name: &str) -> Result<FailoverStrategy> {
        match name.trim().to_ascii_lowercase().as_str() {
            "round-robin" | "round_robin" | "roundrobin" => Ok(FailoverStrategy::RoundRobin),
            "shuffle" => Ok(FailoverStrategy::Shuffle),
            other => Err(Error::config(format!(
                "failover_strategy {other:?} is not round-robin or shuffle"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_starts_where_asked_and_wraps() {
        let s = FailoverStrategy::RoundRobin;
        assert_eq!(s.order(3, 0), [0, 1, 2]);
        assert_eq!(s.order(3, 1), [1, 2, 0]);
        assert_eq!(s.order(3, 5), [2, 0, 1]);
        assert!(s.order(0, 0).is_empty());
    }

    #[test]
    fn shuffle_is_a_permutation_and_gives_every_order_over_many_rounds() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..500 {
            let order = FailoverStrategy::Shuffle.order(3, 0);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2]);
            seen.insert(order);
        }
        // 3! orders, each with probability 1/6 per round: all six appear in 500 rounds
        // (missing one has probability below 1e-38).
        assert_eq!(seen.len(), 6, "{seen:?}");
        let two: std::collections::HashSet<Vec<usize>> = (0..200)
            .map(|_| FailoverStrategy::Shuffle.order(2, 0))
            .collect();
        assert_eq!(two.len(), 2, "both orders of two alternatives happen");
    }

    #[test]
    fn read_from_the_first_url() -> crate::Result<()> {
        let urls = BrokerUrl::parse_failover("amqp://a/?failover_strategy=shuffle;amqp://b/")?;
        assert_eq!(
            FailoverStrategy::from_urls(&urls)?,
            FailoverStrategy::Shuffle
        );
        let urls = BrokerUrl::parse_failover("amqp://a/;amqp://b/")?;
        assert_eq!(
            FailoverStrategy::from_urls(&urls)?,
            FailoverStrategy::RoundRobin
        );
        let urls = BrokerUrl::parse_failover("amqp://u:secret@a/?failover_strategy=random")?;
        let err = FailoverStrategy::from_urls(&urls).expect_err("unknown strategy");
        assert_eq!(err.kind(), ErrorKind::InvalidUrl);
        assert!(!err.to_string().contains("secret"), "{err}");
        assert_eq!(
            "Round-Robin".parse::<FailoverStrategy>().ok(),
            Some(FailoverStrategy::RoundRobin)
        );
        Ok(())
    }
}
