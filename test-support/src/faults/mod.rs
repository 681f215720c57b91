//! Brokers of a fault test's own, which it may kill, restart and cut off: a Redis server
//! ([`RedisServer`]), a second RabbitMQ node ([`RabbitNode`]), a SecantusDB server speaking
//! MongoDB's wire protocol from the Python venv ([`MongoServer`], ports 27100-27109) and a
//! network namespace joined to the host by a veth pair ([`Netns`]), in which the first two can
//! run. The shared brokers of the other tests (Redis on 6379, RabbitMQ on 5672, the SecantusDB
//! `scripts/test` starts on 27018) are never touched.
//!
//! Each guard cleans up when dropped (servers killed, temporary directories removed, the
//! namespace and its links deleted), pass or fail. These are test helpers: they panic, with
//! what failed, when the machine cannot do what they need (a port taken, no `redis-server`,
//! not root for `ip netns`). The namespace's cut uses `nft` (package `nftables`), which
//! `scripts/test` installs.
//!
//! The fault mode that moves messages through them is kombu-core's
//! [`conformance::faults`](kombu_core::conformance::faults), re-exported here with its
//! [`FaultReport`].

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub use kombu_core::conformance::faults::{FaultPlan, FaultReport, run, run_then};

mod mongo;
mod netns;
mod rabbit;
mod redis;

pub use mongo::MongoServer;
pub use netns::Netns;
pub use rabbit::RabbitNode;
pub use redis::RedisServer;

/// How many times a fault test repeats its fault (a fresh run each time):
/// `KOMBU_SOAK_ROUNDS`, default 1 (`scripts/soak faults` sets more).
pub fn rounds() -> u32 {
    std::env::var("KOMBU_SOAK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

/// Whether this machine can run a fault test of `transport` that needs `programs` (looked up
/// on `PATH`, and RabbitMQ's scripts in their package directory) and, when `root`, root (for
/// `ip netns`). When it cannot, the test is skipped with a message on stderr, unless
/// `KOMBU_TEST_REQUIRE` names the transport or is `all`: then it fails, saying what is missing.
pub fn can_run(test: &str, transport: &str, root: bool, programs: &[&str]) -> bool {
    let mut missing: Vec<String> = programs
        .iter()
        .filter(|p| {
            let in_path = std::env::var_os("PATH")
                .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(p).is_file()));
            !in_path && !Path::new(rabbit::RABBIT_BIN).join(p).is_file()
        })
        .map(|p| format!("`{p}`"))
        .collect();
    if root {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        if uid != "0" {
            missing.push("root (for ip netns)".to_owned());
        }
    }
    if missing.is_empty() {
        return true;
    }
    skip_unless_required(test, transport, &missing)
}

/// What [`can_run`] does when something is `missing` (not empty): fails when
/// `KOMBU_TEST_REQUIRE` names `transport` or is `all`, else says the test is skipped and returns
/// false.
pub(crate) fn skip_unless_required(test: &str, transport: &str, missing: &[String]) -> bool {
    let required = std::env::var("KOMBU_TEST_REQUIRE")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .any(|r| r == "all" || r == transport);
    assert!(
        !required,
        "{test}: needs {} (scripts/test installs them), and KOMBU_TEST_REQUIRE requires {transport}",
        missing.join(", ")
    );
    eprintln!("{test}: skipped, needs {}", missing.join(", "));
    false
}

/// How long a server may take to start (or to come back) before a test fails.
pub const READY_GUARD: Duration = Duration::from_secs(90);

pub(crate) static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `<prefix>-<pid>-<n>`.
pub(crate) fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::SeqCst)
    )
}

/// A fresh temporary directory, removed by [`remove_dir`].
pub(crate) fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("create the directory {}: {e}", dir.display()));
    dir
}

pub(crate) fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs a command to its end; panics, with its output, when it cannot start or fails.
pub(crate) fn check(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command, ignoring how it ends (cleanup).
pub(crate) fn quietly(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Fails clearly when `port` on `ip` is taken: a fault test owns its ports, and a server left
/// over from another run (or another test) there would be killed or restarted by mistake.
pub fn assert_port_free(ip: &str, port: u16) {
    if let Err(e) = TcpListener::bind((ip, port)) {
        panic!(
            "port {ip}:{port}, which this fault test owns, is taken ({e}): a server left over \
             from an earlier run? (`ss -ltnp 'sport = :{port}'` shows whose)"
        );
    }
}

/// Whether a TCP connection to `ip:port` opens within a second.
pub fn reachable(ip: &str, port: u16) -> bool {
    format!("{ip}:{port}")
        .parse::<SocketAddr>()
        .ok()
        .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).ok())
        .is_some()
}

/// Sends SIGKILL to `pid` (no destructor, no clean shutdown).
pub(crate) fn sigkill(pid: u32) {
    quietly(Command::new("kill").args(["-9", &pid.to_string()]));
}
