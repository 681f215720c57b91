//! The `kombu` binary, driven end to end as a user would: separate invocations sharing SQLite
//! files in a temporary directory.

use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::{Value, json};
use tempfile::TempDir;

/// The binary with a clean environment (no `KOMBU_URL`, no backtraces).
fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kombu"));
    cmd.env_remove("KOMBU_URL")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    cmd
}

/// The binary on `url`.
fn kombu(url: &str) -> Command {
    let mut cmd = bin();
    cmd.args(["--url", url]);
    cmd
}

fn sqlite_url(dir: &Path, name: &str) -> String {
    format!("sqlite://{}", dir.join(name).display())
}

fn setup() -> (TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path(), "broker.db");
    (dir, url)
}

fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.assert().success().get_output().stdout.clone();
    String::from_utf8(out).unwrap()
}

fn size(url: &str, queue: &str) -> u64 {
    stdout_of(kombu(url).args(["size", queue]))
        .trim()
        .parse()
        .unwrap()
}

/// Consumes `count` messages as JSON objects.
fn consume_json(url: &str, queue: &str, count: usize) -> Vec<Value> {
    let out = stdout_of(kombu(url).args([
        "consume",
        "--queue",
        queue,
        "--count",
        &count.to_string(),
        "--timeout",
        "5",
    ]));
    let messages: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(messages.len(), count, "{out}");
    messages
}

#[test]
fn publish_then_consume_size_and_purge_across_invocations() {
    let (_dir, url) = setup();
    kombu(&url)
        .args([
            "publish",
            "--routing-key",
            "jobs",
            "--declare-queue",
            "jobs",
            "--header",
            "attempt=2",
            "--header",
            "source=cli",
            "--priority",
            "4",
            "--expiration",
            "60000",
            "--correlation-id",
            "req-1",
            "--reply-to",
            "answers",
            "--confirm",
            r#"{"id": 1, "tags": ["a", "b"]}"#,
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("published 1 message"));
    assert_eq!(size(&url, "jobs"), 1);

    let [m] = consume_json(&url, "jobs", 1).try_into().unwrap();
    assert_eq!(m["body"], json!({"id": 1, "tags": ["a", "b"]}));
    assert_eq!(m["content_type"], "application/json");
    assert_eq!(m["content_encoding"], "utf-8");
    assert_eq!(m["headers"], json!({"attempt": 2, "source": "cli"}));
    let props = &m["properties"];
    assert_eq!(props["priority"], 4);
    assert_eq!(props["correlation_id"], "req-1");
    assert_eq!(props["reply_to"], "answers");
    assert_eq!(props["expiration"], 60000);
    assert_eq!(props["delivery_mode"], 2);
    assert!(props.get("message_id").is_some());
    assert_eq!(m["delivery_info"]["exchange"], "");
    assert_eq!(m["delivery_info"]["routing_key"], "jobs");
    assert_eq!(m["delivery_info"]["redelivered"], false);
    // Acked after printing: gone.
    assert_eq!(size(&url, "jobs"), 0);

    kombu(&url)
        .args(["publish", "--routing-key", "jobs", "--count", "5", "7"])
        .assert()
        .success();
    assert_eq!(size(&url, "jobs"), 5);
    kombu(&url)
        .args(["purge", "jobs"])
        .assert()
        .success()
        .stdout("5\n");
    assert_eq!(size(&url, "jobs"), 0);
    kombu(&url)
        .args(["delete", "queue", "jobs"])
        .assert()
        .success();
}

#[test]
fn every_serializer_and_compression_round_trips() {
    let (_dir, url) = setup();
    kombu(&url)
        .args(["declare", "queue", "codec"])
        .assert()
        .success();
    let compressions = ["", "zlib", "bzip2", "lzma", "brotli", "zstd"];
    let mut expected = Vec::new();
    for serializer in ["json", "msgpack", "yaml", "raw", "text"] {
        for compression in compressions {
            let mut cmd = kombu(&url);
            cmd.args([
                "publish",
                "--routing-key",
                "codec",
                "--serializer",
                serializer,
            ]);
            if !compression.is_empty() {
                cmd.args(["--compression", compression]);
            }
            let body = match serializer {
                "raw" => {
                    // Bytes that are not UTF-8, from stdin.
                    cmd.write_stdin(vec![0u8, 159, 146, 150, 255, b'\n']);
                    json!("AJ+Slv8K") // base64 of the bytes
                }
                "text" => {
                    cmd.arg("héllo wörld");
                    json!("héllo wörld")
                }
                _ => {
                    cmd.arg(r#"{"n": 1, "f": 2.5, "s": "x", "l": [true, null]}"#);
                    json!({"n": 1, "f": 2.5, "s": "x", "l": [true, null]})
                }
            };
            cmd.assert().success();
            expected.push((serializer, compression, body));
        }
    }
    let got = consume_json(&url, "codec", expected.len());
    for ((serializer, compression, body), m) in expected.iter().zip(&got) {
        assert_eq!(&m["body"], body, "{serializer} + {compression:?}: {m}");
        let content_type = match *serializer {
            "json" => "application/json",
            "msgpack" => "application/x-msgpack",
            "yaml" => "application/x-yaml",
            "raw" => "application/data",
            _ => "text/plain",
        };
        assert_eq!(m["content_type"], content_type);
        assert_eq!(
            m["headers"].get("compression").is_some(),
            !compression.is_empty(),
            "{m}"
        );
    }
}

#[test]
fn lines_and_count_publish_many_messages() {
    let (_dir, url) = setup();
    kombu(&url)
        .args([
            "publish",
            "--routing-key",
            "n",
            "--declare-queue",
            "n",
            "--lines",
            "--count",
            "2",
        ])
        .write_stdin("1\n\n{\"two\": 2}\r\n\"three\"\n")
        .assert()
        .success()
        .stdout(predicate::str::contains("published 6 messages"));
    let bodies: Vec<Value> = consume_json(&url, "n", 6)
        .into_iter()
        .map(|m| m["body"].clone())
        .collect();
    let round = [json!(1), json!({"two": 2}), json!("three")];
    assert_eq!(bodies, [round.clone(), round].concat());

    // --format body prints only bodies; text lines keep their text.
    kombu(&url)
        .args([
            "publish",
            "--routing-key",
            "n",
            "--serializer",
            "text",
            "--lines",
        ])
        .write_stdin("alpha\nbeta\n")
        .assert()
        .success();
    kombu(&url)
        .args([
            "consume", "--queue", "n", "--count", "2", "--format", "body",
        ])
        .assert()
        .success()
        .stdout("alpha\nbeta\n");
}

#[test]
fn topic_exchange_routing_with_bind_and_unbind() {
    let (_dir, url) = setup();
    kombu(&url)
        .args(["declare", "exchange", "logs", "--type", "topic"])
        .assert()
        .success();
    kombu(&url)
        .args([
            "declare",
            "queue",
            "errors",
            "--exchange",
            "logs",
            "--routing-key",
            "*.error",
        ])
        .assert()
        .success();
    kombu(&url)
        .args(["declare", "queue", "everything"])
        .assert()
        .success();
    kombu(&url)
        .args(["bind", "everything", "logs", "--routing-key", "#"])
        .assert()
        .success();
    let publish = |key: &str, body: &str| {
        kombu(&url)
            .args([
                "publish",
                "--exchange",
                "logs",
                "--exchange-type",
                "topic",
                "--routing-key",
                key,
                body,
            ])
            .assert()
            .success();
    };
    publish("app.error", "1");
    publish("app.info", "2");
    publish("db.error", "3");
    assert_eq!(size(&url, "errors"), 2);
    assert_eq!(size(&url, "everything"), 3);
    kombu(&url)
        .args(["unbind", "everything", "logs", "--routing-key", "#"])
        .assert()
        .success();
    publish("app.error", "4");
    assert_eq!(size(&url, "errors"), 3);
    assert_eq!(size(&url, "everything"), 3);
    let keys: Vec<Value> = consume_json(&url, "errors", 3)
        .into_iter()
        .map(|m| m["delivery_info"]["routing_key"].clone())
        .collect();
    assert_eq!(
        keys,
        [json!("app.error"), json!("db.error"), json!("app.error")]
    );
}

#[test]
fn headers_exchange_routing_all_and_any() {
    let (_dir, url) = setup();
    kombu(&url)
        .args(["declare", "exchange", "alerts", "--type", "headers"])
        .assert()
        .success();
    for q in ["both", "either"] {
        kombu(&url).args(["declare", "queue", q]).assert().success();
    }
    kombu(&url)
        .args([
            "bind", "both", "alerts", "--header", "level=3", "--header", "team=ops",
        ])
        .assert()
        .success();
    kombu(&url)
        .args([
            "bind", "either", "alerts", "--header", "level=3", "--header", "team=ops", "--match",
            "any",
        ])
        .assert()
        .success();
    let publish = |headers: &[&str]| {
        let mut cmd = kombu(&url);
        cmd.args([
            "publish",
            "--exchange",
            "alerts",
            "--exchange-type",
            "headers",
        ]);
        for h in headers {
            cmd.args(["--header", h]);
        }
        cmd.arg("{}").assert().success();
    };
    publish(&["level=3", "team=ops"]); // both, either
    publish(&["team=ops"]); // either
    publish(&["level=\"3\""]); // a string, not the number 3: neither
    publish(&["team=dev"]); // neither
    assert_eq!(size(&url, "both"), 1);
    assert_eq!(size(&url, "either"), 2);
}

#[test]
fn consume_exit_codes() {
    let (_dir, url) = setup();
    kombu(&url)
        .args(["publish", "--routing-key", "q", "--declare-queue", "q", "1"])
        .assert()
        .success();
    // 0: --count messages arrived.
    kombu(&url)
        .args(["consume", "--queue", "q", "--count", "1", "--timeout", "5"])
        .assert()
        .code(0);
    // 3: the timeout passed first (the queue is empty now).
    kombu(&url)
        .args([
            "consume",
            "--queue",
            "q",
            "--count",
            "1",
            "--timeout",
            "0.2",
        ])
        .assert()
        .code(3)
        .stdout("");
    // 1: an error (an unknown serializer in --accept).
    kombu(&url)
        .args([
            "consume",
            "--queue",
            "q",
            "--timeout",
            "1",
            "--accept",
            "nope",
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("nope"));
    // 1: a message the accept list refuses is put back, and the error says so.
    kombu(&url)
        .args([
            "publish",
            "--routing-key",
            "q",
            "--serializer",
            "yaml",
            "[1]",
        ])
        .assert()
        .success();
    kombu(&url)
        .args([
            "consume",
            "--queue",
            "q",
            "--count",
            "1",
            "--timeout",
            "5",
            "--accept",
            "json",
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("refused"));
    assert_eq!(size(&url, "q"), 1);
}

#[test]
fn requeue_leaves_messages_and_no_ack_removes_them() {
    let (_dir, url) = setup();
    kombu(&url)
        .args([
            "publish",
            "--routing-key",
            "peek",
            "--declare-queue",
            "peek",
            "--lines",
        ])
        .write_stdin("1\n2\n3\n")
        .assert()
        .success();
    let out = stdout_of(kombu(&url).args([
        "consume",
        "--queue",
        "peek",
        "--count",
        "3",
        "--requeue",
        "--format",
        "body",
    ]));
    assert_eq!(out, "1\n2\n3\n");
    assert_eq!(size(&url, "peek"), 3);
    let again = consume_json(&url, "peek", 1);
    assert_eq!(again[0]["body"], 1);
    assert_eq!(again[0]["delivery_info"]["redelivered"], true);

    let out = stdout_of(kombu(&url).args([
        "consume", "--queue", "peek", "--count", "1", "--no-ack", "--format", "body",
    ]));
    assert_eq!(out, "2\n");
    assert_eq!(size(&url, "peek"), 1);
}

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
fn errors_are_one_line_and_never_show_the_password() {
    let (_dir, url) = setup();
    // Unknown scheme, with a password.
    let out = kombu("foo://user:secret@host:1234/vhost")
        .args(["size", "q"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.contains("secret"), "{stderr}");
    assert!(String::from_utf8(out.stdout).unwrap().is_empty());
    assert!(stderr.contains("foo://user:**@host:1234/vhost"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");

    // A working memory URL with a password: an error later still masks it.
    let out = kombu("memory://user:secret@x")
        .args(["consume", "--queue", "q", "--accept", "bogus"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("secret"));
    // Even a URL that does not parse.
    let out = kombu("foo://user:secret@host:99999")
        .args(["purge", "q"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("secret"));
    // And --verbose details.
    let out = kombu("nope://u:secret@h")
        .args(["--verbose", "size", "q"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("secret"));

    // Unknown serializer: names the known ones, creates no database file.
    let dir = tempfile::tempdir().unwrap();
    let fresh = sqlite_url(dir.path(), "never.db");
    kombu(&fresh)
        .args([
            "publish",
            "--routing-key",
            "q",
            "--serializer",
            "pickle2",
            "1",
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("pickle2").and(predicate::str::contains("json")));
    assert!(!dir.path().join("never.db").exists());
    // Unknown compression, a body that is not JSON, a queue that does not exist.
    kombu(&url)
        .args(["publish", "--routing-key", "q", "--compression", "rar", "1"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("rar"));
    kombu(&url)
        .args(["publish", "--routing-key", "q", "not json"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--serializer text"));
    kombu(&url)
        .args(["publish", "--routing-key", "missing", "--mandatory", "1"])
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("missing").and(predicate::str::contains("--declare-queue")),
        );
    // A database that cannot be opened names the URL.
    kombu("sqlite:///nonexistent-dir/for/sure.db")
        .args(["size", "q"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "sqlite:///nonexistent-dir/for/sure.db",
        ));
}

#[test]
fn url_comes_from_the_environment_then_the_default_file() {
    let dir = tempfile::tempdir().unwrap();
    let env_url = sqlite_url(dir.path(), "env.db");
    bin()
        .env("KOMBU_URL", &env_url)
        .args(["publish", "--routing-key", "e", "--declare-queue", "e", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains("env.db"));
    assert_eq!(size(&env_url, "e"), 1);
    // No --url, no KOMBU_URL: kombu.db in the current directory.
    bin()
        .current_dir(dir.path())
        .args(["declare", "queue", "d"])
        .assert()
        .success();
    assert!(dir.path().join("kombu.db").exists());
}

#[test]
fn completions_and_help() {
    for shell in ["bash", "zsh", "fish"] {
        bin()
            .args(["completions", shell])
            .assert()
            .success()
            .stdout(predicate::str::contains("kombu").and(predicate::str::contains("publish")));
    }
    for command in [
        "publish",
        "consume",
        "declare",
        "bind",
        "unbind",
        "size",
        "purge",
        "delete",
        "move",
        "bench",
        "completions",
    ] {
        bin()
            .args([command, "--help"])
            .assert()
            .success()
            .stdout(predicate::str::contains("Example"));
    }
}

// --- Issue 13: publish, declare, size and bulk publishing as a new user meets them. ---

/// `redis_interop.py` of the Redis transport's tests: Python kombu's side (declares, consumes).
const REDIS_INTEROP_PY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/transports/redis/tests/interop/redis_interop.py"
);

/// A Redis URL whose `global_keyprefix` is `prefix` (Python kombu's side uses the same one).
fn redis_url_with_prefix(prefix: &str) -> String {
    format!("redis://127.0.0.1:6379/0?global_keyprefix={prefix}")
}

/// Runs a command of `redis_interop.py` under `prefix`; returns its stdout.
fn redis_interop_py(python: &Path, prefix: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(python)
        .arg(REDIS_INTEROP_PY)
        .arg(args[0])
        .arg(prefix)
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "redis_interop.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Deletes the `kombu publish` queues and exchanges a test made on a shared broker.
fn delete_entities(url: &str, queues: &[&str], exchanges: &[&str]) {
    for q in queues {
        kombu(url).args(["delete", "queue", q]).assert().success();
    }
    for x in exchanges {
        kombu(url)
            .args(["delete", "exchange", x])
            .assert()
            .success();
    }
}

#[test]
fn publish_reaches_a_queue_python_kombu_declared_on_redis() {
    let Some(python) = kombu_core::conformance::support::python() else {
        return;
    };
    let prefix = format!("cli-py-{}:", uuid::Uuid::new_v4().simple());
    let url = redis_url_with_prefix(&prefix);
    // Python kombu declares `pyd` bound to its direct exchange `py.direct`: a binding only, no
    // list, nothing in kombu-rs's registry.
    redis_interop_py(&python, &prefix, &["bind"]);
    let out = kombu(&url)
        .args(["publish", "--routing-key", "pyd", "--mandatory"])
        .arg(r#"{"from": "cli"}"#)
        .assert()
        .success()
        .get_output()
        .clone();
    assert_eq!(
        stderr_of(&out),
        "",
        "no warning for a queue Python declared"
    );
    assert_eq!(size(&url, "pyd"), 1);
    let got: Value =
        serde_json::from_str(redis_interop_py(&python, &prefix, &["consume", "pyd", "1"]).trim())
            .unwrap();
    assert!(got.to_string().contains("cli"), "{got}");
}

#[test]
fn publish_reaches_a_celery_workers_queue_on_redis() {
    use kombu_core::conformance::support::{
        CeleryWorker, await_recorded_task, celery_task_headers,
    };
    let Some(python) = kombu_core::conformance::support::python() else {
        return;
    };
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("cli-celery-{tag}:");
    let url = redis_url_with_prefix(&prefix);
    let app = r#"
import json
import os

from celery import Celery

app = Celery("kombu_rs_tasks", broker="redis://127.0.0.1:6379/0")
app.conf.broker_transport_options = {"global_keyprefix": os.environ["KOMBU_RS_PREFIX"]}
app.conf.worker_hijack_root_logger = False
app.conf.broker_connection_retry_on_startup = True


@app.task(name="kombu_rs.record", bind=True)
def record(self, path, a, b, *, label=None, nested=None):
    out = {
        "args": [a, b], "label": label, "nested": nested, "id": self.request.id,
        "root_id": self.request.root_id, "retries": self.request.retries,
        "delivery_info": self.request.delivery_info,
    }
    with open(path + ".tmp", "w") as f:
        json.dump(out, f)
    os.rename(path + ".tmp", path)
"#;
    // The worker's default queue, `celery`, bound to its direct exchange `celery`.
    let worker = CeleryWorker::start(
        &python,
        "cli-celery",
        app,
        "celery",
        &[("KOMBU_RS_PREFIX", &prefix)],
    );
    let guard = std::time::Duration::from_secs(60);
    let deadline = std::time::Instant::now() + guard;
    while !queue_exists(&url, "celery") {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker declared no queue:\n{}",
            worker.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let result = worker.dir().join("result.json");
    let path = result.to_str().unwrap();
    let task_id = uuid::Uuid::new_v4().to_string();
    let nested = json!({"list": [1, 2.5, "three", null], "map": {"k": "v"}});
    let mut cmd = kombu(&url);
    cmd.args([
        "publish",
        "--routing-key",
        "celery",
        "--correlation-id",
        &task_id,
    ]);
    let headers = celery_task_headers(
        "kombu_rs.record",
        &task_id,
        &format!("('{path}', 2, 3)"),
        "{}",
    );
    for (k, v) in headers.iter() {
        cmd.args([
            "--header",
            &format!("{k}={}", serde_json::to_string(v).unwrap()),
        ]);
    }
    let body = json!([[path, 2, 3], {"label": "from-rust", "nested": nested}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]);
    let out = cmd
        .arg(body.to_string())
        .assert()
        .success()
        .get_output()
        .clone();
    assert_eq!(stderr_of(&out), "", "no warning for the worker's queue");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(await_recorded_task(
            &result, guard, &task_id, "celery", &nested,
        ));
}

#[test]
fn publish_to_a_queue_that_exists_nowhere_is_stored_with_one_warning_or_refused() {
    let (_dir, urls) = every_broker();
    for url in &urls {
        let ghost = unique("ghost");
        let out = kombu(url)
            .args(["publish", "--routing-key", &ghost, "--count", "3", "1"])
            .output()
            .unwrap();
        let stderr = stderr_of(&out);
        if !url.starts_with("amqp") {
            // Redis and SQLite store it, as Python kombu does, and say so once.
            assert!(out.status.success(), "{url}: {stderr}");
            assert_eq!(stderr.matches("warning").count(), 1, "{stderr}");
            assert!(
                stderr.contains(&ghost) && stderr.contains("--mandatory"),
                "{stderr}"
            );
            assert_eq!(size(url, &ghost), 3);
            kombu(url)
                .args(["delete", "queue", &ghost])
                .assert()
                .success();
        } else {
            // RabbitMQ would drop it: an error, as before.
            assert_eq!(out.status.code(), Some(1), "{url}: {stderr}");
            assert!(
                stderr.contains(&ghost) && stderr.contains("--declare-queue"),
                "{stderr}"
            );
            assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        }
        // --mandatory: an error everywhere, and nothing created.
        let other = unique("ghost");
        let out = kombu(url)
            .args(["publish", "--routing-key", &other, "--mandatory", "1"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{url}");
        assert!(stderr_of(&out).contains(&other), "{}", stderr_of(&out));
        assert!(!queue_exists(url, &other), "{url}");
    }
    // memory:// would drop it too, and lives for one command: said so.
    kombu("memory://")
        .args(["publish", "--routing-key", "jobs", "1"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("one kombu command"));
    let help = stdout_of(bin().args(["publish", "--help"]));
    assert!(!help.contains("never drops"), "{help}");
    assert!(
        help.contains("--mandatory") && help.contains("Python kombu"),
        "{help}"
    );
}

#[test]
fn the_readme_sequence_works_on_rabbitmq_and_sqlite() {
    let (_dir, sqlite) = setup();
    for url in [sqlite.as_str(), AMQP_URL] {
        let jobs = unique("jobs");
        let logs = unique("logs");
        let errors = unique("errors");
        kombu(url)
            .args(["publish", "--routing-key", &jobs, "--declare-queue", &jobs])
            .arg(r#"{"id": 1, "item": "teapot"}"#)
            .assert()
            .success();
        kombu(url)
            .args(["publish", "--routing-key", &jobs, "--lines"])
            .write_stdin("1\n2\n3\n")
            .assert()
            .success();
        assert_eq!(size(url, &jobs), 4, "{url}");
        // `declare queue` declares what `publish --declare-queue` does: no conflict.
        kombu(url)
            .args(["declare", "queue", &jobs])
            .assert()
            .success();
        let peek =
            stdout_of(kombu(url).args(["consume", "--queue", &jobs, "--requeue", "--count", "1"]));
        assert_eq!(peek.lines().count(), 1, "{peek}");
        assert_eq!(
            consume_json(url, &jobs, 4)[0]["body"],
            json!({"id": 1, "item": "teapot"})
        );

        kombu(url)
            .args(["declare", "exchange", &logs, "--type", "topic"])
            .assert()
            .success();
        kombu(url)
            .args([
                "declare",
                "queue",
                &errors,
                "--exchange",
                &logs,
                "--routing-key",
                "*.error",
            ])
            .assert()
            .success();
        kombu(url)
            .args(["publish", "--exchange", &logs, "--exchange-type", "topic"])
            .args([
                "--routing-key",
                "app.error",
                "--header",
                "level=3",
                r#""disk full""#,
            ])
            .assert()
            .success();
        assert_eq!(size(url, &errors), 1, "{url}");
        delete_entities(url, &[&jobs, &errors], &[&logs]);
    }
}

#[test]
fn declared_entities_are_durable_unless_transient() {
    // On RabbitMQ a durable and a transient declaration of one name conflict, so this shows
    // what each command declares.
    let queue = unique("dur");
    kombu(AMQP_URL)
        .args(["declare", "queue", &queue])
        .assert()
        .success();
    // The same durable queue: fine; a transient one: refused.
    kombu(AMQP_URL)
        .args([
            "publish",
            "--routing-key",
            &queue,
            "--declare-queue",
            &queue,
            "1",
        ])
        .assert()
        .success();
    kombu(AMQP_URL)
        .args(["declare", "queue", &queue, "--transient"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("durable"));
    let exchange = unique("dur");
    kombu(AMQP_URL)
        .args([
            "declare",
            "exchange",
            &exchange,
            "--type",
            "fanout",
            "--transient",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("transient"));
    kombu(AMQP_URL)
        .args(["declare", "exchange", &exchange, "--type", "fanout"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("durable"));
    kombu(AMQP_URL)
        .args([
            "publish",
            "--exchange",
            &exchange,
            "--exchange-type",
            "fanout",
            "--transient",
            "1",
        ])
        .assert()
        .success();
    delete_entities(AMQP_URL, &[&queue], &[&exchange]);
}

#[test]
fn publish_to_an_existing_exchange_uses_it_as_it_is() {
    let (_dir, urls) = every_broker();
    for url in &urls {
        let exchange = unique("logs");
        let queue = unique("errors");
        kombu(url)
            .args([
                "declare",
                "exchange",
                &exchange,
                "--type",
                "topic",
                "--transient",
            ])
            .assert()
            .success();
        kombu(url)
            .args([
                "declare",
                "queue",
                &queue,
                "--exchange",
                &exchange,
                "--routing-key",
                "*.error",
            ])
            .assert()
            .success();
        // No --exchange-type: a topic exchange, and transient, whatever publish would declare.
        kombu(url)
            .args([
                "publish",
                "--exchange",
                &exchange,
                "--routing-key",
                "app.error",
                "1",
            ])
            .assert()
            .success();
        assert_eq!(size(url, &queue), 1, "{url}");
        // With --exchange-type, it must be that type.
        kombu(url)
            .args([
                "publish",
                "--exchange",
                &exchange,
                "--exchange-type",
                "direct",
            ])
            .args(["--routing-key", "app.error", "2"])
            .assert()
            .code(1)
            .stderr(predicate::str::contains("topic"));
        // A missing exchange is declared, direct, with --declare-queue bound to it.
        let fresh = unique("fresh");
        let bound = unique("bound");
        kombu(url)
            .args([
                "publish",
                "--exchange",
                &fresh,
                "--routing-key",
                "k",
                "--declare-queue",
                &bound,
                "3",
            ])
            .assert()
            .success()
            .stdout(predicate::str::contains("(direct)"));
        assert_eq!(size(url, &bound), 1, "{url}");
        delete_entities(url, &[&queue, &bound], &[&exchange, &fresh]);
    }
}

#[test]
fn size_and_purge_of_a_missing_queue_fail_the_same_way_everywhere() {
    let (_dir, urls) = every_broker();
    for url in &urls {
        let missing = unique("missing");
        for command in ["size", "purge"] {
            let out = kombu(url).args([command, &missing]).output().unwrap();
            let stderr = stderr_of(&out);
            assert_eq!(out.status.code(), Some(1), "{url} {command}: {stderr}");
            assert!(out.stdout.is_empty(), "{url} {command}");
            assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
            assert!(
                stderr.contains(&format!("queue \"{missing}\" does not exist on"))
                    && stderr.contains("kombu declare queue"),
                "{stderr}"
            );
        }
        // A queue that exists and is empty: 0.
        kombu(url)
            .args(["declare", "queue", &missing])
            .assert()
            .success();
        assert_eq!(size(url, &missing), 0, "{url}");
        kombu(url)
            .args(["delete", "queue", &missing])
            .assert()
            .success();
    }
    let help = stdout_of(bin().args(["size", "--help"]));
    assert!(help.contains("exists nowhere is an error"), "{help}");
}

#[test]
fn priority_is_not_called_ineffective_on_redis() {
    let url = redis_url();
    kombu(&url)
        .args(["declare", "queue", "p"])
        .assert()
        .success();
    for (priority, body) in [("9", r#""low""#), ("0", r#""high""#)] {
        let out = kombu(&url)
            .args([
                "publish",
                "--routing-key",
                "p",
                "--priority",
                priority,
                body,
            ])
            .assert()
            .success()
            .get_output()
            .clone();
        assert_eq!(stderr_of(&out), "", "no warning: kombu's buckets honour it");
    }
    // It has an effect: kombu's buckets, lower numbers first.
    let bodies: Vec<Value> = consume_json(&url, "p", 2)
        .into_iter()
        .map(|m| m["body"].clone())
        .collect();
    assert_eq!(bodies, [json!("high"), json!("low")]);
    // SQLite has no priorities: still said.
    let (_dir, sqlite) = setup();
    kombu(&sqlite)
        .args([
            "publish",
            "--routing-key",
            "p",
            "--declare-queue",
            "p",
            "--priority",
            "3",
            "1",
        ])
        .assert()
        .success()
        .stderr(predicate::str::contains("does not honour --priority"));
}

#[test]
fn summaries_of_declare_bind_and_publish_share_stdout() {
    let (_dir, url) = setup();
    let runs: [&[&str]; 6] = [
        &["declare", "exchange", "x", "--type", "direct"],
        &["declare", "queue", "q"],
        &["bind", "q", "x", "--routing-key", "k"],
        &["publish", "--exchange", "x", "--routing-key", "k", "1"],
        &["unbind", "q", "x", "--routing-key", "k"],
        &["publish", "--routing-key", "q", "2"],
    ];
    for args in runs {
        let out = kombu(&url)
            .args(args)
            .assert()
            .success()
            .get_output()
            .clone();
        let stdout = String::from_utf8(out.stdout.clone()).unwrap();
        assert_eq!(stdout.lines().count(), 1, "{args:?}: {stdout}");
        assert!(stdout.contains(&url), "{args:?}: {stdout}");
        assert_eq!(stderr_of(&out), "", "{args:?}");
    }
}

/// A `redis-server` of this test's own on a free loopback port (so that its statistics count
/// only what the test sent), killed when dropped.
struct PrivateRedis {
    child: std::process::Child,
    port: u16,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test installs it)");
        let server = PrivateRedis { child, port };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// How many times the server read from its clients' sockets: a round trip costs at least
    /// one, a pipelined batch one per socket buffer full.
    fn reads(&self) -> u64 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = redis::Client::open(self.url()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let info: String = redis::cmd("INFO")
                .arg("stats")
                .query_async(&mut conn)
                .await
                .unwrap();
            info.lines()
                .find_map(|l| l.strip_prefix("total_reads_processed:"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn bulk_publishing_takes_a_round_trip_per_batch_not_per_message() {
    const N: usize = 2000;
    let server = PrivateRedis::start();
    let url = server.url();
    kombu(&url)
        .args(["declare", "queue", "bulk"])
        .assert()
        .success();
    let before = server.reads();
    kombu(&url)
        .args([
            "publish",
            "--routing-key",
            "bulk",
            "--count",
            &N.to_string(),
        ])
        .arg(r#"{"n": 1}"#)
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("published {N} messages")));
    let lines: String = (0..N).map(|i| format!("{i}\n")).collect();
    kombu(&url)
        .args(["publish", "--routing-key", "bulk", "--lines", "--mandatory"])
        .write_stdin(lines)
        .assert()
        .success();
    let reads = server.reads() - before;
    assert_eq!(size(&url, "bulk"), 2 * N as u64);
    // One by one, each message would be a read of its own (2N); in batches, a few per batch.
    assert!(
        reads < (N / 4) as u64,
        "{reads} socket reads for {} messages",
        2 * N
    );
}

/// A Redis URL under a key prefix of its own (the server scripts/test starts on 6379).
fn redis_url() -> String {
    format!(
        "redis://127.0.0.1:6379/0?global_keyprefix=cli-{}:",
        uuid::Uuid::new_v4().simple()
    )
}

#[test]
fn redis_publish_consume_move_and_bench() {
    let url = redis_url();
    kombu(&url)
        .args(["declare", "queue", "jobs"])
        .assert()
        .success();
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
    kombu(&sqlite)
        .args(["declare", "queue", "jobs"])
        .assert()
        .success();
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
fn connection_refused_names_the_url_without_its_password() {
    kombu("redis://user:hunter2@127.0.0.1:1/0")
        .args(["size", "jobs"])
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("127.0.0.1:1")
                .and(predicate::str::contains("hunter2").not())
                .and(predicate::str::contains("refused")),
        );
}

// --- Issue 13: consume, bench, move and errors as a new user meets them. ---

/// The RabbitMQ scripts/test starts.
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672//";

/// A queue name of its own for a test on a shared broker.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// One broker of each kind that keeps queues between commands: a SQLite file, Redis, RabbitMQ.
/// The `TempDir` holds the SQLite file.
fn every_broker() -> (TempDir, Vec<String>) {
    let (dir, sqlite) = setup();
    (dir, vec![sqlite, redis_url(), AMQP_URL.to_owned()])
}

/// Runs `f` with a connection to `url` through the library, on a runtime of its own.
fn with_connection<T>(url: &str, f: impl AsyncFnOnce(&kombu::Connection) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = kombu::Connection::open(url).await.unwrap();
        let out = f(&conn).await;
        conn.close().await.unwrap();
        out
    })
}

/// Puts `message` on `queue` (declared) as another producer (a Python service) would.
fn put_message(url: &str, queue: &str, message: kombu::Message) {
    with_connection(url, async |conn| {
        conn.declare_queue(&kombu::Queue::new(queue)).await.unwrap();
        conn.default_channel()
            .publish(kombu::Outgoing {
                exchange: String::new(),
                routing_key: queue.to_owned(),
                message,
                mandatory: false,
            })
            .await
            .unwrap();
    })
}

fn queue_exists(url: &str, queue: &str) -> bool {
    with_connection(url, async |conn| conn.queue_exists(queue).await.unwrap())
}

/// A message with `content_type`, as Python kombu would write it with that serializer.
fn message_of(content_type: &'static str, body: &[u8]) -> kombu::Message {
    kombu::Message {
        body: body.to_vec().into(),
        content_type: Some(content_type.into()),
        content_encoding: Some("binary".into()),
        ..kombu::Message::default()
    }
}

/// `pickle.dumps({"b": b"\x01\x02\xff", "n": 1}, protocol=4)`, as Python 3 writes it.
const PICKLE_BYTES: &[u8] =
    b"\x80\x04\x95\x15\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01b\x94C\x03\x01\x02\xff\x94\x8c\x01n\x94K\x01u.";

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

#[test]
fn peeking_takes_only_the_messages_it_prints() {
    let (_dir, urls) = every_broker();
    for url in &urls {
        let queue = unique("peek");
        kombu(url)
            .args(["declare", "queue", &queue])
            .assert()
            .success();
        kombu(url)
            .args(["publish", "--routing-key", &queue, "--lines"])
            .write_stdin("1\n2\n3\n4\n")
            .assert()
            .success();
        let out = stdout_of(kombu(url).args([
            "consume",
            "--queue",
            &queue,
            "--requeue",
            "--count",
            "2",
            "--format",
            "body",
        ]));
        assert_eq!(out, "1\n2\n", "{url}");
        let all = consume_json(url, &queue, 4);
        for m in &all {
            // Only the peeked messages were delivered before.
            let peeked = m["body"] == 1 || m["body"] == 2;
            assert_eq!(m["delivery_info"]["redelivered"], peeked, "{url}: {m}");
        }
        // They keep their places, in order.
        let bodies: Vec<&Value> = all.iter().map(|m| &m["body"]).collect();
        assert_eq!(
            bodies,
            [&json!(1), &json!(2), &json!(3), &json!(4)],
            "{url}"
        );
        kombu(url)
            .args(["delete", "queue", &queue])
            .assert()
            .success();
    }
}

#[test]
fn raw_and_base64_formats_print_any_body_undecoded() {
    let (_dir, url) = setup();
    kombu(&url)
        .args(["declare", "queue", "blobs"])
        .assert()
        .success();
    kombu(&url)
        .args([
            "publish",
            "--routing-key",
            "blobs",
            "--serializer",
            "raw",
            "--compression",
            "zlib",
        ])
        .write_stdin(vec![0u8, 159, 255])
        .assert()
        .success();
    // A pickled message: not accepted by default, shown anyway by raw and base64.
    put_message(
        &url,
        "blobs",
        message_of("application/x-python-serialize", PICKLE_BYTES),
    );
    kombu(&url)
        .args([
            "consume",
            "--queue",
            "blobs",
            "--count",
            "2",
            "--requeue",
            "--format",
            "base64",
        ])
        .assert()
        .success()
        .stdout(format!(
            "AJ//\n{}\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, PICKLE_BYTES)
        ));
    let out = kombu(&url)
        .args([
            "consume", "--queue", "blobs", "--count", "2", "--format", "raw",
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(out, [&[0u8, 159, 255][..], PICKLE_BYTES].concat());
    assert_eq!(size(&url, "blobs"), 0);
}

// Reads pickle, which the binary has only with the `pickle` feature (scripts/test: all).
#[cfg(feature = "pickle")]
#[test]
fn bytes_inside_decoded_bodies_are_shown_as_base64() {
    let (_dir, url) = setup();
    // msgpack {"b": bin(01 02 ff)}.
    put_message(
        &url,
        "bytes",
        message_of(
            "application/x-msgpack",
            &[0x81, 0xa1, b'b', 0xc4, 0x03, 0x01, 0x02, 0xff],
        ),
    );
    // kombu's JSON tags for bytes: valid UTF-8 as text, the rest as base64.
    kombu(&url)
        .args(["publish", "--routing-key", "bytes"])
        .arg(
            r#"{"b": {"__type__": "bytes", "__value__": "hi"}, "c": {"__type__": "base64", "__value__": "AQL/"}}"#,
        )
        .assert()
        .success();
    put_message(
        &url,
        "bytes",
        message_of("application/x-python-serialize", PICKLE_BYTES),
    );
    let out = stdout_of(kombu(&url).args([
        "consume",
        "--queue",
        "bytes",
        "--count",
        "3",
        "--timeout",
        "5",
        "--accept",
        "msgpack",
        "--accept",
        "json",
        "--accept",
        "pickle",
    ]));
    let bodies: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["body"].clone())
        .collect();
    assert_eq!(
        bodies,
        [
            json!({"b": "AQL/"}),
            json!({"b": "aGk=", "c": "AQL/"}),
            json!({"b": "AQL/", "n": 1}),
        ]
    );
}

#[test]
fn max_size_lets_a_large_compressed_message_through() {
    let (_dir, url) = setup();
    let big = kombu::serializers::DEFAULT_MAX_DECOMPRESSED_SIZE + 1024;
    kombu(&url)
        .args([
            "publish",
            "--routing-key",
            "big",
            "--declare-queue",
            "big",
            "--serializer",
            "raw",
            "--compression",
            "zstd",
        ])
        .write_stdin(vec![7u8; big])
        .assert()
        .success();
    // Past the default bound: refused, put back, and the error says what to raise.
    let out = kombu(&url)
        .args([
            "consume",
            "--queue",
            "big",
            "--count",
            "1",
            "--timeout",
            "5",
        ])
        .assert()
        .code(1)
        .get_output()
        .clone();
    assert!(
        stderr_of(&out).contains("--max-size"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(size(&url, "big"), 1);
    let out = kombu(&url)
        .args([
            "consume",
            "--queue",
            "big",
            "--count",
            "1",
            "--timeout",
            "5",
            "--format",
            "raw",
            "--max-size",
            &(big + 1).to_string(),
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(out.len(), big);
    assert!(out.iter().all(|b| *b == 7));
}

// Reads pickle, which the binary has only with the `pickle` feature (scripts/test: all).
#[cfg(feature = "pickle")]
#[test]
fn consume_accepts_pickle_only_when_asked() {
    let (_dir, url) = setup();
    put_message(
        &url,
        "py",
        message_of("application/x-python-serialize", PICKLE_BYTES),
    );
    let out = kombu(&url)
        .args(["consume", "--queue", "py", "--count", "1", "--timeout", "5"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    assert!(stderr_of(&out).contains("refused"), "{}", stderr_of(&out));
    assert!(out.stdout.is_empty());
    assert_eq!(size(&url, "py"), 1);
    let [m] = serde_json::from_str::<Value>(&stdout_of(kombu(&url).args([
        "consume",
        "--queue",
        "py",
        "--count",
        "1",
        "--timeout",
        "5",
        "--accept",
        "pickle",
    ])))
    .map(|m| [m])
    .unwrap();
    assert_eq!(m["body"], json!({"b": "AQL/", "n": 1}));
}

#[test]
fn errors_are_one_line_even_with_rust_backtrace_set() {
    for (url, shown) in [
        ("redis://127.0.0.1:1/0", "redis://127.0.0.1:1/0"),
        (
            "amqp://guest:guest@127.0.0.1:1//",
            "amqp://guest:**@127.0.0.1:1//",
        ),
    ] {
        let out = kombu(url)
            .env("RUST_BACKTRACE", "1")
            .args(["size", "jobs"])
            .assert()
            .code(1)
            .get_output()
            .clone();
        let stderr = stderr_of(&out);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(!stderr.contains("backtrace"), "{stderr}");
        // The URL once, the cause once.
        assert_eq!(stderr.matches("127.0.0.1:1").count(), 1, "{stderr}");
        assert!(stderr.contains(shown), "{stderr}");
        assert_eq!(stderr.matches("refused").count(), 1, "{stderr}");
        // --verbose is what asks for the details.
        let out = kombu(url)
            .args(["--verbose", "size", "jobs"])
            .assert()
            .code(1)
            .get_output()
            .clone();
        assert!(stderr_of(&out).lines().count() > 1, "{}", stderr_of(&out));
    }
}

#[test]
fn library_warnings_reach_stderr_and_rust_log_filters_them() {
    let (dir, sqlite) = setup();
    kombu(&sqlite)
        .args(["declare", "queue", "w"])
        .assert()
        .success();
    // The first URL is down: the library warns and fails over to the second.
    let failover = format!("redis://127.0.0.1:1/0;{sqlite}");
    let out = kombu(&failover)
        .args(["size", "w"])
        .assert()
        .success()
        .stdout("0\n")
        .get_output()
        .clone();
    assert!(
        stderr_of(&out).contains("trying the next URL"),
        "{}",
        stderr_of(&out)
    );
    let out = kombu(&failover)
        .env("RUST_LOG", "error")
        .args(["size", "w"])
        .assert()
        .success()
        .get_output()
        .clone();
    assert_eq!(stderr_of(&out), "");
    drop(dir);
}

/// A TCP proxy to `upstream` that holds everything the broker sends for `delay` before passing
/// it on: a slow network. Returns its port; it lives as long as the test process.
fn slow_proxy(upstream: &str, delay: std::time::Duration) -> u16 {
    use std::io::{Read as _, Write as _};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = upstream.to_owned();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { break };
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (Ok(mut from_client), Ok(mut to_server)) = (client.try_clone(), server.try_clone())
            else {
                continue;
            };
            let (mut from_server, mut to_client) = (server, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from_client, &mut to_server);
                let _ = to_server.shutdown(Shutdown::Write);
            });
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = from_server.read(&mut buf) {
                    std::thread::sleep(delay);
                    if to_client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to_client.shutdown(Shutdown::Write);
            });
        }
    });
    port
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

#[test]
fn consume_of_a_missing_queue_creates_nothing_without_declare() {
    let (_dir, urls) = every_broker();
    for url in &urls {
        let queue = unique("typo");
        let out = kombu(url)
            .args(["consume", "--queue", &queue, "--timeout", "1"])
            .assert()
            .code(1)
            .get_output()
            .clone();
        let stderr = stderr_of(&out);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&format!("queue {queue:?} does not exist"))
                && stderr.contains("--declare"),
            "{stderr}"
        );
        assert!(!queue_exists(url, &queue), "{url}");
        kombu(url)
            .args([
                "consume",
                "--queue",
                &queue,
                "--timeout",
                "0.2",
                "--declare",
            ])
            .assert()
            .code(3);
        assert!(queue_exists(url, &queue), "{url}");
        kombu(url)
            .args(["delete", "queue", &queue])
            .assert()
            .success();
    }
}

#[test]
fn priority_is_printed_the_same_way_on_every_transport() {
    let (_dir, urls) = every_broker();
    for url in &urls {
        let queue = unique("prio");
        kombu(url)
            .args(["declare", "queue", &queue])
            .assert()
            .success();
        kombu(url)
            .args(["publish", "--routing-key", &queue, "1"])
            .assert()
            .success();
        kombu(url)
            .args(["publish", "--routing-key", &queue, "--priority", "3", "2"])
            .assert()
            .success();
        let mut got: Vec<(Value, Value)> = consume_json(url, &queue, 2)
            .into_iter()
            .map(|m| (m["body"].clone(), m["properties"]["priority"].clone()))
            .collect();
        got.sort_by_key(|(body, _)| body.as_u64());
        assert_eq!(got, [(json!(1), json!(0)), (json!(2), json!(3))], "{url}");
        kombu(url)
            .args(["delete", "queue", &queue])
            .assert()
            .success();
    }
}

#[test]
fn the_default_url_is_announced_once_and_memory_says_it_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    bin()
        .current_dir(dir.path())
        .args(["declare", "queue", "d"])
        .assert()
        .success()
        .stderr("using sqlite://kombu.db (no --url or KOMBU_URL)\n");
    // An explicit URL says nothing.
    kombu(&sqlite_url(dir.path(), "other.db"))
        .args(["declare", "queue", "d"])
        .assert()
        .success()
        .stderr("");
    // What an earlier command declared on memory:// is gone; the error says why.
    kombu("memory://")
        .args(["declare", "queue", "m"])
        .assert()
        .success();
    for args in [
        &["consume", "--queue", "m", "--timeout", "1"][..],
        &["size", "m"][..],
    ] {
        let out = kombu("memory://")
            .args(args)
            .assert()
            .code(1)
            .get_output()
            .clone();
        let stderr = stderr_of(&out);
        assert!(
            stderr.contains("memory:// lives only as long as one kombu command"),
            "{args:?}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
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

    kombu(&from)
        .args(["declare", "queue", "jobs"])
        .assert()
        .success();
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

/// Consumes every message of `queues` (peeking them back) as `--format json` objects.
fn peek_json(url: &str, queues: &[&str], count: usize) -> Vec<Value> {
    let mut cmd = kombu(url);
    cmd.arg("consume");
    for q in queues {
        cmd.args(["--queue", q]);
    }
    let out = stdout_of(cmd.args(["--requeue", "--count", &count.to_string(), "--timeout", "5"]));
    let messages: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(messages.len(), count, "{url}: {out}");
    messages
}

#[test]
fn peeking_several_queues_takes_only_what_it_prints() {
    let (_dir, urls) = every_broker();
    for url in &urls {
        let a = unique("peek-a");
        let b = unique("peek-b");
        for (queue, lines) in [(&a, "1\n2\n"), (&b, "11\n12\n")] {
            kombu(url)
                .args(["declare", "queue", queue])
                .assert()
                .success();
            kombu(url)
                .args(["publish", "--routing-key", queue, "--lines"])
                .write_stdin(lines)
                .assert()
                .success();
        }
        // One message from two queues: the other queue's first message is not taken (a
        // consumer's prefetch of 1 is per queue on RabbitMQ).
        let mut printed: Vec<Value> = peek_json(url, &[&a, &b], 1)
            .iter()
            .map(|m| m["body"].clone())
            .collect();
        assert!(
            printed[0] == json!(1) || printed[0] == json!(11),
            "{url}: {printed:?}"
        );
        // Two: one from each queue, round robin, and nothing more.
        let two = peek_json(url, &[&a, &b], 2);
        let queues: Vec<&Value> = two.iter().map(|m| &m["delivery_info"]["queue"]).collect();
        assert_eq!(queues, [&json!(a), &json!(b)], "{url}");
        printed.extend(two.iter().map(|m| m["body"].clone()));

        let mut all = consume_json(url, &a, 2);
        all.extend(consume_json(url, &b, 2));
        for m in &all {
            // Only the printed messages were delivered before.
            let peeked = printed.contains(&m["body"]);
            assert_eq!(m["delivery_info"]["redelivered"], peeked, "{url}: {m}");
        }
        // They keep their places, in order.
        let bodies: Vec<&Value> = all.iter().map(|m| &m["body"]).collect();
        assert_eq!(
            bodies,
            [&json!(1), &json!(2), &json!(11), &json!(12)],
            "{url}"
        );
        delete_entities(url, &[&a, &b], &[]);
    }
}

/// `rabbitmqctl list_exchanges name durable` row of `exchange`: its durability, if it exists.
fn rabbitmq_exchange_durable(exchange: &str) -> Option<bool> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_exchanges",
            "name",
            "durable",
            "--no-table-headers",
            "--quiet",
        ])
        .output()
        .expect("rabbitmqctl (root on the broker's machine)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find_map(|l| {
            let (name, durable) = l.split_once('\t')?;
            (name == exchange).then(|| durable.trim() == "true")
        })
}

#[test]
fn publish_to_an_existing_exchange_declares_nothing() {
    let (_dir, urls) = every_broker();
    for url in &urls {
        let exchange = unique("events");
        let queue = unique("events-q");
        // Durable (the default), topic.
        kombu(url)
            .args(["declare", "exchange", &exchange, "--type", "topic"])
            .assert()
            .success();
        kombu(url)
            .args(["declare", "queue", &queue, "--exchange", &exchange])
            .args(["--routing-key", "*.error"])
            .assert()
            .success();
        // --transient for an exchange that exists: used as it is, said in one line.
        let out = kombu(url)
            .args([
                "publish",
                "--exchange",
                &exchange,
                "--routing-key",
                "app.error",
            ])
            .args(["--transient", "1"])
            .assert()
            .success()
            .get_output()
            .clone();
        let stderr = stderr_of(&out);
        let warnings: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("used as it is"))
            .collect();
        assert_eq!(warnings.len(), 1, "{url}: {stderr}");
        assert!(warnings[0].contains("--transient"), "{url}: {stderr}");
        // Without --transient, nothing to say.
        let out = kombu(url)
            .args([
                "publish",
                "--exchange",
                &exchange,
                "--routing-key",
                "app.error",
            ])
            .arg("2")
            .assert()
            .success()
            .get_output()
            .clone();
        assert!(!stderr_of(&out).contains("warning"), "{url}: {out:?}");
        assert_eq!(size(url, &queue), 2, "{url}");

        // A missing exchange is declared direct, transient when asked.
        let fresh = unique("fresh");
        kombu(url)
            .args(["publish", "--exchange", &fresh, "--routing-key", "k"])
            .args(["--transient", "3"])
            .assert()
            .success()
            .stdout(predicate::str::contains("(direct)"))
            .stderr(predicate::str::contains("warning").not());
        assert!(
            with_connection(url, async |conn| conn
                .exchange_exists(&fresh)
                .await
                .unwrap()),
            "{url}"
        );
        if url == AMQP_URL {
            // Unchanged, and the new one transient.
            assert_eq!(rabbitmq_exchange_durable(&exchange), Some(true));
            assert_eq!(rabbitmq_exchange_durable(&fresh), Some(false));
        }
        delete_entities(url, &[&queue], &[&exchange, &fresh]);
    }
}
