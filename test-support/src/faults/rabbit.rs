//! [`RabbitNode`]: a RabbitMQ node of the test's own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    Netns, READY_GUARD, assert_port_free, quietly, reachable, remove_dir, sigkill, temp_dir, unique,
};

/// Where the RabbitMQ scripts are: the package's own, not the `/usr/sbin` wrappers (those
/// switch to the `rabbitmq` user, whose home and environment are not the test's).
pub(crate) const RABBIT_BIN: &str = "/usr/lib/rabbitmq/bin";

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
