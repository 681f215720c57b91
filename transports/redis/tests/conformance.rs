//! The conformance suite on the Redis transport (the server on 127.0.0.1:6379), each scenario
//! under a key prefix of its own.

use async_trait::async_trait;
use kombu_core::conformance::Harness;

struct Redis;

#[async_trait]
impl Harness for Redis {
    fn transport(&self) -> &'static str {
        kombu_redis::register();
        "redis"
    }
    async fn fresh_url(&self) -> Option<String> {
        kombu_redis::register();
        let url = std::env::var("KOMBU_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned());
        // Refuse to run against a server that is not there (the suite then skips or fails,
        // per KOMBU_TEST_REQUIRE).
        let client = redis::Client::open(url.as_str()).ok()?;
        client.get_multiplexed_async_connection().await.ok()?;
        // fanout_patterns=false: every subscriber of a fanout exchange gets every message,
        // whatever its routing key, as AMQP (and the suite) expect; kombu's default (true)
        // delivers only to bindings whose key matches the published one.
        Some(format!(
            "{url}?global_keyprefix=conformance-{}:&visibility_timeout=1&polling_interval=0.05&fanout_patterns=false",
            uuid::Uuid::new_v4().simple()
        ))
    }
}

kombu_core::conformance_tests!(Redis);
