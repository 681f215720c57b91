//! The conformance suite on the MongoDB transport (the server at `KOMBU_TEST_MONGODB_URL`),
//! each scenario in a database of its own. The visibility timeout is 3 s, not Redis's 1 s:
//! the test server is a Python stand-in that slows down with 50 scenarios at once, and a
//! scenario holding deliveries (prefetch, requeue) must not see its leases pass meanwhile.

mod support;

use async_trait::async_trait;
use kombu_core::conformance::Harness;

struct Mongo;

#[async_trait]
impl Harness for Mongo {
    fn transport(&self) -> &'static str {
        kombu_mongodb::register();
        "mongodb"
    }
    async fn fresh_url(&self) -> Option<String> {
        let url = support::server().await?;
        Some(format!(
            "{url}/{}?visibility_timeout=3&polling_interval=0.05",
            support::fresh_database("c")
        ))
    }
}

kombu_core::conformance_tests!(Mongo);
