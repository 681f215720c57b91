//! Hostile input, end to end: raw clients (the `redis` crate's LPUSH, rusqlite INSERTs, lapin's
//! basic_publish) place each broken or malicious message between two good ones; `kombu
//! consume`, run as a process of its own, must print every good message in order, move each
//! hostile one to `<queue>.dlq` byte for byte, never panic, and keep its peak RSS (VmHWM) under
//! 4x the decompression bound. On RabbitMQ also a message whose header tables nest 2,000 deep
//! (py-amqp publishes it): delivered, the deeper levels left out, where it used to abort every
//! consumer with a stack overflow. Decompression bombs are 256 MiB here
//! (`KOMBU_HOSTILE_BOMB_MIB=1024 scripts/soak` runs them at 1 GiB).
//!
//! Each test prints its rows of the table of where each case ended up (`--nocapture`).

mod cli_support;
mod hostile_support;

use hostile_support::*;
use kombu::dead_letter::dlq_name;

fn report(rows: &[String]) {
    for row in rows {
        println!("{row}");
    }
}

fn assert_not_pwned(marker: &std::path::Path) {
    assert!(
        !marker.exists(),
        "the pickle's os.system ran: {} exists",
        marker.display()
    );
}

#[test]
fn redis_hostile_entries_are_dead_lettered_and_good_ones_delivered() {
    let url = cli_support::redis_url();
    let prefix = url
        .split("global_keyprefix=")
        .nth(1)
        .expect("a key prefix")
        .to_owned();
    let queue = cli_support::unique("hostile");
    let marker = pwned_marker(&queue);
    let mut cases = body_cases(&marker);
    cases.extend(envelope_cases(&queue));
    let cases = interleave(cases);
    cli_support::declare(&url, &queue);
    let client = redis::Client::open("redis://127.0.0.1:6379/0").expect("redis client");
    let mut raw = client.get_connection().expect("connect to Redis");
    for case in &cases {
        let bytes = match &case.placed {
            Placed::Message(body) => envelope(&queue, body),
            Placed::Raw(raw) | Placed::Blob(raw) => raw.clone(),
            Placed::DeepHeaders(..) => unreachable!("AMQP only"),
        };
        // kombu's Redis queue: LPUSH onto the queue's list, consumers take from the right.
        redis::cmd("LPUSH")
            .arg(format!("{prefix}{queue}"))
            .arg(bytes)
            .exec(&mut raw)
            .expect("LPUSH");
    }
    let run = consume(&url, &queue, delivered(&cases));
    let dead = drain(&url, &dlq_name(&queue));
    let rows = check("redis", &cases, &run, &dead);
    assert_not_pwned(&marker);
    report(&rows);
}

#[test]
fn sqlite_hostile_rows_are_dead_lettered_and_good_ones_delivered() {
    let (dir, url) = cli_support::setup();
    let queue = "hostile";
    let marker = pwned_marker(&cli_support::unique("sqlite"));
    let mut cases = body_cases(&marker);
    cases.extend(envelope_cases(queue));
    cases.push(Case {
        name: "a BLOB payload",
        placed: Placed::Blob(b"\x00\x01\xfe\xff a blob".to_vec()),
        delivered: false,
    });
    cases.push(Case {
        name: "text that is not UTF-8",
        placed: Placed::Raw(b"{\"body\": \"\xff\xfe\xfd\"}".to_vec()),
        delivered: false,
    });
    let cases = interleave(cases);
    cli_support::declare(&url, queue);
    let db = rusqlite::Connection::open(dir.path().join("broker.db")).expect("open the file");
    db.busy_timeout(std::time::Duration::from_secs(10))
        .expect("busy timeout");
    for case in &cases {
        // As Python kombu's SQLAlchemy transport inserts: visible, no timestamp, TEXT.
        let (sql, bytes) = match &case.placed {
            Placed::Message(body) => (TEXT_ROW, envelope(queue, body)),
            Placed::DeepHeaders(..) => unreachable!("AMQP only"),
            Placed::Raw(raw) => (TEXT_ROW, raw.clone()),
            Placed::Blob(raw) => (BLOB_ROW, raw.clone()),
        };
        db.execute(sql, rusqlite::params![bytes, queue])
            .expect("INSERT");
    }
    drop(db);
    let run = consume(&url, queue, delivered(&cases));
    let dead = drain(&url, &dlq_name(queue));
    let rows = check("sqlite", &cases, &run, &dead);
    assert_not_pwned(&marker);
    report(&rows);
}

const TEXT_ROW: &str = "INSERT INTO kombu_message (visible, timestamp, payload, version, queue_id) \
     VALUES (1, NULL, CAST(?1 AS TEXT), 1, (SELECT id FROM kombu_queue WHERE name = ?2))";
const BLOB_ROW: &str = "INSERT INTO kombu_message (visible, timestamp, payload, version, queue_id) \
     VALUES (1, NULL, ?1, 1, (SELECT id FROM kombu_queue WHERE name = ?2))";

#[test]
fn amqp_hostile_bodies_are_dead_lettered_and_good_ones_delivered() {
    let url = cli_support::AMQP_URL;
    let queue = cli_support::unique("hostile");
    let marker = pwned_marker(&queue);
    let mut cases = body_cases(&marker);
    cases.push(deep_headers_case());
    let cases = interleave(cases);
    let python = kombu_test_support::python();
    cli_support::declare(url, &queue);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let conn = lapin::Connection::connect(
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            lapin::ConnectionProperties::default(),
        )
        .await
        .expect("connect to RabbitMQ");
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        for case in &cases {
            let body = match &case.placed {
                Placed::Message(body) => body,
                Placed::DeepHeaders(body, depth) => {
                    let python = python.as_deref().expect("Python with py-amqp");
                    publish_deep_headers(python, &queue, body, *depth);
                    continue;
                }
                _ => unreachable!("AMQP carries messages only"),
            };
            let mut headers = lapin::types::FieldTable::default();
            if let Some(compression) = body.headers["compression"].as_str() {
                headers.insert(
                    "compression".into(),
                    lapin::types::AMQPValue::LongString(compression.as_bytes().into()),
                );
            }
            let properties = lapin::BasicProperties::default()
                .with_content_type(body.content_type.into())
                .with_content_encoding(body.content_encoding.into())
                .with_delivery_mode(2)
                .with_headers(headers);
            ch.basic_publish(
                "".into(),
                queue.as_str().into(),
                lapin::options::BasicPublishOptions::default(),
                &body.body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        }
        conn.close(200, "done".into()).await.expect("close");
    });
    let run = consume(url, &queue, delivered(&cases));
    let dead = drain(url, &dlq_name(&queue));
    cli_support::delete_entities(url, &[&queue, &dlq_name(&queue)], &[]);
    let rows = check("amqp", &cases, &run, &dead);
    let deep = run
        .stdout
        .iter()
        .find(|m| m["body"] == "deep headers")
        .expect("the deep-header message printed");
    assert!(
        deep["headers"].to_string().contains("left out by kombu-rs"),
        "the nesting past the limit is replaced by a note: {}",
        deep["headers"]
            .to_string()
            .chars()
            .take(300)
            .collect::<String>()
    );
    assert_not_pwned(&marker);
    report(&rows);
}
