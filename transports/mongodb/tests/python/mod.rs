//! What the Python-interop tests share: a database of the test's own ([`Db`]), the Python
//! side (`interop/mongo_interop.py`) run against it, and a raw client's view of it.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use kombu_core::{Connection, Consumer};
use kombu_test_support::python;
use serde_json::Value as Json;

use crate::support;

pub fn script() -> PathBuf {
    // The directory cargo runs the test in, read at run time: a test binary compiled in another
    // checkout sharing the target directory would carry that checkout's path.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/interop/mongo_interop.py")
}

/// A test's database on the server, and the Python interpreter.
pub struct Db {
    pub server: String,
    pub name: String,
    pub python: PathBuf,
}

impl Db {
    /// A fresh database for test `what`; `None` (skipped) without a server or a Python.
    pub async fn new(what: &str) -> Option<Db> {
        let server = support::require(what).await?;
        let python = python()?;
        Some(Db {
            server,
            name: support::fresh_database(what),
            python,
        })
    }

    /// kombu's URL for the database (the database in the path).
    pub fn python_url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }

    /// kombu-rs's URL for the database, with extra query options (`k=v&...`).
    pub fn rust_url(&self, extra: &str) -> String {
        let sep = if extra.is_empty() { "" } else { "&" };
        format!(
            "{}/{}?polling_interval=0.1{sep}{extra}",
            self.server, self.name
        )
    }

    pub async fn open(&self, extra: &str) -> Connection {
        kombu_mongodb::register();
        let url = self.rust_url(extra);
        Connection::open(&url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"))
    }

    /// The Python command of the interop script, with its arguments after the URL.
    pub fn command(&self, command: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.arg(script())
            .arg(command)
            .arg(self.python_url())
            .args(args);
        cmd
    }

    /// Runs a command of the interop script (blocking) on this database.
    pub fn python(&self, command: &str, args: &[&str]) -> Json {
        let out = self
            .command(command, args)
            .output()
            .expect("run the interop script");
        assert!(
            out.status.success(),
            "mongo_interop.py {command} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "mongo_interop.py {command} {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// The bodies Python takes from `queue` now (`Queue.get` until empty, each acked).
    pub fn python_drain(&self, queue: &str) -> Vec<Json> {
        let out = self.python("drain", &[queue]);
        out["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["payload"].clone())
            .collect()
    }

    /// The size of `queue` as Python kombu reports it.
    pub fn python_size(&self, queue: &str) -> u64 {
        self.python("size", &[queue])["size"]
            .as_u64()
            .expect("a size")
    }

    /// A raw client's view of the database.
    pub async fn raw(&self) -> mongodb::Database {
        let client = mongodb::Client::with_uri_str(&self.server)
            .await
            .expect("a raw client");
        client.database(&self.name)
    }

    /// Drops the database (at the end of a test that passed).
    pub async fn drop_database(&self) {
        let _ = self.raw().await.drop().await;
    }
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

// --- serializers and compression ---------------------------------------------------------
