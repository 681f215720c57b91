//! [`LinkState`]: whether a connection is up, coming back, or gone for good, as a
//! [`tokio::sync::watch`] channel ([`Connection::link`](crate::Connection::link),
//! [`Consumer::link`](crate::Consumer::link)).
//!
//! Transports report it through a [`LinkReporter`]; a transport that never loses its broker
//! (memory) reports nothing and reads as [`LinkState::Connected`] forever.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kombu_core::Result<()> {
//! use kombu_core::{Connection, LinkState};
//!
//! # kombu_core::transport::memory::register();
//! let conn = Connection::open("memory://doc-link").await?;
//! let link = conn.link();
//! assert!(matches!(*link.borrow(), LinkState::Connected));
//! # Ok(()) }
//! ```

use std::fmt;

use tokio::sync::watch;

/// Whether a connection is usable. See the [module](crate::link) docs.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Connected (again); operations run.
    Connected,
    /// The connection was lost; reconnecting, `attempt` tries so far. Operations wait or retry
    /// under their policies.
    Reconnecting {
        /// Reconnection attempts made since the loss.
        attempt: u32,
        /// Why the connection was lost, or why the last attempt failed.
        error: String,
    },
    /// Reconnecting gave up (its policy ran out, or a recovery round its timeout) or cannot
    /// succeed (a refused login); the connection is unusable until a later attempt succeeds
    /// (a transport that tries again in the background, as AMQP's does, then reports
    /// `Reconnecting` and `Connected`).
    Failed {
        /// The last error.
        error: String,
    },
    /// Closed by its owner.
    Closed,
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkState::Connected => f.write_str("connected"),
            LinkState::Reconnecting { attempt, error } => {
                write!(f, "reconnecting (attempt {attempt}): {error}")
            }
            LinkState::Failed { error } => write!(f, "failed: {error}"),
            LinkState::Closed => f.write_str("closed"),
        }
    }
}

/// The receiving side: [`borrow`](watch::Receiver::borrow) reads the state now,
/// [`changed`](watch::Receiver::changed) waits for the next one.
pub type LinkWatch = watch::Receiver<LinkState>;

/// The sending side of a connection's [`LinkState`], held by its transport. Cheap to clone;
/// every clone reports to the same receivers.
#[derive(Clone)]
pub struct LinkReporter {
    sender: watch::Sender<LinkState>,
}

impl fmt::Debug for LinkReporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkReporter")
            .field("state", &*self.sender.borrow())
            .finish()
    }
}

impl Default for LinkReporter {
    fn default() -> Self {
        LinkReporter::new()
    }
}

impl LinkReporter {
    /// A reporter that starts [`LinkState::Connected`].
    pub fn new() -> Self {
        LinkReporter {
            sender: watch::Sender::new(LinkState::Connected),
        }
    }

    /// Reports `state`; receivers are woken only when it differs from the last one.
    pub fn report(&self, state: LinkState) {
        self.sender.send_if_modified(|current| {
            if *current == state {
                false
            } else {
                *current = state;
                true
            }
        });
    }

    /// The state last reported.
    pub fn state(&self) -> LinkState {
        self.sender.borrow().clone()
    }

    /// A receiver of every state reported from now on.
    pub fn subscribe(&self) -> watch::Receiver<LinkState> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn receivers_see_changes_once() {
        let reporter = LinkReporter::new();
        let mut rx = reporter.subscribe();
        assert_eq!(*rx.borrow_and_update(), LinkState::Connected);
        reporter.report(LinkState::Connected);
        assert!(!rx.has_changed().expect("sender alive"));
        let lost = LinkState::Reconnecting {
            attempt: 1,
            error: "connection refused".into(),
        };
        reporter.report(lost.clone());
        rx.changed().await.expect("sender alive");
        assert_eq!(*rx.borrow_and_update(), lost);
        assert_eq!(
            lost.to_string(),
            "reconnecting (attempt 1): connection refused"
        );
    }
}
