//! The conformance suite on the memory transport.

use async_trait::async_trait;
use kombu_core::conformance::Harness;

struct Memory;

#[async_trait]
impl Harness for Memory {
    fn transport(&self) -> &'static str {
        "memory"
    }
    async fn fresh_url(&self) -> Option<String> {
        kombu_core::transport::memory::register();
        Some(format!(
            "memory://conformance-{}",
            uuid::Uuid::new_v4().simple()
        ))
    }
}

kombu_core::conformance_tests!(Memory);
