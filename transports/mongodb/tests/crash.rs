//! The conformance suite's crash mode on MongoDB: a consumer SIGKILLed with 50 leased messages
//! loses nothing (see `kombu_core::conformance::crash`). 1,000 messages, the child acks 300 and
//! holds 50 (prefetch 50); every message it did not ack arrives exactly once afterwards, the 50
//! it held once their leases pass (`visibility_timeout=2`).
//!
//! The database is a fresh one on the test server (`KOMBU_TEST_MONGODB_URL`), dropped when the
//! test passes. The counts are small because the test server (SecantusDB, a Python stand-in)
//! slows down as a collection grows.

mod support;

use std::time::Duration;

use async_trait::async_trait;
use kombu_core::conformance::crash::{self, CrashHarness, CrashPlan};

struct Mongo;

#[async_trait]
impl CrashHarness for Mongo {
    fn transport(&self) -> &'static str {
        "mongodb"
    }
    fn register(&self) {
        kombu_mongodb::register();
    }
    async fn fresh_url(&self) -> String {
        let url = support::require("mongodb crash")
            .await
            .expect("a MongoDB server at KOMBU_TEST_MONGODB_URL");
        format!(
            "{url}/{}?visibility_timeout=2&polling_interval=0.1",
            support::fresh_database("crash")
        )
    }
    async fn clean(&self, url: &str) {
        support::drop_database(url).await;
    }
}

fn main() {
    let plan = CrashPlan {
        total: 1_000,
        acked_by_child: 300,
        held_by_child: 50,
        prefetch: 50,
        guard: Duration::from_secs(180),
        exactly_once: true,
    };
    crash::main(&Mongo, &plan);
}
