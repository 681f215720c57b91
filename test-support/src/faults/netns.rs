//! [`Netns`]: a network namespace of the test's own, and cutting its link.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;

use super::{SEQUENCE, check, quietly, sigkill};

/// A network namespace of the test's own, joined to the host by a veth pair: the host side
/// has `10.231.A.B+1/30`, the namespace side `10.231.A.B+2/30` (A from the process id, B from
/// a counter, checked unused). A broker started in it
/// ([`RedisServer::start_in`](super::RedisServer::start_in),
/// [`RabbitNode::start_in`](super::RabbitNode::start_in)) listens on [`ns_ip`](Self::ns_ip);
/// the test's clients stay on the host. [`cut`](Self::cut) drops every packet both ways inside the namespace (an nftables
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
