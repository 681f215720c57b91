//! Brokers of a fault test's own, which it may kill, restart and cut off: a Redis server
//! ([`RedisServer`]), a second RabbitMQ node ([`RabbitNode`]) and a network namespace joined
//! to the host by a veth pair ([`Netns`]), in which either can run. The shared brokers of the
//! other tests (Redis on 6379, RabbitMQ on 5672) are never touched.
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

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use kombu_core::conformance::faults::{FaultPlan, FaultReport, run, run_then};

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
            !in_path && !Path::new(RABBIT_BIN).join(p).is_file()
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

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `<prefix>-<pid>-<n>`.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::SeqCst)
    )
}

/// A fresh temporary directory, removed by [`remove_dir`].
fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("create the directory {}: {e}", dir.display()));
    dir
}

fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs a command to its end; panics, with its output, when it cannot start or fails.
fn check(cmd: &mut Command) -> Output {
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
fn quietly(cmd: &mut Command) -> bool {
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
fn sigkill(pid: u32) {
    quietly(Command::new("kill").args(["-9", &pid.to_string()]));
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// RabbitMQ
// ---------------------------------------------------------------------------------------------

/// Where the RabbitMQ scripts are: the package's own, not the `/usr/sbin` wrappers (those
/// switch to the `rabbitmq` user, whose home and environment are not the test's).
const RABBIT_BIN: &str = "/usr/lib/rabbitmq/bin";

fn rabbit_tool(name: &str) -> PathBuf {
    let own = Path::new(RABBIT_BIN).join(name);
    if own.exists() {
        own
    } else {
        PathBuf::from(name)
    }
}

/// A RabbitMQ node of the test's own (never the shared one on 5672): its own node name
/// (`kombu-fault-<pid>-<n>@localhost`), AMQP port, distribution port, data directory, Erlang
/// cookie and configuration (no plugins, no management, `guest` allowed from any address),
/// on 127.0.0.1 or inside a [`Netns`]. It can be stopped cleanly, killed (SIGKILL to its Erlang
/// VM) and started again with its data (durable queues and persistent messages survive).
/// Stopped when dropped.
#[derive(Debug)]
pub struct RabbitNode {
    node: String,
    ip: String,
    port: u16,
    netns: Option<String>,
    cookie: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl RabbitNode {
    /// Starts a node listening on 127.0.0.1:`port` (distribution on `dist_port`) and waits
    /// until it accepts connections.
    pub fn start(port: u16, dist_port: u16) -> Self {
        Self::launch("127.0.0.1", port, dist_port, None)
    }

    /// Starts a node inside `netns`, listening on its address (its own epmd there too).
    pub fn start_in(netns: &Netns, port: u16, dist_port: u16) -> Self {
        Self::launch(
            netns.ns_ip(),
            port,
            dist_port,
            Some(netns.name().to_owned()),
        )
    }

    fn launch(ip: &str, port: u16, dist_port: u16, netns: Option<String>) -> Self {
        if netns.is_none() {
            assert_port_free(ip, port);
            assert_port_free("0.0.0.0", dist_port);
        }
        let node = format!("{}@localhost", unique("kombu-fault"));
        let dir = temp_dir("kombu-fault-rabbit");
        let write = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text)
                .unwrap_or_else(|e| panic!("write {name} in {}: {e}", dir.display()));
        };
        write("enabled_plugins", "[].\n");
        write("rabbitmq-env.conf", "");
        write(
            "rabbitmq.conf",
            &format!("listeners.tcp.1 = {ip}:{port}\nloopback_users.guest = false\n"),
        );
        std::fs::create_dir_all(dir.join("home"))
            .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let mut rabbit = RabbitNode {
            node,
            ip: ip.to_owned(),
            port,
            netns,
            cookie: format!("kombufault{}", uuid_like()),
            dir,
            child: None,
        };
        rabbit.spawn(dist_port);
        rabbit.wait_ready();
        rabbit
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(rabbit_tool(tool));
                c
            }
            None => Command::new(rabbit_tool(tool)),
        };
        let d = &self.dir;
        // The node and its tools read nothing of the machine's configuration (the shared
        // node's /etc/rabbitmq sets its name and listeners).
        for var in [
            "RABBITMQ_NODENAME",
            "ERL_FLAGS",
            "ERL_EPMD_ADDRESS",
            "NODENAME",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("HOME", d.join("home"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                format!("-setcookie {}", self.cookie),
            );
        cmd
    }

    fn spawn(&mut self, dist_port: u16) {
        let _ = std::fs::remove_file(self.dir.join("pid"));
        let log = std::fs::File::create(self.dir.join("server.out"))
            .unwrap_or_else(|e| panic!("create server.out: {e}"));
        let err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("server.out: {e}"));
        let mut cmd = self.command("rabbitmq-server");
        cmd.env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start rabbitmq-server ({cmd:?}): {e}"));
        self.child = Some(child);
    }

    /// `rabbitmqctl -n NODE --erlang-cookie COOKIE ARGS...`; whether it succeeded.
    fn ctl(&self, args: &[&str]) -> bool {
        let mut cmd = self.command("rabbitmqctl");
        cmd.args(["-n", &self.node, "--erlang-cookie", &self.cookie])
            .args(args);
        quietly(&mut cmd)
    }

    /// `amqp://guest:guest@IP:PORT/%2F` followed by `query` (e.g. `?heartbeat=2`, or empty).
    pub fn url(&self, query: &str) -> String {
        format!("amqp://guest:guest@{}:{}/%2F{query}", self.ip, self.port)
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Waits until the node accepts TCP connections on its AMQP port (its last boot step)
    /// and `rabbitmqctl await_startup` agrees; returns that instant. Panics after
    /// [`READY_GUARD`], with the end of the node's output. (The port is polled first: each
    /// `rabbitmqctl` starts an Erlang VM, which would slow the booting node down.)
    pub fn wait_ready(&mut self) -> Instant {
        let deadline = Instant::now() + READY_GUARD;
        loop {
            if reachable(&self.ip, self.port) && self.ctl(&["await_startup", "--timeout", "30"]) {
                return Instant::now();
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "RabbitMQ node {} exited ({status}): {}",
                    self.node,
                    self.output_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "RabbitMQ node {} did not start within {READY_GUARD:?}: {}",
                self.node,
                self.output_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn output_tail(&self) -> String {
        let out = std::fs::read_to_string(self.dir.join("server.out")).unwrap_or_default();
        let start = out.len().saturating_sub(2_000);
        out.get(start..).unwrap_or(&out).to_owned()
    }

    /// The Erlang VM's process id, from the pid file the node writes.
    fn beam_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Stops the node cleanly (`rabbitmqctl stop`) and reaps it.
    pub fn stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        let stopped = self.ctl(&["stop"]);
        self.reap(stopped);
    }

    /// Kills the node's Erlang VM with SIGKILL (no clean shutdown) and reaps it.
    pub fn kill(&mut self) {
        if self.child.is_none() {
            return;
        }
        if let Some(pid) = self.beam_pid() {
            sigkill(pid);
        }
        self.reap(false);
    }

    /// Waits for the server script to end (bounded); kills it if it does not.
    fn reap(&mut self, gently: bool) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(if gently { 30 } else { 5 });
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(pid) = self.beam_pid() {
            sigkill(pid);
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the node again with its data (after [`stop`](Self::stop) or
    /// [`kill`](Self::kill)) and waits until it accepts connections; returns that instant.
    pub fn start_again(&mut self, dist_port: u16) -> Instant {
        assert!(self.child.is_none(), "the node is still running");
        self.spawn(dist_port);
        self.wait_ready()
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.kill();
            eprintln!(
                "RabbitMQ node {} (output kept in {}): {}",
                self.node,
                self.dir.display(),
                self.output_tail()
            );
            return;
        }
        self.stop();
        remove_dir(&self.dir);
    }
}

/// A short random-enough suffix for a cookie (the process id and the clock).
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}x{nanos}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// Network namespace
// ---------------------------------------------------------------------------------------------

/// A network namespace of the test's own, joined to the host by a veth pair: the host side
/// has `10.231.A.B+1/30`, the namespace side `10.231.A.B+2/30` (A from the process id, B from
/// a counter, checked unused). A broker started in it ([`RedisServer::start_in`],
/// [`RabbitNode::start_in`]) listens on [`ns_ip`](Self::ns_ip); the test's clients stay on
/// the host. [`cut`](Self::cut) drops every packet both ways inside the namespace (an nftables
/// table of its own with `policy drop` on input and output: no RST, no ICMP, the peers see
/// silence, as when a cable is pulled); [`restore`](Self::restore) deletes that table.
/// Dropping the guard kills what still runs in the namespace and deletes it and its links.
#[derive(Debug)]
pub struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
    ns_ip: String,
}

/// The nftables table [`Netns::cut`] adds inside the namespace.
const CUT_TABLE: &str = "kombu_fault_cut";

impl Netns {
    /// Creates the namespace and its veth pair, addresses them and brings them up (the
    /// namespace's loopback too). Panics, with the command that failed, when it cannot (the
    /// test must run as root, with `ip` and, for cuts, `nft`).
    pub fn create() -> Self {
        let pid = std::process::id();
        let n = SEQUENCE.fetch_add(1, Ordering::SeqCst);
        let name = format!("kombu-fault-{pid}-{n}");
        let host_if = format!("kf{}h{}", pid % 1_000_000, n % 100);
        let ns_if = format!("kf{}n{}", pid % 1_000_000, n % 100);
        let a = pid % 250;
        let b = (n % 64) * 4;
        let host_ip = format!("10.231.{a}.{}", b + 1);
        let ns_ip = format!("10.231.{a}.{}", b + 2);
        let addrs = check(Command::new("ip").args(["-o", "addr", "show"]));
        let addrs = String::from_utf8_lossy(&addrs.stdout);
        assert!(
            !addrs.contains(&format!(" {host_ip}/")),
            "{host_ip} is already assigned on this machine (a namespace left over?)"
        );
        let ns = Netns {
            name,
            host_if,
            host_ip,
            ns_ip,
        };
        let ip = |args: &[&str]| check(Command::new("ip").args(args));
        let in_ns = |args: &[&str]| {
            check(
                Command::new("ip")
                    .args(["netns", "exec", &ns.name])
                    .args(args),
            )
        };
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        in_ns(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", ns.ns_ip),
            "dev",
            &ns_if,
        ]);
        in_ns(&["ip", "link", "set", &ns_if, "up"]);
        in_ns(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace side's address (where a broker in it listens).
    pub fn ns_ip(&self) -> &str {
        &self.ns_ip
    }

    /// The host side's address.
    pub fn host_ip(&self) -> &str {
        &self.host_ip
    }

    /// Cuts the link both ways without a word: every packet into or out of the namespace is
    /// dropped (nothing is rejected, so neither side sees a reset).
    pub fn cut(&self) {
        let rules = format!(
            "table inet {CUT_TABLE} {{\n\
             chain input {{ type filter hook input priority -300; policy drop; }}\n\
             chain output {{ type filter hook output priority -300; policy drop; }}\n\
             }}\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run nft (package nftables) in {}: {e}", self.name));
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(rules.as_bytes())
                .unwrap_or_else(|e| panic!("write the nft rules: {e}"));
        }
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("nft: {e}"));
        assert!(
            out.status.success(),
            "nft could not cut {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Restores the link ([`cut`](Self::cut) undone); packets flow again.
    pub fn restore(&self) {
        check(Command::new("ip").args([
            "netns", "exec", &self.name, "nft", "delete", "table", "inet", CUT_TABLE,
        ]));
    }

    /// The host's established TCP connections to the namespace's `port`, as their local
    /// `address:port` (from `ss`): a test compares them before a cut and after it to see that
    /// its clients reconnected rather than kept their old connections.
    pub fn connections_to(&self, port: u16) -> Vec<String> {
        let out = check(Command::new("ss").args([
            "-Htn",
            "state",
            "established",
            "dst",
            &format!("{}:{port}", self.ns_ip),
        ]));
        let mut local: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| line.split_whitespace().nth(2).map(str::to_owned))
            .collect();
        local.sort();
        local
    }

    /// Kills with SIGKILL every process still running in the namespace (a broker, the epmd a
    /// RabbitMQ node started there).
    pub fn kill_all(&self) {
        let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        else {
            return;
        };
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse() {
                sigkill(pid);
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.kill_all();
        quietly(Command::new("ip").args(["netns", "del", &self.name]));
        quietly(Command::new("ip").args(["link", "del", &self.host_if]));
    }
}
