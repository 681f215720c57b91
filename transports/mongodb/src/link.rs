//! The connection's [`LinkState`], from the driver's view of the deployment (its SDAM
//! events): `Reconnecting` once no server can take writes (the primary or the standalone
//! server went away), with each failed heartbeat counted as an attempt, and `Connected` once
//! one can again. The driver reconnects by itself; this only reports it, and counts the
//! losses as the backend's epoch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use kombu_core::{LinkReporter, LinkState, LinkWatch};
use mongodb::event::EventHandler;
use mongodb::event::sdam::SdamEvent;

/// What the driver's events tell of the link.
#[derive(Debug, Default)]
pub(crate) struct Link {
    reporter: LinkReporter,
    /// Failed attempts since the loss.
    attempt: AtomicU32,
    /// Losses found since the backend was made.
    pub(crate) epoch: AtomicU64,
}

impl Link {
    pub(crate) fn watch(&self) -> LinkWatch {
        self.reporter.subscribe()
    }

    /// A loss (or one more failed attempt) because of `error`.
    pub(crate) fn lost(&self, error: String) {
        if self.reporter.state() == LinkState::Connected {
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
        let attempt = self.attempt.fetch_add(1, Ordering::SeqCst) + 1;
        self.reporter
            .report(LinkState::Reconnecting { attempt, error });
    }

    fn connected(&self) {
        self.attempt.store(0, Ordering::SeqCst);
        self.reporter.report(LinkState::Connected);
    }

    /// The driver's handler of SDAM events, reporting to `link`.
    pub(crate) fn handler(link: &Arc<Link>) -> EventHandler<SdamEvent> {
        let link = Arc::clone(link);
        EventHandler::callback(move |event| match event {
            SdamEvent::TopologyDescriptionChanged(change) => {
                let before = change.previous_description.has_writable_server();
                let now = change.new_description.has_writable_server();
                if now && !before {
                    link.connected();
                } else if before && !now {
                    let error = change
                        .new_description
                        .servers()
                        .values()
                        .find_map(|s| s.error().map(ToString::to_string))
                        .unwrap_or_else(|| "no server can take writes".to_owned());
                    link.lost(error);
                }
            }
            SdamEvent::ServerHeartbeatFailed(failed)
                if link.reporter.state() != LinkState::Connected =>
            {
                link.lost(failed.failure.to_string());
            }
            _ => {}
        })
    }
}
