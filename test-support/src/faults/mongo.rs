//! [`MongoServer`]: a SecantusDB server (MongoDB's wire protocol, from the Python venv) of the
//! test's own.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Netns, READY_GUARD, assert_port_free, remove_dir, skip_unless_required, temp_dir};

/// A SecantusDB server of the test's own: `<venv>/bin/secantusd-py` (PyPI package
/// `secantusdb`, which `scripts/python-env` installs into the venv [`python()`](crate::python)
/// finds), a Python server speaking MongoDB's wire protocol over WiredTiger. It runs on its own
/// port (fault tests use 27100-27109) with its storage in a temporary directory, on 127.0.0.1 or
/// inside a [`Netns`]; `start_again` reopens the same storage on the same port.
///
/// By default the server advertises itself as a single-node replica set (so change streams
/// work); `--standalone` (through [`MongoServer::start_with_args`]) makes it look standalone.
///
/// What a SIGKILL keeps (`tests/mongo_server.rs`): every write acknowledged with `j: true`;
/// writes acknowledged with `w: 1` alone (the drivers' default) only with `--sync-on-commit`.
/// Without it the last few dozen such writes before the kill are lost (not yet out of the
/// server's log buffer, presumably), so a fault test that counts acknowledged writes runs the
/// server with `--sync-on-commit` or writes with `j: true`.
///
/// Killed (SIGKILL) and its directory removed on drop; when the test is failing, the server's
/// log is printed first.
#[derive(Debug)]
pub struct MongoServer {
    ip: String,
    port: u16,
    netns: Option<String>,
    python: PathBuf,
    server: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    child: Option<Child>,
}

impl MongoServer {
    /// Whether this machine can run a test `test` of SecantusDB: the venv's Python
    /// ([`python()`](crate::python)) with `bin/secantusd-py` beside it. When it cannot, the
    /// test is skipped with a message, or fails when `KOMBU_TEST_REQUIRE` is `all` or names
    /// `mongodb` (as [`can_run`](super::can_run) does).
    pub fn can_run(test: &str) -> bool {
        match crate::python() {
            Some(python) => {
                let server = secantusd(&python);
                server.is_file()
                    || skip_unless_required(
                        test,
                        "mongodb",
                        &[format!(
                            "`{}` (the secantusdb package: run scripts/python-env)",
                            server.display()
                        )],
                    )
            }
            None => false,
        }
    }

    /// Starts a server on 127.0.0.1:`port` and waits until it answers a `ping`.
    pub fn start(port: u16) -> Self {
        Self::start_with_args(port, &[])
    }

    /// Starts a server on 127.0.0.1:`port` with extra command-line flags (`--standalone`,
    /// `--sync-on-commit`, ...), kept for [`start_again`](Self::start_again), and waits until it
    /// answers a `ping`.
    pub fn start_with_args(port: u16, args: &[&str]) -> Self {
        Self::launch("127.0.0.1", port, None, args)
    }

    /// Starts a server inside `netns`, listening on its address, with extra flags `args`, and
    /// waits until it answers a `ping` (from the host, through the veth pair).
    pub fn start_in(netns: &Netns, port: u16, args: &[&str]) -> Self {
        Self::launch(netns.ns_ip(), port, Some(netns.name().to_owned()), args)
    }

    fn launch(ip: &str, port: u16, netns: Option<String>, args: &[&str]) -> Self {
        if netns.is_none() {
            assert_port_free(ip, port);
        }
        let python = crate::python().unwrap_or_else(|| {
            panic!("no Python venv with secantusdb: run scripts/python-env and set KOMBU_PYTHON")
        });
        let server = secantusd(&python);
        assert!(
            server.is_file(),
            "no SecantusDB server at {} (the secantusdb package: run scripts/python-env)",
            server.display()
        );
        let mut mongo = MongoServer {
            ip: ip.to_owned(),
            port,
            netns,
            python,
            server,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            dir: temp_dir("kombu-fault-mongo"),
            child: None,
        };
        mongo.spawn();
        mongo.wait_ready();
        mongo
    }

    fn spawn(&mut self) {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.server);
                c
            }
            None => Command::new(&self.server),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log_path().display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log_path().display()));
        // `--config` names a file of its own (empty): no secantusd.toml found in the working
        // directory or the home directory applies.
        let config = self.dir.join("secantusd.toml");
        std::fs::write(&config, "").unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
        cmd.args(["--host", &self.ip, "--port", &self.port.to_string()])
            .arg("--storage-path")
            .arg(self.storage_path())
            .arg("--config")
            .arg(&config)
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start secantusd-py ({cmd:?}): {e}"));
        self.child = Some(child);
    }

    /// `mongodb://IP:PORT`.
    pub fn url(&self) -> String {
        format!("mongodb://{}:{}", self.ip, self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's WiredTiger home (inside the temporary directory; kept across
    /// [`sigkill`](Self::sigkill) and [`start_again`](Self::start_again)).
    pub fn storage_path(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The venv's Python interpreter (it has `pymongo`).
    pub fn python(&self) -> &Path {
        &self.python
    }

    /// The server process's id, while it runs (a script may kill it at an exact point).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs the Python `script` with the venv's interpreter (`import pymongo` works), with the
    /// server's URL as `sys.argv[1]` and `args` after it, and returns what it printed. Panics,
    /// with its output, when it fails.
    pub fn run_python(&self, script: &str, args: &[&str]) -> String {
        let out = Command::new(&self.python)
            .arg("-c")
            .arg(script)
            .arg(self.url())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.python.display()));
        assert!(
            out.status.success(),
            "the Python script failed ({}): {}{}\n--- script ---\n{script}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills the server with SIGKILL and reaps it; its storage stays.
    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The script's shebang execs Python and `ip netns exec` execs that, so the child is
            // the server itself (it starts no processes of its own, only threads).
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, storage and flags, and waits until it answers
    /// a `ping`. Returns the instant it answered.
    pub fn start_again(&mut self) -> Instant {
        assert!(self.child.is_none(), "secantusd-py is still running");
        self.spawn();
        self.wait_ready()
    }

    /// Waits until the server answers a `ping` command (an OP_MSG on a TCP connection) with
    /// `ok: 1`; returns that instant. Panics after [`READY_GUARD`], or when the server exits,
    /// with its log.
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
                    "secantusd-py on port {} exited ({status}): {}",
                    self.port,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "secantusd-py on port {} did not answer within {READY_GUARD:?}: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the server answers `{ping: 1}` on `admin` with `ok: 1` within a second or two.
    pub fn ping(&self) -> bool {
        let Ok(addr) = format!("{}:{}", self.ip, self.port).parse::<SocketAddr>() else {
            return false;
        };
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        if stream.write_all(&ping_message()).is_err() {
            return false;
        }
        let mut header = [0u8; 16];
        if stream.read_exact(&mut header).is_err() {
            return false;
        }
        let len = i32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let op_code = i32::from_le_bytes([header[12], header[13], header[14], header[15]]);
        let Some(body_len) = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_sub(16))
            .filter(|l| *l <= 1 << 20)
        else {
            return false;
        };
        let mut body = vec![0u8; body_len];
        if op_code != OP_MSG || stream.read_exact(&mut body).is_err() {
            return false;
        }
        // `ok` as the double 1.0 (a reply is a BSON document; the server puts `ok` first).
        let ok: &[u8] = b"\x01ok\x00\x00\x00\x00\x00\x00\x00\xf0\x3f";
        body.windows(ok.len()).any(|w| w == ok)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("secantusd.log")
    }

    /// What the server has logged so far (all its starts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.sigkill();
        if std::thread::panicking() {
            eprintln!(
                "--- secantusd-py log (port {}) ---\n{}",
                self.port,
                self.log()
            );
        }
        remove_dir(&self.dir);
    }
}

/// `<venv>/bin/secantusd-py`, beside the venv's `python`.
fn secantusd(python: &Path) -> PathBuf {
    python
        .parent()
        .map(|bin| bin.join("secantusd-py"))
        .unwrap_or_else(|| PathBuf::from("secantusd-py"))
}

const OP_MSG: i32 = 2013;

/// An OP_MSG of `{ping: 1, $db: "admin"}` (one body section), request id 1.
fn ping_message() -> Vec<u8> {
    let mut doc = Vec::new();
    doc.push(0x10); // int32
    doc.extend_from_slice(b"ping\0");
    doc.extend_from_slice(&1i32.to_le_bytes());
    doc.push(0x02); // string
    doc.extend_from_slice(b"$db\0");
    doc.extend_from_slice(&6i32.to_le_bytes());
    doc.extend_from_slice(b"admin\0");
    doc.push(0x00);
    let doc_len = i32::try_from(doc.len() + 4).unwrap_or(i32::MAX);
    let mut body = Vec::new();
    body.extend_from_slice(&0u32.to_le_bytes()); // flag bits
    body.push(0); // section kind 0: the body
    body.extend_from_slice(&doc_len.to_le_bytes());
    body.extend_from_slice(&doc);
    let len = i32::try_from(body.len() + 16).unwrap_or(i32::MAX);
    let mut msg = Vec::new();
    msg.extend_from_slice(&len.to_le_bytes());
    msg.extend_from_slice(&1i32.to_le_bytes()); // request id
    msg.extend_from_slice(&0i32.to_le_bytes()); // response to
    msg.extend_from_slice(&OP_MSG.to_le_bytes());
    msg.extend_from_slice(&body);
    msg
}
