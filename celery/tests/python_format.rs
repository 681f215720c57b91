//! What [`Celery::send_task`] writes, against what Celery 5.7's own `app.amqp.as_task_v2`
//! builds for the same call (`interop/celery_side.py format`): every header with its value
//! (`null` ones included), the body `[args, kwargs, embed]` with `link`, `link_error` and
//! `chain` signatures, and `correlation_id` / `reply_to`. Times are given absolutely (in the
//! future: an expired message would not be delivered) so both
//! sides write the same. The messages go through the memory transport and are read back as a
//! consumer sees them.
//!
//! The Python interpreter is `$KOMBU_PYTHON` (scripts/python-env, with Celery); without one the
//! test fails when `KOMBU_TEST_REQUIRE` is set and is skipped otherwise.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use kombu_celery::{Celery, Signature, TaskOptions};
use kombu_core::{Connection, Queue};
use serde_json::{Value as Json, json};

mod support;
use support::celery_side;

fn at(rfc3339: &str) -> SystemTime {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(rfc3339) else {
        panic!("a time: {rfc3339}");
    };
    SystemTime::from(t)
}

#[tokio::test]
async fn messages_match_celerys_own() {
    let Some(python) = kombu_test_support::python() else {
        return;
    };
    kombu_core::transport::memory::register();
    let url = format!("memory://celery-format-{}", uuid::Uuid::new_v4().simple());
    let conn = Connection::open(&url).await.expect("open");
    let celery = Celery::builder(&conn).origin("gen1@kombu-rs").build();

    // The cases, as Python is told them.
    let cases = json!([
        {"id": "id-plain", "name": "tasks.add", "args": [2, 3], "kwargs": {}, "origin": "gen1@kombu-rs"},
        {
            "id": "id-full", "name": "tasks.add", "args": [1, "it's", 1.5, null, [true]],
            "kwargs": {"k": "v", "n": {"deep": [1]}}, "origin": "gen1@kombu-rs",
            "eta": "2036-12-07T03:00:10.500000+00:00", "expires": "2036-12-07T03:01:00+00:00",
            "retries": 2, "root_id": "root-1", "parent_id": "parent-1", "group": "group-1",
            "group_index": 1, "time_limit": 10.0, "soft_time_limit": 5.0, "shadow": "add-shadow",
            "ignore_result": true,
            "link": [{"task": "tasks.log", "args": ["ok"], "immutable": true}],
            "link_error": [{"task": "tasks.alert", "kwargs": {"level": 2}}],
            "chain": [
                {"task": "tasks.mul", "args": [10], "options": {"task_id": "chain-1"}},
                {"task": "tasks.mul", "args": [2], "options": {"task_id": "chain-2"}}
            ],
            "headers": {"x-app": "billing"}
        }
    ]);
    celery
        .send_task(
            "tasks.add",
            (2, 3),
            (),
            TaskOptions::new().task_id("id-plain"),
        )
        .await
        .expect("send plain");
    let full = TaskOptions::new()
        .task_id("id-full")
        .eta(at("2036-12-07T03:00:10.5Z"))
        .expires_at(at("2036-12-07T03:01:00Z"))
        .retries(2)
        .root_id("root-1")
        .parent_id("parent-1")
        .group("group-1", 1)
        .time_limit(10.0)
        .soft_time_limit(5.0)
        .shadow("add-shadow")
        .ignore_result(true)
        .link(Signature::new("tasks.log").args(("ok",)).immutable())
        .link_error(Signature::new("tasks.alert").kwarg("level", 2))
        .chain([
            Signature::new("tasks.mul")
                .args((10,))
                .option("task_id", "chain-1"),
            Signature::new("tasks.mul")
                .args((2,))
                .option("task_id", "chain-2"),
        ])
        .header("x-app", "billing");
    celery
        .send_task(
            "tasks.add",
            (1, "it's", 1.5, None::<i32>, [true]),
            json!({"k": "v", "n": {"deep": [1]}}),
            full,
        )
        .await
        .expect("send full");

    let theirs = celery_side(&python, &["format", &cases.to_string()]);
    let theirs = theirs.as_array().expect("a list from Celery").clone();

    let mut consumer = conn
        .consumer([Queue::new("celery")])
        .build()
        .await
        .expect("consume");
    for expected in theirs {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("in time")
            .expect("a delivery")
            .expect("accepted");
        let headers = serde_json::to_value(delivery.headers()).expect("headers as JSON");
        let body: Json = delivery.decode().expect("a JSON body");
        let id = headers["id"].clone();
        assert_eq!(headers, expected["headers"], "headers of {id}");
        assert_eq!(body, expected["body"], "body of {id}");
        let props = delivery.properties();
        assert_eq!(
            props.correlation_id.as_deref(),
            expected["properties"]["correlation_id"].as_str(),
            "{id}"
        );
        assert_eq!(
            props.reply_to.as_deref().unwrap_or(""),
            expected["properties"]["reply_to"].as_str().unwrap_or(""),
            "{id}"
        );
        assert_eq!(delivery.content_type(), Some("application/json"), "{id}");
        delivery.ack().await.expect("ack");
    }
}
