//! `kombu publish` driven end to end as a user would: serializers and compression, `--lines`
//! and `--count`, bulk publishing, priorities, publishing to queues and exchanges that exist or
//! not, and to queues Python kombu and Celery declared on Redis.

mod cli_support;

use predicates::prelude::*;
use serde_json::{Value, json};

use cli_support::*;

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
    delete_queue(&url, "jobs");
}

#[test]
fn every_serializer_and_compression_round_trips() {
    let (_dir, url) = setup();
    declare(&url, "codec");
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
fn publish_reaches_a_queue_python_kombu_declared_on_redis() {
    let Some(python) = kombu_test_support::python() else {
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
    use kombu_test_support::{CeleryWorker, await_recorded_task, celery_task_headers};
    let Some(python) = kombu_test_support::python() else {
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
            delete_queue(url, &ghost);
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
        declare_bound_queue(url, &queue, &exchange, "*.error");
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
fn publish_to_an_existing_exchange_declares_nothing() {
    let (_dir, urls) = every_broker();
    for url in &urls {
        let exchange = unique("events");
        let queue = unique("events-q");
        // Durable (the default), topic.
        declare_exchange(url, &exchange, "topic");
        declare_bound_queue(url, &queue, &exchange, "*.error");
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

#[test]
fn priority_is_not_called_ineffective_on_redis() {
    let url = redis_url();
    declare(&url, "p");
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
fn priority_is_printed_the_same_way_on_every_transport() {
    let (_dir, urls) = every_broker();
    for url in &urls {
        let queue = unique("prio");
        declare(url, &queue);
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
        delete_queue(url, &queue);
    }
}

#[test]
fn bulk_publishing_takes_a_round_trip_per_batch_not_per_message() {
    const N: usize = 2000;
    let server = PrivateRedis::start();
    let url = server.url();
    declare(&url, "bulk");
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
