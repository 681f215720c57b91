//! `kombu consume` driven end to end as a user would: exit codes, `--requeue` (peeking) and
//! `--no-ack`, the output formats, `--accept` and `--max-size`, and a queue that does not exist.

mod cli_support;

use predicates::prelude::*;
use serde_json::{Value, json};

use cli_support::*;

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
    // 1: with --on-error stop, a message the accept list refuses stays in the queue, and the
    // error says so.
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
    let refusing = [
        "consume",
        "--queue",
        "q",
        "--count",
        "1",
        "--timeout",
        "0.5",
        "--accept",
        "json",
    ];
    kombu(&url)
        .args(refusing)
        .args(["--on-error", "stop"])
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("not accepted")
                .and(predicate::str::contains("left in the queue")),
        );
    assert_eq!(size(&url, "q"), 1);
    // By default it is dead-lettered (the timeout then runs out: 3); with --no-ack the broker
    // removed the message on delivery, and nothing claims it was put back.
    kombu(&url)
        .args(refusing)
        .arg("--no-ack")
        .assert()
        .code(3)
        .stderr(
            predicate::str::contains("dead-lettered to queue \"q.dlq\"")
                .and(predicate::str::contains("put back").not()),
        );
    assert_eq!(size(&url, "q"), 0);
    assert_eq!(size(&url, "q.dlq"), 1);
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
fn peeking_takes_only_the_messages_it_prints() {
    let (_dir, urls) = every_broker();
    for url in &urls {
        let queue = unique("peek");
        declare(url, &queue);
        publish_lines(url, &queue, "1\n2\n3\n4\n");
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
        delete_queue(url, &queue);
    }
}

#[test]
fn peeking_several_queues_takes_only_what_it_prints() {
    let (_dir, urls) = every_broker();
    for url in &urls {
        let a = unique("peek-a");
        let b = unique("peek-b");
        for (queue, lines) in [(&a, "1\n2\n"), (&b, "11\n12\n")] {
            declare(url, queue);
            publish_lines(url, queue, lines);
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

#[test]
fn raw_and_base64_formats_print_any_body_undecoded() {
    let (_dir, url) = setup();
    declare(&url, "blobs");
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
    // Past the default bound: refused, left in the queue (--on-error stop), and the error says
    // what to raise.
    let out = kombu(&url)
        .args([
            "consume",
            "--queue",
            "big",
            "--count",
            "1",
            "--timeout",
            "5",
            "--on-error",
            "stop",
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
        .args(["--on-error", "stop"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    assert!(
        stderr_of(&out).contains("not accepted"),
        "{}",
        stderr_of(&out)
    );
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
        delete_queue(url, &queue);
    }
}
