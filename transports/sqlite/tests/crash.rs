//! The conformance suite's crash mode on SQLite: a consumer killed with SIGKILL loses nothing
//! (see `kombu_core::conformance::crash`). 10,000 messages, the child acks 3,000 and holds 100
//! (prefetch 100); every message it did not ack arrives exactly once afterwards.
//!
//! The database is a fresh file in a temporary directory, with `visibility_timeout=2`; the
//! directory is removed when the test passes.

use async_trait::async_trait;
use kombu_core::conformance::crash::{self, CrashHarness, CrashPlan};

struct Sqlite;

#[async_trait]
impl CrashHarness for Sqlite {
    fn transport(&self) -> &'static str {
        "sqlite"
    }
    fn register(&self) {
        kombu_sqlite::register();
    }
    async fn fresh_url(&self) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("kombu-sqlite-crash-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the temp directory");
        let path = dir.join("broker.db");
        format!(
            "sqlite://{}?visibility_timeout=2",
            path.to_str().expect("UTF-8 path")
        )
    }
    /// Removes the database's directory.
    async fn clean(&self, url: &str) {
        let path = url.trim_start_matches("sqlite://");
        let path = std::path::Path::new(path.split('?').next().unwrap_or(path));
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn main() {
    crash::main(&Sqlite, &CrashPlan::default());
}
