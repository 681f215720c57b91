//! kombu-celery with real Celery 5.7 on Redis, RabbitMQ and SQLite (Celery's `sqla+sqlite://`
//! on the same file):
//!
//! - a Celery worker (`--pool solo`, a queue of the test's own) runs tasks [`Celery`] sent:
//!   its arguments, keyword arguments, id, root id and routing as sent, a `countdown` honoured
//!   (the worker read the `eta`);
//! - [`TaskRequest::from_delivery`] reads what Celery's `send_task` sends: protocol 2 with
//!   options (`countdown`, `expires`, time limits, `link`) and protocol 1.
//!
//! The Python interpreter is `$KOMBU_PYTHON` (scripts/python-env); brokers come from
//! `kombu_test_support::brokers` (a missing one fails when `KOMBU_TEST_REQUIRE` requires it).

use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu_celery::{Celery, TaskOptions, TaskRequest};
use kombu_core::{Connection, Queue};
use kombu_test_support::{await_recorded_task, brokers, python};
use serde_json::{Value as Json, json};

mod support;
use support::celery_side;

const GUARD: Duration = Duration::from_secs(60);
const TRANSPORTS: [&str; 3] = ["redis", "amqp", "sqlite"];

fn register() {
    kombu_redis::register();
    kombu_amqp::register();
    kombu_sqlite::register();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_celery_worker_runs_what_we_send() {
    let Some(python) = python() else { return };
    register();
    for transport in TRANSPORTS {
        let Some(broker) = brokers::broker(transport, "celery-run") else {
            continue;
        };
        let queue = format!("celery-run-{}", uuid::Uuid::new_v4().simple());
        let (py_url, options) = brokers::celery_side(transport, &broker.url);
        let worker = support::worker(
            &python,
            &format!("celery-run-{transport}"),
            &queue,
            &[("KOMBU_RS_BROKER", &py_url), ("KOMBU_RS_OPTIONS", &options)],
        );
        let conn = Connection::open(&broker.url).await.expect("open");
        let celery = Celery::new(&conn);
        let nested = json!({"list": [1, 2.5, "three", null], "map": {"k": "v"}, "u": "h\u{e9}llo"});
        for countdown in [None, Some(Duration::from_secs(1))] {
            let out_path = worker
                .dir()
                .join(format!("result-{}.json", countdown.is_some()));
            let out = out_path.to_str().expect("UTF-8 path").to_owned();
            let mut options = TaskOptions::new().queue(queue.as_str());
            if let Some(delay) = countdown {
                options = options.countdown(delay);
            }
            let sent = Instant::now();
            let id = celery
                .send_task(
                    "kombu_rs.record",
                    (out.as_str(), 2, 3),
                    json!({"label": "from-rust", "nested": nested}),
                    options,
                )
                .await
                .expect("send_task");
            let recorded = await_recorded_task(&out_path, GUARD, &id, &queue, &nested).await;
            assert_eq!(recorded["parent_id"], Json::Null, "{transport}: {recorded}");
            if let Some(delay) = countdown {
                assert!(
                    sent.elapsed() >= delay,
                    "{transport}: run {:?} after the send, before its countdown",
                    sent.elapsed()
                );
                assert!(recorded["eta"].is_string(), "{transport}: {recorded}");
            }
        }
        // The task writes its record before the worker logs its success: wait for the log.
        let logged = Instant::now();
        while worker.log().matches("succeeded").count() < 2 && logged.elapsed() < GUARD {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = worker.log();
        assert!(
            log.matches("succeeded").count() >= 2,
            "{transport}: the worker logged no successes:\n{log}"
        );
        drop(worker);
        let _ = conn.delete_queue(&queue).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_read_what_celery_sends() {
    let Some(python) = python() else { return };
    register();
    for transport in TRANSPORTS {
        let Some(broker) = brokers::broker(transport, "celery-read") else {
            continue;
        };
        let queue = format!("celery-read-{}", uuid::Uuid::new_v4().simple());
        let (py_url, options) = brokers::celery_side(transport, &broker.url);
        let sent = celery_side(&python, &["send", &py_url, &options, &queue]);
        let ids: Vec<&str> = sent["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .filter_map(Json::as_str)
            .collect();
        assert_eq!(ids.len(), 4, "{transport}");

        let conn = Connection::open(&broker.url).await.expect("open");
        let mut consumer = conn
            .consumer([Queue::new(queue.as_str())])
            .prefetch(10)
            .build()
            .await
            .expect("consume");
        let mut requests = Vec::new();
        while requests.len() < 4 {
            let delivery = tokio::time::timeout(GUARD, consumer.next())
                .await
                .expect("in time")
                .expect("a delivery")
                .expect("accepted");
            requests.push(TaskRequest::from_delivery(&delivery).expect("a task request"));
            delivery.ack().await.expect("ack");
        }
        consumer.close().await.expect("close");
        // Redis takes priority 0 before 5: order by the ids Python printed.
        requests.sort_by_key(|r| ids.iter().position(|id| *id == r.id));
        let [plain, full, linked, old] = &requests[..] else {
            panic!("{transport}: four requests");
        };
        assert_eq!((plain.protocol, plain.task.as_str()), (2, "tasks.add"));
        assert_eq!(plain.args, [json!(2), json!(3)]);
        assert!(plain.kwargs.is_empty());
        assert_eq!(plain.root_id.as_deref(), Some(plain.id.as_str()));
        assert_eq!((plain.eta, plain.expires, plain.retries), (None, None, 0));

        assert_eq!(full.args, [json!(1), json!(2)], "{transport}");
        assert_eq!(full.kwargs.get("k"), Some(&json!("v")));
        assert_eq!(full.time_limit, (Some(10.0), Some(5.0)));
        let (Some(eta), Some(expires)) = (full.eta, full.expires) else {
            panic!("{transport}: the countdown and expires as times: {full:?}");
        };
        let now = chrono::Utc::now();
        assert!(
            eta > now && eta < now + chrono::Duration::seconds(31),
            "{eta}"
        );
        assert!(expires > eta, "{expires}");
        assert!(!full.expired());

        assert_eq!(linked.callbacks.len(), 1, "{transport}: {linked:?}");
        assert_eq!(linked.callbacks[0].task, "tasks.log");
        assert_eq!(linked.callbacks[0].args, [json!("done")]);

        assert_eq!((old.protocol, old.task.as_str()), (1, "tasks.old"));
        assert_eq!(old.args, [json!(7)]);
        assert_eq!(old.kwargs.get("x"), Some(&json!(1)));
        assert!(old.eta.is_some(), "{transport}: {old:?}");
        let _ = conn.delete_queue(&queue).await;
    }
}
