//! A dedicated `redis-server` for one test, on a free loopback port, so that it can be
//! configured (a password, ACL users) and its command counters read without other tests'
//! traffic.

#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child, killed when dropped.
pub struct Server {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `redis-server` with `args` on a free port (no persistence); `None` (skip) when there
/// is no `redis-server` and `KOMBU_TEST_REQUIRE` is not set. A port another process took
/// between the choice and the bind (the server then exits, and whoever listens there is not
/// it) is retried with another.
pub fn start(args: &[&str]) -> Option<Server> {
    let password = args
        .iter()
        .position(|a| *a == "--requirepass")
        .and_then(|i| args.get(i + 1));
    for _attempt in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let spawned = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let why = format!("cannot start redis-server: {e}");
                if std::env::var_os("KOMBU_TEST_REQUIRE").is_some() {
                    panic!("{why}; KOMBU_TEST_REQUIRE is set, so this is a failure");
                }
                eprintln!("skipped: {why}");
                return None;
            }
        };
        let mut server = Server { child, port };
        let url = match password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{port}/0"),
            None => format!("redis://127.0.0.1:{port}/0"),
        };
        let start = Instant::now();
        loop {
            if server.child.try_wait().ok().flatten().is_some() {
                break; // exited: most likely the port was taken
            }
            let info: redis::RedisResult<redis::InfoDict> = redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("INFO").arg("server").query(&mut c));
            if let Ok(info) = info {
                if info.get::<u32>("process_id") == Some(server.child.id()) {
                    return Some(server);
                }
                break; // someone else's server on this port
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server on port {port} did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("could not start a redis-server on a free port");
}
