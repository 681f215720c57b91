//! The conformance suite's crash mode on Redis: a consumer killed with SIGKILL loses nothing
//! (see `kombu_core::conformance::crash`). 20,000 messages, the child acks 5,000 and holds 500
//! (prefetch 500); the ones in flight at the kill may arrive twice (kombu-redis restores
//! at least once).
//!
//! The server is `$KOMBU_REDIS_URL` (default `redis://127.0.0.1:6379/0`); the test runs under a
//! fresh `global_keyprefix`, with `visibility_timeout=2`, and deletes its keys when it passes.

use std::time::Duration;

use async_trait::async_trait;
use kombu_core::conformance::crash::{self, CrashHarness, CrashPlan};

struct Redis;

fn server() -> String {
    std::env::var("KOMBU_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

#[async_trait]
impl CrashHarness for Redis {
    fn transport(&self) -> &'static str {
        "redis"
    }
    fn register(&self) {
        kombu_redis::register();
    }
    async fn fresh_url(&self) -> String {
        let prefix = format!("kombu-rs-crash-{}-", uuid::Uuid::new_v4().simple());
        format!(
            "{}?global_keyprefix={prefix}&visibility_timeout=2",
            server()
        )
    }
    /// Deletes every key under the URL's prefix.
    async fn clean(&self, url: &str) {
        let Some((_, prefix)) = url.split_once("global_keyprefix=") else {
            return;
        };
        let prefix = prefix.split('&').next().unwrap_or(prefix);
        let Ok(client) = redis::Client::open(server()) else {
            return;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<i64> =
                redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
        }
    }
}

fn main() {
    crash::main(
        &Redis,
        &CrashPlan {
            total: 20_000,
            acked_by_child: 5_000,
            held_by_child: 500,
            prefetch: 500,
            guard: Duration::from_secs(60),
            exactly_once: false,
        },
    );
}
