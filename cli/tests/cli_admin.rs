//! `kombu declare`, `bind`, `unbind`, `size`, `purge` and `delete` driven end to end as a user
//! would: exchange routing, durability, the README's sequence, missing queues and the one-line
//! summaries on stdout.

mod cli_support;

use predicates::prelude::*;
use serde_json::{Value, json};

use cli_support::*;

#[test]
fn topic_exchange_routing_with_bind_and_unbind() {
    let (_dir, url) = setup();
    declare_exchange(&url, "logs", "topic");
    declare_bound_queue(&url, "errors", "logs", "*.error");
    declare(&url, "everything");
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
    declare_exchange(&url, "alerts", "headers");
    for q in ["both", "either"] {
        declare(&url, q);
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
        publish_lines(url, &jobs, "1\n2\n3\n");
        assert_eq!(size(url, &jobs), 4, "{url}");
        // `declare queue` declares what `publish --declare-queue` does: no conflict.
        declare(url, &jobs);
        let peek =
            stdout_of(kombu(url).args(["consume", "--queue", &jobs, "--requeue", "--count", "1"]));
        assert_eq!(peek.lines().count(), 1, "{peek}");
        assert_eq!(
            consume_json(url, &jobs, 4)[0]["body"],
            json!({"id": 1, "item": "teapot"})
        );

        declare_exchange(url, &logs, "topic");
        declare_bound_queue(url, &errors, &logs, "*.error");
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
    declare(AMQP_URL, &queue);
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
        declare(url, &missing);
        assert_eq!(size(url, &missing), 0, "{url}");
        delete_queue(url, &missing);
    }
    let help = stdout_of(bin().args(["size", "--help"]));
    assert!(help.contains("exists nowhere is an error"), "{help}");
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
