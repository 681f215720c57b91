//! `kombu consume` follows the consumer's error policy (a message it cannot print is
//! dead-lettered, requeued or stops it, never put back at the head of its queue), its exit codes,
//! and `kombu dlq list` / `kombu dlq replay`.

mod cli_support;

use predicates::prelude::*;
use serde_json::{Value, json};

use cli_support::*;

/// Messages between good ones that `consume --accept json` cannot print: not accepted (yaml),
/// invalid JSON, an unknown content type. Returns the raw bodies of all five, in order.
fn publish_mixed(url: &str, queue: &str) -> Vec<(&'static str, Vec<u8>)> {
    declare(url, queue);
    let messages: Vec<(&'static str, Vec<u8>)> = vec![
        ("application/json", b"1".to_vec()),
        ("application/x-yaml", b"- 2\n".to_vec()),
        ("application/json", b"{not json".to_vec()),
        ("application/x-nope", b"\x00\x01".to_vec()),
        ("application/json", b"5".to_vec()),
    ];
    for (content_type, body) in &messages {
        put_message(url, queue, message_of(content_type, body));
    }
    messages
}

fn lines_of(out: &[u8]) -> Vec<Value> {
    String::from_utf8(out.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn poison_messages_are_dead_lettered_listed_and_replayed() {
    let (_dir, urls) = every_broker();
    for url in &urls {
        let queue = unique("poison");
        let dlq = format!("{queue}.dlq");
        let sent = publish_mixed(url, &queue);
        // --count counts the printed messages: both good ones, the three others dead-lettered
        // between them, one line each on stderr; exit 4.
        let out = kombu(url)
            .args([
                "consume",
                "--queue",
                &queue,
                "--count",
                "2",
                "--timeout",
                "5",
            ])
            .args(["--accept", "json", "--format", "body"])
            .assert()
            .code(4)
            .get_output()
            .clone();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n5\n", "{url}");
        let stderr = stderr_of(&out);
        assert_eq!(stderr.lines().count(), 3, "{url}: {stderr}");
        for line in stderr.lines() {
            assert!(
                line.starts_with(&format!(
                    "message from queue {queue:?} dead-lettered to queue {dlq:?}: "
                )),
                "{url}: {line}"
            );
        }
        assert!(
            stderr.contains("--accept its serializer"),
            "{url}: {stderr}"
        );
        assert_eq!(size(url, &queue), 0, "{url}");
        assert_eq!(size(url, &dlq), 3, "{url}");

        // list: all three, oldest first, left in place.
        let out = kombu(url)
            .args(["dlq", "list", &queue, "--format", "json"])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let listed = lines_of(&out);
        let types: Vec<&Value> = listed.iter().map(|m| &m["content_type"]).collect();
        assert_eq!(
            types,
            [
                &json!("application/x-yaml"),
                &json!("application/json"),
                &json!("application/x-nope")
            ],
            "{url}"
        );
        for m in &listed {
            assert_eq!(m["original_queue"], json!(queue), "{url}: {m}");
            assert_eq!(m["original_routing_key"], json!(queue), "{url}: {m}");
            assert!(
                m["reason"].as_str().is_some_and(|r| !r.is_empty()),
                "{url}: {m}"
            );
        }
        assert_eq!(listed[0]["body"], json!([2]), "{url}"); // yaml decodes for list
        assert_eq!(listed[1]["body_base64"], json!("e25vdCBqc29u"), "{url}");
        assert!(listed[1]["body_error"].is_string(), "{url}");
        assert_eq!(listed[2]["size"], json!(2), "{url}");
        let line = stdout_of(kombu(url).args(["dlq", "list", &queue]));
        assert_eq!(line.lines().count(), 3, "{url}: {line}");
        assert!(
            line.contains("from queue") && line.contains("bytes"),
            "{line}"
        );
        assert_eq!(size(url, &dlq), 3, "{url}");

        // replay: back to the queue byte for byte, without the dead-letter headers.
        kombu(url)
            .args(["dlq", "replay", &queue, "--count", "2"])
            .assert()
            .success()
            .stdout(predicate::str::contains("moved 2 messages"));
        kombu(url)
            .args(["dlq", "replay", &queue])
            .assert()
            .success()
            .stdout(predicate::str::contains("moved 1 message "));
        assert_eq!(size(url, &dlq), 0, "{url}");
        let out = kombu(url)
            .args([
                "consume",
                "--queue",
                &queue,
                "--count",
                "3",
                "--timeout",
                "5",
            ])
            .args(["--format", "json", "--accept", "yaml"])
            .args(["--accept", "json"])
            .args(["--on-error", "stop"])
            .assert()
            .code(1) // the invalid JSON, again
            .get_output()
            .clone();
        assert!(
            stderr_of(&out).contains("left in the queue"),
            "{}",
            stderr_of(&out)
        );
        let out = kombu(url)
            .args([
                "consume",
                "--queue",
                &queue,
                "--count",
                "2",
                "--timeout",
                "5",
            ])
            .args(["--format", "base64"])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let mut again: Vec<String> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let want: Vec<String> = sent[1..4]
            .iter()
            .map(|(_, b)| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b))
            .collect();
        // The yaml message was printed (and acked) by the consume above; the stopped one went
        // back with the one prefetched after it (on Redis, to the head, in either order).
        again.sort();
        let mut want = want[1..].to_vec();
        want.sort();
        assert_eq!(again, want, "{url}");
        delete_entities(url, &[&queue, &dlq], &[]);
    }
}

#[test]
fn replayed_messages_keep_their_headers_but_not_the_dead_letter_ones() {
    let (_dir, url) = setup();
    kombu(&url)
        .args(["publish", "--routing-key", "h", "--declare-queue", "h"])
        .args(["--serializer", "yaml", "--header", "tenant=acme", "[1]"])
        .assert()
        .success();
    kombu(&url)
        .args([
            "consume",
            "--queue",
            "h",
            "--timeout",
            "0.3",
            "--accept",
            "json",
        ])
        .assert()
        .code(3);
    kombu(&url).args(["dlq", "replay", "h"]).assert().success();
    let out = stdout_of(kombu(&url).args([
        "consume", "--queue", "h", "--count", "1", "--accept", "yaml",
    ]));
    let m: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(m["body"], json!([1]));
    assert_eq!(m["content_type"], json!("application/x-yaml"));
    assert_eq!(m["headers"], json!({"tenant": "acme"}));
}

#[test]
fn exit_codes_timeout_wins_and_all_good_is_zero() {
    let (_dir, url) = setup();
    declare(&url, "q");
    put_message(&url, "q", message_of("application/json", b"{bad"));
    // Dead-lettered, then the timeout ran out: 3.
    kombu(&url)
        .args(["consume", "--queue", "q", "--timeout", "0.3"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("dead-lettered to queue \"q.dlq\""));
    publish_lines(&url, "q", "1\n2\n");
    kombu(&url)
        .args(["consume", "--queue", "q", "--count", "2", "--timeout", "5"])
        .assert()
        .code(0)
        .stderr("");
}

#[test]
fn on_error_stop_leaves_the_message_and_exits_1() {
    let (_dir, url) = setup();
    declare(&url, "s");
    put_message(&url, "s", message_of("application/json", b"{bad"));
    publish_lines(&url, "s", "2\n");
    kombu(&url)
        .args(["consume", "--queue", "s", "--count", "1", "--timeout", "5"])
        .args(["--on-error", "stop"])
        .assert()
        .code(1)
        .stdout("")
        .stderr(predicate::str::contains(
            "left in the queue (--on-error stop)",
        ));
    assert_eq!(size(&url, "s"), 2);
    assert!(!queue_exists(&url, "s.dlq"));
}

#[test]
fn on_error_requeue_retries_then_dead_letters() {
    let (_dir, url) = setup();
    declare(&url, "r");
    put_message(&url, "r", message_of("application/json", b"{bad"));
    let out = kombu(&url)
        .args(["consume", "--queue", "r", "--timeout", "0.5"])
        .args(["--on-error", "requeue", "--max-redeliveries", "2"])
        .assert()
        .code(3)
        .get_output()
        .clone();
    let stderr = stderr_of(&out);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines[0].contains("requeued at the end of the queue (try 1 of 2)"),
        "{stderr}"
    );
    assert!(lines[1].contains("(try 2 of 2)"), "{stderr}");
    assert!(
        lines[2].contains("dead-lettered to queue \"r.dlq\"")
            && lines[2].contains("given up after 2"),
        "{stderr}"
    );
    assert_eq!(size(&url, "r"), 0);
    assert_eq!(size(&url, "r.dlq"), 1);
}

#[test]
fn no_ack_is_never_described_as_put_back() {
    let (_dir, url) = setup();
    declare(&url, "n");
    put_message(&url, "n", message_of("application/x-yaml", b"- 1\n"));
    publish_lines(&url, "n", "2\n");
    let out = kombu(&url)
        .args([
            "consume",
            "--queue",
            "n",
            "--count",
            "1",
            "--timeout",
            "5",
            "--no-ack",
        ])
        .args(["--accept", "json", "--format", "body"])
        .assert()
        .code(4)
        .get_output()
        .clone();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2\n");
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("dead-lettered to queue \"n.dlq\""),
        "{stderr}"
    );
    assert!(!stderr.contains("put back"), "{stderr}");
    assert_eq!(size(&url, "n.dlq"), 1);
    // stop with --no-ack: published again, and said so.
    kombu(&url).args(["dlq", "replay", "n"]).assert().success();
    kombu(&url)
        .args([
            "consume",
            "--queue",
            "n",
            "--count",
            "1",
            "--timeout",
            "5",
            "--no-ack",
        ])
        .args(["--accept", "json", "--on-error", "stop"])
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("--no-ack")
                .and(predicate::str::contains("published again"))
                .and(predicate::str::contains("put back").not()),
        );
    assert_eq!(size(&url, "n"), 1);
}

#[test]
fn a_peek_moves_nothing() {
    let (_dir, url) = setup();
    declare(&url, "p");
    put_message(&url, "p", message_of("application/json", b"{bad"));
    publish_lines(&url, "p", "2\n");
    let out = kombu(&url)
        .args([
            "consume",
            "--queue",
            "p",
            "--count",
            "1",
            "--timeout",
            "5",
            "--requeue",
        ])
        .args(["--format", "body"])
        .assert()
        .code(0)
        .get_output()
        .clone();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2\n");
    assert!(
        stderr_of(&out).contains("left in the queue"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(size(&url, "p"), 2);
    assert!(!queue_exists(&url, "p.dlq"));
}

#[test]
fn dlq_of_a_queue_without_dead_letters() {
    let (_dir, url) = setup();
    declare(&url, "e");
    kombu(&url)
        .args(["dlq", "list", "e"])
        .assert()
        .success()
        .stdout("")
        .stderr(predicate::str::contains("no dead letters"));
    kombu(&url)
        .args(["dlq", "replay", "e"])
        .assert()
        .success()
        .stdout(predicate::str::contains("moved 0 messages"));
}

#[test]
fn bodies_that_do_not_decompress_are_dead_lettered() {
    let (_dir, url) = setup();
    declare(&url, "z");
    // A truncated zlib stream, and a body past --max-size once decompressed.
    let mut truncated = message_of("application/json", b"\x78\x9c\xcb\x48\xcd");
    truncated.headers.insert(
        "compression".to_owned(),
        kombu::Value::from("application/x-gzip"),
    );
    put_message(&url, "z", truncated);
    kombu(&url)
        .args(["publish", "--routing-key", "z", "--serializer", "raw"])
        .args(["--compression", "zstd"])
        .write_stdin(vec![0u8; 4096])
        .assert()
        .success();
    publish_lines(&url, "z", "3\n");
    let out = kombu(&url)
        .args(["consume", "--queue", "z", "--count", "1", "--timeout", "5"])
        .args(["--max-size", "1024", "--format", "body"])
        .assert()
        .code(4)
        .get_output()
        .clone();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "3\n");
    let stderr = stderr_of(&out);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("dead-lettered to queue \"z.dlq\"")),
        "{stderr}"
    );
    assert!(
        lines[1].ends_with("; raise --max-size to read it"),
        "{stderr}"
    );
    assert_eq!(size(&url, "z.dlq"), 2);
    // Replayed, the large one is printed with a larger bound, byte for byte.
    kombu(&url).args(["dlq", "replay", "z"]).assert().success();
    let out = kombu(&url)
        .args(["consume", "--queue", "z", "--count", "1", "--timeout", "5"])
        .args(["--format", "raw"])
        .assert()
        .code(4) // the truncated one again
        .get_output()
        .stdout
        .clone();
    assert_eq!(out, vec![0u8; 4096]);
}

#[test]
fn dead_letter_exchange_and_its_queue() {
    let (_dir, url) = setup();
    declare(&url, "jobs");
    declare_exchange(&url, "dead", "direct");
    declare_bound_queue(&url, "dead-jobs", "dead", "jobs");
    put_message(&url, "jobs", message_of("application/json", b"{bad"));
    kombu(&url)
        .args(["consume", "--queue", "jobs", "--timeout", "0.3"])
        .args(["--dead-letter-exchange", "dead"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains(
            "dead-lettered to exchange \"dead\" (routing key \"jobs\")",
        ));
    assert_eq!(size(&url, "dead-jobs"), 1);
    let listed = lines_of(
        &kombu(&url)
            .args([
                "dlq",
                "list",
                "jobs",
                "--dlq",
                "dead-jobs",
                "--format",
                "json",
            ])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone(),
    );
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["original_queue"], json!("jobs"));
    kombu(&url)
        .args(["dlq", "replay", "jobs", "--dlq", "dead-jobs"])
        .assert()
        .success()
        .stdout(predicate::str::contains("moved 1 message "));
    assert_eq!(size(&url, "jobs"), 1);
}

#[test]
fn unreadable_redis_entries_are_reported_and_not_replayed() {
    let url = redis_url();
    let queue = unique("unreadable");
    declare(&url, &queue);
    publish_lines(&url, &queue, "1\n");
    let prefix = url.split("global_keyprefix=").nth(1).unwrap().to_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = redis::Client::open("redis://127.0.0.1:6379/0").unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        // kombu pushes on the left and pops on the right: this one is taken first.
        let _: () = redis::cmd("RPUSH")
            .arg(format!("{prefix}{queue}"))
            .arg("not an envelope")
            .query_async(&mut conn)
            .await
            .unwrap();
    });
    let out = kombu(&url)
        .args([
            "consume",
            "--queue",
            &queue,
            "--count",
            "1",
            "--timeout",
            "5",
        ])
        .args(["--format", "body"])
        .assert()
        .code(4)
        .get_output()
        .clone();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");
    let stderr = stderr_of(&out);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("unreadable envelope"), "{stderr}");
    let dlq = format!("{queue}.dlq");
    let listed = lines_of(
        &kombu(&url)
            .args(["dlq", "list", &queue, "--format", "json"])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone(),
    );
    assert_eq!(listed[0]["transport"], json!("redis"));
    assert_eq!(listed[0]["body"], json!("not an envelope"));
    kombu(&url)
        .args(["dlq", "replay", &queue])
        .assert()
        .success()
        .stdout(predicate::str::contains("moved 0 messages"))
        .stderr(predicate::str::contains("skipped"));
    assert_eq!(size(&url, &dlq), 1);
    delete_entities(&url, &[&queue, &dlq], &[]);
}

#[test]
fn too_deep_and_pickled_bodies_are_dead_lettered() {
    let (_dir, url) = setup();
    declare(&url, "d");
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    put_message(&url, "d", message_of("application/json", deep.as_bytes()));
    put_message(
        &url,
        "d",
        message_of("application/x-python-serialize", PICKLE_BYTES),
    );
    publish_lines(&url, "d", "3\n");
    let out = kombu(&url)
        .args(["consume", "--queue", "d", "--count", "1", "--timeout", "5"])
        .args(["--format", "body"])
        .assert()
        .code(4)
        .get_output()
        .clone();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "3\n");
    let stderr = stderr_of(&out);
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
    assert_eq!(size(&url, "d.dlq"), 2);
}
