//! `kombu move` and `kombu bench` driven end to end as a user would: moving between SQLite files
//! and Redis, missing queues, and the benchmark's rows and latencies.

mod cli_support;

use predicates::prelude::*;
use serde_json::{Value, json};

use cli_support::*;

#[test]
fn move_between_sqlite_files_keeps_every_message_intact() {
    let dir = tempfile::tempdir().unwrap();
    let from = sqlite_url(dir.path(), "from.db");
    let to = sqlite_url(dir.path(), "to.db");
    kombu(&from)
        .args([
            "publish",
            "--routing-key",
            "jobs",
            "--declare-queue",
            "jobs",
            "--count",
            "250",
            "--header",
            "kind=bulk",
            "--correlation-id",
            "c-7",
            "--compression",
            "zlib",
            r#"{"payload": [1, 2, 3]}"#,
        ])
        .assert()
        .success();
    kombu(&from)
        .args([
            "publish",
            "--routing-key",
            "jobs",
            "--serializer",
            "raw",
            "--priority",
            "2",
        ])
        .write_stdin(vec![1u8, 2, 255])
        .assert()
        .success();
    // A few, then the rest.
    bin()
        .args([
            "move", "--from", &from, "--to", &to, "--queue", "jobs", "--count", "3",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("moved 3 messages"));
    assert_eq!(size(&from, "jobs"), 248);
    assert_eq!(size(&to, "jobs"), 3);
    bin()
        .args(["move", "--from", &from, "--to", &to, "--queue", "jobs"])
        .assert()
        .success()
        .stdout(predicate::str::contains("moved 248 messages"));
    assert_eq!(size(&from, "jobs"), 0);
    assert_eq!(size(&to, "jobs"), 251);

    let moved = consume_json(&to, "jobs", 251);
    for m in &moved[..250] {
        assert_eq!(m["body"], json!({"payload": [1, 2, 3]}));
        assert_eq!(m["content_type"], "application/json");
        assert_eq!(m["content_encoding"], "utf-8");
        assert_eq!(
            m["headers"],
            json!({"kind": "bulk", "compression": "application/x-gzip"})
        );
        assert_eq!(m["properties"]["correlation_id"], "c-7");
    }
    let last = &moved[250];
    assert_eq!(last["body"], "AQL/"); // base64 of [1, 2, 255]
    assert_eq!(last["content_type"], "application/data");
    assert_eq!(last["content_encoding"], "binary");
    assert_eq!(last["properties"]["priority"], 2);

    // Moving a queue onto itself is refused.
    bin()
        .args(["move", "--from", &to, "--to", &to, "--queue", "jobs"])
        .assert()
        .code(1);
}

#[test]
fn move_of_a_missing_queue_fails_and_hints_name_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let from = sqlite_url(dir.path(), "from.db");
    let to = sqlite_url(dir.path(), "to.db");
    let out = bin()
        .args(["move", "--from", &from, "--to", &to, "--queue", "nope"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    assert!(out.stdout.is_empty());
    assert!(
        stderr_of(&out).contains("queue \"nope\" does not exist"),
        "{}",
        stderr_of(&out)
    );
    assert!(!dir.path().join("to.db").exists());

    declare(&from, "jobs");
    let down = "redis://127.0.0.1:1/0";
    for (args, option) in [
        (["--from", down, "--to", to.as_str()], "--from"),
        (["--from", from.as_str(), "--to", down], "--to"),
    ] {
        let out = bin()
            .arg("move")
            .args(args)
            .args(["--queue", "jobs"])
            .assert()
            .code(1)
            .get_output()
            .clone();
        let stderr = stderr_of(&out);
        assert!(stderr.contains(&format!("({option})")), "{stderr}");
        assert!(!stderr.contains("--url"), "{stderr}");
    }
}

#[test]
fn redis_publish_consume_move_and_bench() {
    let url = redis_url();
    declare(&url, "jobs");
    kombu(&url)
        .args([
            "publish",
            "--routing-key",
            "jobs",
            "--count",
            "3",
            "--header",
            "k=v",
        ])
        .arg(r#"{"n": 1}"#)
        .assert()
        .success();
    assert_eq!(size(&url, "jobs"), 3);
    let got = consume_json(&url, "jobs", 2);
    assert_eq!(got[0]["body"], json!({"n": 1}));
    assert_eq!(got[0]["headers"]["k"], "v");
    assert_eq!(size(&url, "jobs"), 1);

    // Redis to SQLite and back: nothing lost on the way.
    let (_dir, sqlite) = setup();
    declare(&sqlite, "jobs");
    bin()
        .args(["move", "--from", &url, "--to", &sqlite, "--queue", "jobs"])
        .assert()
        .success();
    assert_eq!(size(&url, "jobs"), 0);
    assert_eq!(consume_json(&sqlite, "jobs", 1)[0]["body"], json!({"n": 1}));

    let out = stdout_of(kombu(&url).args(["bench", "--messages", "200", "--json"]));
    assert!(
        out.contains("msgs_per_sec") || out.contains("rate"),
        "{out}"
    );
}

#[test]
fn bench_on_sqlite_and_memory() {
    let (_dir, url) = setup();
    let out = stdout_of(kombu(&url).args([
        "--url",
        "memory://",
        "bench",
        "--messages",
        "40",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--batch",
        "5",
        "--json",
    ]));
    // JSON lines: one object per URL.
    let runs: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(runs.len(), 2, "{out}");
    assert_eq!(runs[0]["url"], url.as_str());
    assert_eq!(runs[1]["url"], "memory://");
    for run in runs {
        assert_eq!(run["messages"], 40);
        for phase in ["publish", "consume"] {
            assert!(run[phase]["msgs_per_sec"].as_f64().unwrap() > 0.0, "{run}");
            assert!(run[phase]["latency_us"]["p50"].is_u64(), "{run}");
            assert!(run[phase]["latency_us"]["p99"].is_u64(), "{run}");
        }
    }
    // The table, with compression; the bench queue is gone afterwards.
    kombu("memory://")
        .args([
            "bench",
            "--messages",
            "20",
            "--compression",
            "zstd",
            "--serializer",
            "msgpack",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("publish/s").and(predicate::str::contains("memory://")));
    let leftovers = std::fs::metadata(_dir.path().join("broker.db")).is_ok();
    assert!(leftovers, "the sqlite bench ran on the file");
}

#[test]
fn bench_publish_latency_includes_the_brokers_answer() {
    // Every answer from the broker comes 30 ms late, so no publish call that waits for the
    // broker (Redis's reply, RabbitMQ's confirm) can take less.
    let delay = std::time::Duration::from_millis(30);
    let redis = slow_proxy("127.0.0.1:6379", delay);
    let amqp = slow_proxy("127.0.0.1:5672", delay);
    for url in [
        format!(
            "redis://127.0.0.1:{redis}/0?global_keyprefix=cli-{}:",
            uuid::Uuid::new_v4().simple()
        ),
        format!("amqp://guest:guest@127.0.0.1:{amqp}//"),
    ] {
        let out =
            stdout_of(kombu(&url).args(["bench", "--messages", "20", "--batch", "5", "--json"]));
        let row: Value = serde_json::from_str(out.trim()).unwrap();
        let latency = &row["publish"]["latency_us"];
        let (p50, p99, max) = (
            latency["p50"].as_u64().unwrap(),
            latency["p99"].as_u64().unwrap(),
            latency["max"].as_u64().unwrap(),
        );
        assert!(p50 >= 30_000, "{url}: {row}");
        assert!(p50 <= p99 && p99 <= max, "{url}: {row}");
    }
}
