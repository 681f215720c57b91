//! The conformance suite on the SQLite transport, each scenario on a fresh database file.

use async_trait::async_trait;
use kombu_core::conformance::Harness;

struct Sqlite;

#[async_trait]
impl Harness for Sqlite {
    fn transport(&self) -> &'static str {
        kombu_sqlite::register();
        "sqlite"
    }
    async fn fresh_url(&self) -> Option<String> {
        kombu_sqlite::register();
        let path = std::env::temp_dir().join(format!(
            "kombu-sqlite-conformance-{}.db",
            uuid::Uuid::new_v4().simple()
        ));
        Some(format!(
            "sqlite://{}?visibility_timeout=1&polling_interval=0.05",
            path.display()
        ))
    }
}

kombu_core::conformance_tests!(Sqlite);
