//! `kombu consume` stopped by signals and riding through a lost connection, driven as a
//! supervisor would: SIGTERM stops it cleanly (status 0) with nothing lost, what it had
//! prefetched back in the queue at once; SIGINT exits 130; a connection the broker closes under
//! it (RabbitMQ's `rabbitmqctl close_connection`, the shared node is not restarted) is
//! recovered and consuming goes on.

mod cli_support;

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cli_support::*;

/// Bound on anything a test waits for (a guard, not a timing).
const GUARD: Duration = Duration::from_secs(60);

/// A `kombu consume` running in the background: its stdout lines as they come, its stderr.
struct Running {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Running {
    fn start(url: &str, queue: &str, extra: &[&str]) -> Running {
        let (gate, opened) = channel();
        let _ = gate.send(());
        Running::gated(url, queue, extra, opened)
    }

    /// As [`Running::start`], its stdout read only once `opened` says so (until then the pipe
    /// fills and the command blocks writing).
    fn gated(url: &str, queue: &str, extra: &[&str], opened: Receiver<()>) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kombu"))
            .env_remove("KOMBU_URL")
            .args([
                "--url", url, "consume", "--queue", queue, "--format", "body",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kombu consume");
        let (tx, lines) = channel();
        let stdout = child.stdout.take().expect("stdout piped");
        let mut readers = vec![std::thread::spawn(move || {
            if opened.recv().is_err() {
                return;
            }
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        })];
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr piped");
        let sink = stderr.clone();
        readers.push(std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    return;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }));
        Running {
            child,
            lines,
            stderr,
            readers,
        }
    }

    /// Waits (bounded) until `n` more lines were printed; returns them.
    fn take(&self, n: usize) -> Vec<String> {
        let start = Instant::now();
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            let left = GUARD.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) => got.push(line),
                Err(e) => panic!(
                    "{} of {n} lines printed ({e}); stderr: {}",
                    got.len(),
                    self.stderr()
                ),
            }
        }
        got
    }

    fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{name}");
    }

    /// Waits (bounded) for the exit; returns the status and every line printed meanwhile.
    fn exit(mut self) -> (ExitStatus, Vec<String>, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if start.elapsed() > GUARD {
                let _ = self.child.kill();
                panic!("kombu consume did not stop; stderr: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for reader in self.readers.drain(..) {
            reader.join().expect("reader");
        }
        let rest = self.lines.try_iter().collect();
        (status, rest, self.stderr())
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Publishes the numbers `from..to`, one message each, declaring the queue.
fn publish_range(url: &str, queue: &str, from: u32, to: u32) {
    let lines: String = (from..to).map(|i| format!("{i}\n")).collect();
    kombu(url)
        .args(["publish", "--routing-key", queue, "--declare-queue", queue])
        .args(["--serializer", "text", "--lines"])
        .write_stdin(lines)
        .assert()
        .success();
}

/// Whether `stderr` reports no error (the tool's errors are lines starting `error:`; warnings
/// and the library's logs may quote an error they rode through).
fn no_error(stderr: &str) -> bool {
    !stderr.lines().any(|l| l.starts_with("error:"))
}

/// The numbers printed, checked to be numbers.
fn numbers(lines: &[String]) -> BTreeSet<u32> {
    lines
        .iter()
        .map(|l| l.trim().parse().unwrap_or_else(|_| panic!("printed {l:?}")))
        .collect()
}

/// SIGTERM while `kombu consume` runs: exit 0, what it printed was acked, everything else
/// (its prefetch included) is back in the queue at once, and nothing is lost.
fn sigterm_loses_nothing(url: &str) {
    const N: u32 = 300;
    let queue = unique("sigterm");
    publish_range(url, &queue, 0, N);
    let running = Running::start(url, &queue, &["--prefetch", "50"]);
    let mut printed = running.take(20);
    let signalled = Instant::now();
    running.signal("TERM");
    let (status, rest, stderr) = running.exit();
    let stopping = signalled.elapsed();
    printed.extend(rest);
    assert_eq!(
        status.code(),
        Some(0),
        "a SIGTERM stop exits 0; stderr: {stderr}"
    );
    assert!(
        stderr.contains("SIGTERM"),
        "stderr says why it stops: {stderr}"
    );
    let seen = numbers(&printed);
    assert_eq!(seen.len(), printed.len(), "nothing printed twice");
    // Right after the exit: every message not printed is ready again (not leased until a
    // visibility timeout), and the printed ones were acked.
    let left = size(url, &queue);
    println!(
        "{url}: printed {} of {N} before the stop, {left} back in the queue; exited {stopping:?} \
         after SIGTERM",
        printed.len()
    );
    assert_eq!(left, u64::from(N) - printed.len() as u64, "nothing lost");
    let rest = consume_json(url, &queue, usize::try_from(left).expect("small"));
    let rest: BTreeSet<u32> = rest
        .iter()
        .map(|m| {
            m["body"]
                .as_str()
                .expect("text body")
                .parse()
                .expect("a number")
        })
        .collect();
    assert!(seen.is_disjoint(&rest), "the printed ones were acked");
    assert_eq!(seen.len() + rest.len(), N as usize, "every message once");
    delete_queue(url, &queue);
}

#[test]
fn sigterm_stops_consume_cleanly_on_sqlite() {
    let (_dir, url) = setup();
    sigterm_loses_nothing(&url);
}

#[test]
fn sigterm_stops_consume_cleanly_on_redis() {
    sigterm_loses_nothing(&redis_url());
}

#[test]
fn sigterm_stops_consume_cleanly_on_amqp() {
    sigterm_loses_nothing(AMQP_URL);
}

#[test]
fn sigint_stops_consume_with_130_and_loses_nothing() {
    let (_dir, url) = setup();
    let queue = unique("sigint");
    publish_range(&url, &queue, 0, 100);
    let running = Running::start(&url, &queue, &["--prefetch", "20"]);
    let mut printed = running.take(5);
    running.signal("INT");
    let (status, rest, stderr) = running.exit();
    printed.extend(rest);
    assert_eq!(
        status.code(),
        Some(130),
        "SIGINT exits 130; stderr: {stderr}"
    );
    assert_eq!(
        size(&url, &queue),
        100 - printed.len() as u64,
        "nothing lost"
    );
}

/// The local ports of `pid`'s TCP connections to port 5672, from `ss`.
fn amqp_ports_of(pid: u32) -> Vec<u16> {
    let out = Command::new("ss")
        .args(["-Htnp", "state", "established", "( dport = :5672 )"])
        .output()
        .expect("ss (iproute2)");
    let needle = format!("pid={pid},");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| {
            let local = l.split_whitespace().nth(2)?;
            local.rsplit(':').next()?.parse().ok()
        })
        .collect()
}

/// Closes, from the broker's side, every connection `pid` has to RabbitMQ (found by the
/// client's port among `rabbitmqctl list_connections`); returns how many.
fn close_amqp_connections_of(pid: u32) -> usize {
    let ports = amqp_ports_of(pid);
    let out = Command::new("rabbitmqctl")
        .args(["list_connections", "-q", "pid", "peer_port"])
        .output()
        .expect("rabbitmqctl");
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut closed = 0;
    for line in listing.lines() {
        let mut fields = line.split_whitespace();
        let (Some(conn), Some(port)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !port.parse().is_ok_and(|p: u16| ports.contains(&p)) {
            continue;
        }
        let out = Command::new("rabbitmqctl")
            .args([
                "close_connection",
                conn,
                "closed by the kombu-rs signal test",
            ])
            .output()
            .expect("rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl close_connection {conn}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        closed += 1;
    }
    closed
}

#[test]
fn consume_rides_through_an_amqp_connection_closed_by_the_broker() {
    let url = AMQP_URL;
    let queue = unique("ride");
    publish_range(url, &queue, 0, 50);
    let running = Running::start(url, &queue, &["--prefetch", "10"]);
    let mut printed = running.take(50);
    let closed = close_amqp_connections_of(running.child.id());
    assert!(closed > 0, "kombu consume has a connection to RabbitMQ");
    let lost_at = Instant::now();
    // Published after the loss: only a consumer that came back can print them.
    publish_range(url, &queue, 50, 100);
    let after = running.take(50);
    println!(
        "AMQP: {closed} connection(s) closed by the broker; 50 more printed {:?} after",
        lost_at.elapsed()
    );
    printed.extend(after);
    running.signal("TERM");
    let (status, rest, stderr) = running.exit();
    printed.extend(rest);
    println!("stderr of kombu consume:\n{stderr}");
    assert_eq!(status.code(), Some(0), "a clean stop; stderr: {stderr}");
    assert!(no_error(&stderr), "no error: {stderr}");
    let seen = numbers(&printed);
    assert_eq!(
        seen,
        (0..100).collect::<BTreeSet<u32>>(),
        "every message printed, before and after the loss"
    );
    assert_eq!(size(url, &queue), 0, "every printed message was acked");
    delete_queue(url, &queue);
}

#[test]
fn sigterm_stops_move_between_chunks_and_loses_nothing() {
    const N: u32 = 5000;
    let (dir, from) = setup();
    let to = sqlite_url(dir.path(), "destination.db");
    let queue = unique("moving");
    publish_range(&from, &queue, 0, N);
    let mut child = Command::new(env!("CARGO_BIN_EXE_kombu"))
        .env_remove("KOMBU_URL")
        .args(["move", "--from", &from, "--to", &to, "--queue", &queue])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kombu move");
    // Once some messages arrived (or the move ended first: the checks below hold either way).
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none()
        && !(queue_exists(&to, &queue) && size(&to, &queue) > 0)
    {
        assert!(start.elapsed() < GUARD, "kombu move moves nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().expect("kombu move ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a SIGTERM stop exits 0; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (left, moved) = (size(&from, &queue), size(&to, &queue));
    println!("move: {stdout}{left} left on the source, {moved} on the destination");
    assert_eq!(
        left + moved,
        u64::from(N),
        "nothing lost, nothing moved twice"
    );
    let bodies = |url: &str, n: u64| -> BTreeSet<u32> {
        consume_json(url, &queue, usize::try_from(n).expect("small"))
            .iter()
            .map(|m| m["body"].as_str().expect("text").parse().expect("a number"))
            .collect()
    };
    let mut all = bodies(&from, left);
    all.extend(bodies(&to, moved));
    assert_eq!(all, (0..N).collect::<BTreeSet<u32>>(), "every message once");
}

#[test]
fn an_ack_after_the_amqp_connection_was_lost_is_a_warning_and_consume_goes_on() {
    const N: u32 = 100;
    let url = AMQP_URL;
    let queue = unique("stale");
    // 4 KB bodies: a few fill the pipe, so kombu consume blocks printing one it holds.
    let pad = "x".repeat(4000);
    let lines: String = (0..N).map(|i| format!("{i} {pad}\n")).collect();
    kombu(url)
        .args([
            "publish",
            "--routing-key",
            &queue,
            "--declare-queue",
            &queue,
        ])
        .args(["--serializer", "text", "--lines"])
        .write_stdin(lines)
        .assert()
        .success();
    let (gate, opened) = channel();
    let running = Running::gated(url, &queue, &["--prefetch", "10"], opened);
    let start = Instant::now();
    while size(url, &queue) == u64::from(N) {
        assert!(start.elapsed() < GUARD, "kombu consume takes nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Blocked writing a delivery it holds, unacked, when its connection is closed.
    std::thread::sleep(Duration::from_millis(500));
    let closed = close_amqp_connections_of(running.child.id());
    assert!(closed > 0, "kombu consume has a connection to RabbitMQ");
    std::thread::sleep(Duration::from_millis(200));
    gate.send(()).expect("reader waiting");
    let mut seen = BTreeSet::new();
    let mut printed = 0usize;
    while seen.len() < N as usize {
        for line in running.take(1) {
            printed += 1;
            let number = line.split_whitespace().next().unwrap_or_default();
            seen.insert(number.parse::<u32>().expect("a number first"));
        }
    }
    running.signal("TERM");
    let (status, rest, stderr) = running.exit();
    printed += rest.len();
    println!(
        "AMQP, connection closed while consume held deliveries: {} printed for {N} messages; \
         stderr:\n{stderr}",
        printed
    );
    assert_eq!(status.code(), Some(0), "a clean stop; stderr: {stderr}");
    assert!(no_error(&stderr), "no error: {stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("may be seen twice"),
        "the ack of the delivery held across the loss is a warning: {stderr}"
    );
    assert!(printed > N as usize, "what was held is delivered again");
    assert_eq!(size(url, &queue), 0, "every message acked in the end");
    delete_queue(url, &queue);
}

#[test]
fn sigterm_stops_a_peek_and_puts_back_what_it_showed() {
    let (_dir, url) = setup();
    let queue = unique("peek");
    publish_range(&url, &queue, 0, 30);
    let running = Running::start(&url, &queue, &["--requeue"]);
    let mut printed = running.take(30);
    // Every message shown and held: the peek now waits for more, and is stopped there.
    running.signal("TERM");
    let (status, rest, stderr) = running.exit();
    printed.extend(rest);
    assert_eq!(
        status.code(),
        Some(0),
        "a SIGTERM stop exits 0; stderr: {stderr}"
    );
    assert_eq!(numbers(&printed), (0..30).collect::<BTreeSet<u32>>());
    assert_eq!(
        size(&url, &queue),
        30,
        "a peek leaves every message in its queue"
    );
}

#[test]
fn a_second_signal_exits_at_once() {
    let (_dir, url) = setup();
    let queue = unique("second");
    // 4 KB bodies and a stdout nobody reads: kombu consume blocks printing, so the first
    // SIGTERM cannot finish the message in hand; the second exits at once.
    let pad = "x".repeat(4000);
    let lines: String = (0..100).map(|i| format!("{i} {pad}\n")).collect();
    kombu(&url)
        .args([
            "publish",
            "--routing-key",
            &queue,
            "--declare-queue",
            &queue,
        ])
        .args(["--serializer", "text", "--lines"])
        .write_stdin(lines)
        .assert()
        .success();
    let (gate, never) = channel();
    let running = Running::gated(&url, &queue, &[], never);
    let start = Instant::now();
    while size(&url, &queue) == 100 {
        assert!(start.elapsed() < GUARD, "kombu consume takes nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    running.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    running.signal("TERM");
    let start = Instant::now();
    let mut running = running;
    let status = loop {
        if let Some(status) = running.child.try_wait().expect("wait") {
            break status;
        }
        assert!(start.elapsed() < GUARD, "the second SIGTERM exits");
        std::thread::sleep(Duration::from_millis(20));
    };
    // The readers end with the pipes (stdout's without reading it): stderr is complete.
    drop(gate);
    for reader in running.readers.drain(..) {
        reader.join().expect("reader");
    }
    assert_eq!(status.code(), Some(143), "stderr: {}", running.stderr());
    assert!(
        running.stderr().contains("exiting now"),
        "{}",
        running.stderr()
    );
}

/// The port of the Redis server `consume_rides_through_a_redis_restart` starts, SIGKILLs and
/// starts again (its own: the shared server on 6379 is never restarted).
const RESTART_PORT: u16 = 16401;

#[test]
fn consume_rides_through_a_redis_restart() {
    use kombu_test_support::faults::RedisServer;
    let mut server = RedisServer::start(RESTART_PORT);
    let url = server.url();
    let queue = unique("restart");
    publish_range(&url, &queue, 0, 50);
    let running = Running::start(&url, &queue, &["--prefetch", "10"]);
    let mut printed = running.take(50);
    server.sigkill();
    std::thread::sleep(Duration::from_millis(300));
    let back = server.start_again();
    // Published after the restart: only a consumer that came back can print them.
    publish_range(&url, &queue, 50, 100);
    let first = running.take(1);
    let recovery = back.elapsed();
    printed.extend(first);
    printed.extend(running.take(49));
    running.signal("TERM");
    let (status, rest, stderr) = running.exit();
    printed.extend(rest);
    println!(
        "Redis restart: first delivery {recovery:?} after the server answered again (the \
         publish of 50 included); stderr of kombu consume:\n{stderr}"
    );
    assert_eq!(status.code(), Some(0), "a clean stop; stderr: {stderr}");
    assert!(no_error(&stderr), "no error: {stderr}");
    assert!(
        stderr.contains("lost, reconnecting") && stderr.contains("connected again"),
        "the link changes are told on stderr: {stderr}"
    );
    assert_eq!(
        numbers(&printed),
        (0..100).collect::<BTreeSet<u32>>(),
        "every message printed, before and after the restart"
    );
    assert_eq!(size(&url, &queue), 0, "every printed message was acked");
}

/// The port of the Redis server `move_rides_through_a_redis_restart` restarts.
const MOVE_RESTART_PORT: u16 = 16402;

#[test]
fn move_rides_through_a_redis_restart() {
    use kombu_test_support::faults::RedisServer;
    const N: u32 = 4_000;
    let mut server = RedisServer::start(MOVE_RESTART_PORT);
    let from = server.url();
    let (dir, _) = setup();
    let to = sqlite_url(dir.path(), "destination.db");
    let queue = unique("move-restart");
    publish_range(&from, &queue, 0, N);
    let child = Command::new(env!("CARGO_BIN_EXE_kombu"))
        .env_remove("KOMBU_URL")
        .args(["move", "--from", &from, "--to", &to, "--queue", &queue])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kombu move");
    // Once some messages arrived: the restart then falls in the middle of the move (or after
    // its end on a fast machine: the checks below hold either way).
    let start = Instant::now();
    while !(queue_exists(&to, &queue) && size(&to, &queue) > 0) {
        assert!(start.elapsed() < GUARD, "kombu move moves nothing");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.sigkill();
    std::thread::sleep(Duration::from_millis(300));
    server.start_again();
    let out = child.wait_with_output().expect("kombu move ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "move across a Redis restart: {}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(size(&from, &queue), 0, "everything moved");
    let moved = size(&to, &queue);
    let bodies: Vec<u32> = consume_json(&to, &queue, usize::try_from(moved).expect("small"))
        .iter()
        .map(|m| m["body"].as_str().expect("text").parse().expect("a number"))
        .collect();
    let unique: BTreeSet<u32> = bodies.iter().copied().collect();
    println!(
        "{moved} on the destination for {N} messages ({} moved twice)",
        bodies.len() - unique.len()
    );
    assert_eq!(unique, (0..N).collect::<BTreeSet<u32>>(), "nothing lost");
}
