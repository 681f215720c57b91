//! `kombu celery beat` as people run it: two of them on one schedule with the state on Redis
//! (named) or MongoDB (the default on a MongoDB broker) send each run once (one JSON line each, the task in the queue under that id); the leader
//! killed, the other takes over; a schedule file with a mistake is refused with its reason.

mod cli_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use kombu_test_support::brokers;
use predicates::prelude::*;
use serde_json::Value;

use cli_support::*;

/// Starts a beat (its state at `state`, else where it goes by default); its stdout lines come
/// on the returned channel.
fn beat(
    url: &str,
    schedule: &std::path::Path,
    state: Option<&str>,
) -> (Child, mpsc::Receiver<Value>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kombu"));
    command
        .args(["--url", url, "celery", "beat", "--schedule"])
        .arg(schedule)
        .args(["--lease-ttl", "1"]);
    if let Some(state) = state {
        command.args(["--state", state]);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kombu celery beat");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(value) = serde_json::from_str(&line) {
                let _ = tx.send(value);
            }
        }
    });
    (child, rx)
}

#[test]
fn two_beats_send_each_run_once_and_take_over_on_redis() {
    let Some(broker) = brokers::broker("redis", "cli-beat") else {
        return;
    };
    two_beats_send_each_run_once_and_take_over(&broker.url, Some(&broker.url));
}

#[test]
fn two_beats_send_each_run_once_and_take_over_on_mongodb() {
    let Some(broker) = brokers::broker("mongodb", "cli-beat") else {
        return;
    };
    two_beats_send_each_run_once_and_take_over(&broker.url, None);
}

fn two_beats_send_each_run_once_and_take_over(url: &str, state: Option<&str>) {
    let url = url.to_owned();
    let dir = tempfile::tempdir().expect("a directory");
    let queue = unique("cli-beat");
    let schedule = dir.path().join("beat.toml");
    std::fs::write(
        &schedule,
        format!(
            "[beat]\nname = \"{queue}\"\n\n[[entry]]\nname = \"tick\"\ntask = \"tasks.tick\"\n\
             every = \"1s\"\nargs = [1]\nqueue = \"{queue}\"\n"
        ),
    )
    .expect("write the schedule");
    let (mut first, first_lines) = beat(&url, &schedule, state);
    let (mut second, second_lines) = beat(&url, &schedule, state);
    std::thread::sleep(Duration::from_secs(4));
    let mut lines: Vec<(u8, Value)> = Vec::new();
    lines.extend(first_lines.try_iter().map(|v| (1, v)));
    lines.extend(second_lines.try_iter().map(|v| (2, v)));
    let senders: std::collections::HashSet<u8> = lines.iter().map(|(who, _)| *who).collect();
    assert_eq!(senders.len(), 1, "one leader sends: {lines:?}");
    assert!(lines.len() >= 2, "it sends every second: {lines:?}");
    // The leader dies without a word; the other takes over within the lease.
    let (leader, other_lines, mut other) = match senders.iter().next() {
        Some(1) => (&mut first, &second_lines, second),
        _ => (&mut second, &first_lines, first),
    };
    leader.kill().expect("kill the leader");
    let _ = leader.wait();
    let taken = other_lines
        .recv_timeout(Duration::from_secs(10))
        .expect("the other beat sends");
    lines.push((0, taken));
    std::thread::sleep(Duration::from_secs(2));
    lines.extend(other_lines.try_iter().map(|v| (0, v)));
    let pid = other.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert_eq!(
        other.wait().expect("wait").code(),
        Some(0),
        "SIGTERM: a clean stop"
    );

    // Each run once: distinct ids and times, every one in the queue under its id.
    let ids: Vec<String> = lines
        .iter()
        .map(|(_, v)| v["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let mut unique_ids = ids.clone();
    unique_ids.sort();
    unique_ids.dedup();
    assert_eq!(unique_ids.len(), ids.len(), "no run sent twice: {lines:?}");
    let mut queued: Vec<String> = peek_json_ids(&url, &queue, ids.len());
    queued.sort();
    assert_eq!(
        queued, unique_ids,
        "the queue holds exactly the runs printed"
    );
    if state.is_none() {
        assert!(
            !schedule.with_extension("state.db").exists(),
            "the state is on the broker, not in a file beside the schedule"
        );
    }
}

/// The task ids of the `n` messages in `queue`.
fn peek_json_ids(url: &str, queue: &str, n: usize) -> Vec<String> {
    with_connection(url, async |conn| {
        use kombu::StreamExt;
        let mut consumer = conn
            .consumer([kombu::Queue::new(queue)])
            .build()
            .await
            .expect("a consumer");
        let mut ids = Vec::new();
        while ids.len() < n + 1 {
            let Ok(Some(Ok(delivery))) =
                tokio::time::timeout(Duration::from_millis(1500), consumer.next()).await
            else {
                break;
            };
            let request = kombu::celery::TaskRequest::from_delivery(&delivery).expect("a task");
            ids.push(request.id);
            delivery.ack().await.expect("ack");
        }
        consumer.close().await.expect("close");
        ids
    })
}

#[test]
fn a_schedule_with_a_mistake_is_refused() {
    let dir = tempfile::tempdir().expect("a directory");
    let schedule = dir.path().join("beat.toml");
    std::fs::write(
        &schedule,
        "[[entry]]\nname = \"n\"\ntask = \"t\"\ncrontab = \"61 * * * *\"\n",
    )
    .expect("write");
    kombu("memory://beat-bad")
        .args(["celery", "beat", "--schedule"])
        .arg(&schedule)
        .assert()
        .failure()
        .stderr(predicates::str::contains("61").and(predicates::str::contains("beat.toml")));
}
