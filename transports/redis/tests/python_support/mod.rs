//! What the Redis ↔ Python kombu tests share: the server, Python's script, a key space per
//! test, and small consumer helpers.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use kombu_core::{Connection, Consumer};
use serde_json::Value as Json;

pub fn server() -> String {
    std::env::var("KOMBU_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

pub fn script() -> PathBuf {
    // The directory cargo runs the test in, read at run time: a test binary compiled in another
    // checkout sharing the target directory would carry that checkout's path.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/interop/redis_interop.py")
}

/// A test's key space: the prefix both sides put in front of every key.
pub struct Space {
    /// The key prefix.
    pub prefix: String,
}

impl Space {
    pub fn new(name: &str) -> Space {
        Space {
            prefix: format!("kombu-rs-test:{name}:{}:", uuid::Uuid::new_v4().simple()),
        }
    }

    /// kombu-rs's URL for the space, with extra query options (`k=v&...`).
    pub fn url(&self, extra: &str) -> String {
        let prefix: String = self
            .prefix
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let sep = if extra.is_empty() { "" } else { "&" };
        format!("{}?global_keyprefix={prefix}{sep}{extra}", server())
    }

    /// Runs a command of the interop script (blocking) with this prefix.
    pub fn python(&self, python: &Path, command: &str, args: &[&str]) -> Json {
        let out = Command::new(python)
            .arg(script())
            .arg(command)
            .arg(&self.prefix)
            .args(args)
            .env("KOMBU_REDIS_URL", server())
            .output()
            .expect("run the interop script");
        assert!(
            out.status.success(),
            "redis_interop.py {command} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Python's json.dumps: NaN may be in what it prints.
        kombu_core::serializers::from_python_json(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "redis_interop.py {command} {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Deletes every key of the space.
    pub async fn clean(&self) {
        let Ok(client) = redis::Client::open(server()) else {
            return;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<i64> =
                redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
        }
    }
}

pub async fn open(url: &str) -> Connection {
    kombu_redis::register();
    Connection::open(url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

/// A description of the delivery arriving within `wait`, if one does.
pub async fn nothing_within(consumer: &mut Consumer, wait: Duration) -> Option<String> {
    match tokio::time::timeout(wait, consumer.next()).await {
        Err(_) | Ok(None) => None,
        Ok(Some(Ok(d))) => Some(format!(
            "{d:?} body {:?}",
            String::from_utf8_lossy(&d.decompressed_body().unwrap_or_default())
        )),
        Ok(Some(Err(e))) => Some(format!("error {e}")),
    }
}
