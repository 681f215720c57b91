//! The test server: `KOMBU_TEST_MONGODB_URL` (scripts/test starts a fresh SecantusDB and sets
//! it), a database of its own per test.

#![allow(dead_code)]

use std::time::Duration;

/// The server's URL (no database), when one answers.
pub async fn server() -> Option<String> {
    kombu_mongodb::register();
    let url = std::env::var("KOMBU_TEST_MONGODB_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27018".to_owned());
    let url = url.trim_end_matches('/').to_owned();
    let mut options = mongodb::options::ClientOptions::parse(&url).await.ok()?;
    options.server_selection_timeout = Some(Duration::from_secs(3));
    let client = mongodb::Client::with_options(options).ok()?;
    client
        .database("admin")
        .run_command(mongodb::bson::doc! { "ping": 1 })
        .await
        .ok()?;
    Some(url)
}

/// A database name no other test uses.
pub fn fresh_database(what: &str) -> String {
    format!("{what}_{}", uuid::Uuid::new_v4().simple())
}

/// A test that needs the server: fails under `KOMBU_TEST_REQUIRE` (all, or mongodb) when
/// none answers, else skips.
pub async fn require(test: &str) -> Option<String> {
    if let Some(url) = server().await {
        return Some(url);
    }
    let required = std::env::var("KOMBU_TEST_REQUIRE")
        .unwrap_or_default()
        .split(',')
        .any(|r| r.trim() == "all" || r.trim() == "mongodb");
    assert!(
        !required,
        "{test}: no MongoDB server answers at KOMBU_TEST_MONGODB_URL, and KOMBU_TEST_REQUIRE requires one"
    );
    eprintln!("{test}: skipped, no MongoDB server");
    None
}

/// Drops the database a test URL names (the path of `url`), ignoring failures.
pub async fn drop_database(url: &str) {
    let Some(server) = server().await else {
        return;
    };
    let path = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, path)| path.split('?').next().unwrap_or_default().to_owned())
        .unwrap_or_default();
    if path.is_empty() {
        return;
    }
    if let Ok(client) = mongodb::Client::with_uri_str(&server).await {
        let _ = client.database(&path).drop().await;
    }
}
