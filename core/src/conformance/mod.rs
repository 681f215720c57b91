//! The conformance suite: what every transport must do, one async function per behaviour.
//!
//! A transport runs the whole suite from its own `tests/conformance.rs` with one macro call,
//! giving a [`Harness`] that hands out URLs of fresh, isolated broker namespaces:
//!
//! ```no_run
//! struct Memory;
//! #[async_trait::async_trait]
//! impl kombu_core::conformance::Harness for Memory {
//!     fn transport(&self) -> &'static str {
//!         "memory"
//!     }
//!     async fn fresh_url(&self) -> Option<String> {
//!         Some(format!("memory://conformance-{}", uuid::Uuid::new_v4()))
//!     }
//! }
//! kombu_core::conformance_tests!(Memory);
//! ```
//!
//! The macro makes one `#[tokio::test]` per scenario, so each passes or fails on its own and
//! test runners run them in parallel. A scenario that needs something the transport's
//! [`Capabilities`](crate::Capabilities) say it lacks checks that the transport says so and
//! returns early; everything else is required.
//!
//! When [`Harness::fresh_url`] returns `None` (no broker configured), scenarios skip with a
//! message, unless the environment variable `KOMBU_TEST_REQUIRE` names the transport (or is
//! `all`), in which case a missing broker fails the test.
//!
//! Every scenario names its entities with a unique id (`scenario-<name>-<uuid>`), so a failing
//! parallel run can be read, and transports without isolation (one shared AMQP vhost) still
//! keep scenarios apart.
//!
//! The scenarios are grouped by topic (`routing`, `settlement`, `limits`, `lease`,
//! `entities`, `messages`, `flow`); each is `pub async fn name(ctx: Ctx) -> Result<()>`, documented with
//! what it proves, re-exported here and listed in [`conformance_tests!`](crate::conformance_tests).
//! Conventions every scenario keeps, so the suite runs unchanged on every transport:
//! - only the public API (`Connection`, `Producer`, `Consumer`, `Delivery`, `Channel`, entities);
//! - every entity is named with [`Ctx::name`], extra connections come from [`Ctx::connect`];
//! - a behaviour the transport's [`Capabilities`](crate::Capabilities) declare missing is
//!   skipped with a note on stderr (and what still must hold without it is checked, e.g. that
//!   messages with priorities are all delivered); everything else is required;
//! - waiting *for* something loops with short waits until [`Ctx::patience`] runs out; showing
//!   that something does *not* happen waits a bounded [`QUIET`] period;
//! - scenarios whose checks wait call [`pause_clock`] first (the shared setup does): on
//!   transports whose time follows tokio's clock (memory) they run in no real time, elsewhere
//!   they use short real durations.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;

use crate::connection::Connection;
use crate::error::Result;

pub mod crash;
mod delay;
mod entities;
pub mod faults;
mod fixtures;
mod flow;
mod lease;
mod limits;
mod macros;
mod messages;
mod poison;
mod routing;
mod settlement;
pub mod support;

pub use delay::*;
pub use entities::*;
pub use fixtures::{QUIET, assert_quiet, next_deliveries, next_delivery, pause_clock};
pub use flow::*;
pub use lease::*;
pub use limits::*;
pub use messages::*;
pub use poison::*;
pub use routing::*;
pub use settlement::*;

/// How the suite gets brokers to test.
#[async_trait]
pub trait Harness: Send + Sync {
    /// The transport's name, as `KOMBU_TEST_REQUIRE` would name it (`memory`, `redis`, ...).
    fn transport(&self) -> &'static str;

    /// URL of a fresh namespace on the broker (a new memory broker, key prefix, database, file
    /// or vhost) that no other test uses; `None` when no broker is configured.
    async fn fresh_url(&self) -> Option<String>;

    /// How long time-based scenarios wait at most for something to happen (a lease to end, a
    /// TTL to pass). Brokers that check expiry periodically need more.
    fn patience(&self) -> Duration {
        Duration::from_secs(10)
    }
}

/// What a scenario gets: the harness and a URL for its own namespace.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// URL of the scenario's namespace; open as many connections to it as needed.
    pub url: String,
    /// A unique id for entity names.
    pub id: String,
    /// From [`Harness::patience`].
    pub patience: Duration,
}

impl Ctx {
    /// Opens a new connection to the scenario's namespace.
    pub async fn connect(&self) -> Result<Connection> {
        Connection::open(&self.url).await
    }

    /// A unique entity name: `<what>-<id>`.
    pub fn name(&self, what: &str) -> String {
        format!("{what}-{}", self.id)
    }
}

/// Runs one scenario against the harness (used by
/// [`conformance_tests!`](crate::conformance_tests)).
pub async fn run<H, F, Fut>(harness: &H, name: &str, scenario: F)
where
    H: Harness,
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let Some(url) = harness.fresh_url().await else {
        let required = std::env::var("KOMBU_TEST_REQUIRE").unwrap_or_default();
        let transport = harness.transport();
        if required
            .split(',')
            .map(str::trim)
            .any(|r| r == "all" || r == transport)
        {
            panic!(
                "conformance/{name}: no {transport} broker configured, and KOMBU_TEST_REQUIRE \
                 requires one"
            );
        }
        eprintln!("conformance/{name}: skipped, no {transport} broker configured");
        return;
    };
    let id = format!("{name}-{}", uuid::Uuid::new_v4().simple());
    let ctx = Ctx {
        url,
        id: id.clone(),
        patience: harness.patience(),
    };
    // A transport that spins under tokio's paused clock never lets `patience` pass; a
    // real-time watchdog turns such a hang into a failure.
    let limit = (harness.patience() * 6).max(std::time::Duration::from_secs(60));
    let (done, watched) = std::sync::mpsc::channel::<()>();
    let watchdog_id = id.clone();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = watched.recv_timeout(limit) {
            eprintln!(
                "conformance/{watchdog_id}: no result after {limit:?} of real time; aborting"
            );
            std::process::abort();
        }
    });
    let outcome = scenario(ctx).await;
    drop(done);
    if let Err(e) = outcome {
        panic!("conformance/{id} failed: {e}");
    }
}
