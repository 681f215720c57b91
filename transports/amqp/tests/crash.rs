//! The conformance suite's crash mode on AMQP: a consumer killed with SIGKILL loses nothing
//! (see `kombu_core::conformance::crash`). 5,000 messages, the child acks 1,500 and holds 100
//! (prefetch 100, so the broker has no other delivery out to it); RabbitMQ returns what the
//! dead connection held at once, marked redelivered, and never what it acked.
//!
//! The broker is the shared test node (`$KOMBU_TEST_AMQP_URL`, default 127.0.0.1:5672), on a
//! virtual host of this test's own, `kombu-rs-crash` (made fresh by `rabbitmqctl`, deleted
//! when the test passes); without `rabbitmqctl`, the URL's own vhost.

mod common;

use std::time::Duration;

use async_trait::async_trait;
use kombu_core::conformance::crash::{self, CrashHarness, CrashPlan};

const VHOST: &str = "kombu-rs-crash";

struct Amqp;

#[async_trait]
impl CrashHarness for Amqp {
    fn transport(&self) -> &'static str {
        "amqp"
    }
    fn register(&self) {
        kombu_amqp::register();
    }
    async fn fresh_url(&self) -> String {
        // The crash mode has no skip: without a broker the test fails.
        assert!(common::broker_up("crash"), "crash: no AMQP broker");
        let vhost = common::fresh_vhost(VHOST);
        common::url_on(vhost.as_deref())
    }
    /// Deletes the test's virtual host (its queue with it).
    async fn clean(&self, _url: &str) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_vhost", VHOST])
            .output();
    }
}

fn main() {
    crash::main(
        &Amqp,
        &CrashPlan {
            total: 5_000,
            acked_by_child: 1_500,
            held_by_child: 100,
            prefetch: 100,
            guard: Duration::from_secs(60),
            exactly_once: true,
        },
    );
}
