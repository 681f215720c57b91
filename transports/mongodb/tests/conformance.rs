//! The conformance suite on the MongoDB transport (the server at `KOMBU_TEST_MONGODB_URL`),
//! each scenario in a database of its own.

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
            "{url}/{}?visibility_timeout=1&polling_interval=0.05",
            support::fresh_database("c")
        ))
    }
}

kombu_core::conformance_tests!(Mongo);
