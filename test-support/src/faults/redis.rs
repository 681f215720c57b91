//! [`RedisServer`]: a `redis-server` of the test's own.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Netns, READY_GUARD, assert_port_free, remove_dir, temp_dir};

/// A `redis-server` of the test's own on its own port, with an append-only file written with
/// `appendfsync always` in a temporary directory (so what it acknowledged survives a
/// SIGKILL), on 127.0.0.1 or inside a [`Netns`].
#[derive(Debug)]
pub struct RedisServer {
    ip: String,
    port: u16,
    netns: Option<String>,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on 127.0.0.1:`port` and waits until it answers.
    pub fn start(port: u16) -> Self {
        Self::launch("127.0.0.1", port, None)
    }

    /// Starts a server inside `netns`, listening on its address, and waits until it answers.
    pub fn start_in(netns: &Netns, port: u16) -> Self {
        Self::launch(netns.ns_ip(), port, Some(netns.name().to_owned()))
    }

    fn launch(ip: &str, port: u16, netns: Option<String>) -> Self {
        if netns.is_none() {
            assert_port_free(ip, port);
        }
        let mut server = RedisServer {
            ip: ip.to_owned(),
            port,
            netns,
            dir: temp_dir("kombu-fault-redis"),
            child: None,
        };
        server.spawn();
        server.wait_ready();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "redis-server"]);
                c
            }
            None => Command::new("redis-server"),
        };
        cmd.args(["--bind", &self.ip, "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
                "--logfile",
                "redis.log",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start redis-server ({cmd:?}): {e}"));
        self.child = Some(child);
    }

    /// `redis://IP:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://{}:{}/0", self.ip, self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server with SIGKILL and reaps it; its append-only file stays.
    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `ip netns exec` execs the server, so the child is the server itself.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (it loads its append-only file)
    /// and waits until it answers. Returns the instant it answered.
    pub fn start_again(&mut self) -> Instant {
        assert!(self.child.is_none(), "redis-server is still running");
        self.spawn();
        self.wait_ready()
    }

    /// Waits until the server answers `PING` with `PONG` (not `-LOADING` while it reads its
    /// file); returns that instant. Panics after [`READY_GUARD`], with the server's log.
    pub fn wait_ready(&mut self) -> Instant {
        let deadline = Instant::now() + READY_GUARD;
        loop {
            if self.ping() {
                return Instant::now();
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "redis-server on port {} exited ({status}): {}",
                    self.port,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer within {READY_GUARD:?}: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ping(&self) -> bool {
        let Ok(addr) = format!("{}:{}", self.ip, self.port).parse::<SocketAddr>() else {
            return false;
        };
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut reply = [0u8; 64];
        match stream.read(&mut reply) {
            Ok(n) => reply[..n].starts_with(b"+PONG"),
            Err(_) => false,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.sigkill();
        remove_dir(&self.dir);
    }
}
