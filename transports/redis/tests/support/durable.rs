//! A `redis-server` of one test's own, on a port given to it, persisting every write (AOF,
//! `appendfsync always`) in a directory of its own, so that the test can SIGKILL it and start
//! it again on the same port with its data.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server; killed (SIGKILL) and its directory removed when dropped.
pub struct Durable {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
}

impl Durable {
    /// Starts a server on `port` with a fresh data directory; panics (the test fails) when it
    /// does not answer within 10 s. A test asks `kombu_test_support::faults::can_run` first,
    /// so a machine without `redis-server` skips it (or fails it clearly when Redis is
    /// required).
    pub fn start(port: u16) -> Durable {
        let dir = std::env::temp_dir().join(format!("kombu-rs-heal-{port}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a data directory");
        let mut server = Durable {
            child: None,
            port,
            dir,
        };
        server.restart();
        server
    }

    /// The server's URL with `query` (`key=value&...`).
    pub fn url(&self, query: &str) -> String {
        format!("redis://127.0.0.1:{}/0?{query}", self.port)
    }

    /// Kills the server with SIGKILL (no shutdown, no final write) and waits for it to end.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again with no data (a restart without persistence).
    pub fn restart_empty(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).expect("a data directory");
        self.restart();
    }

    /// Starts the server (again) on its port with its data; returns once it answers `PING`.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let client =
            redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).expect("a client");
        loop {
            let answered = client
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if answered.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} does not answer: {answered:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Durable {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
