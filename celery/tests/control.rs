//! Remote control between kombu-rs's own worker and client, on the memory transport and on
//! Redis and RabbitMQ: every inspect and control command the worker obeys, addressed by
//! destination and pattern, and mingle. (The events: events.rs; with Celery's own tools and
//! Flower: python_control.rs.)

use std::time::Duration;

use kombu_celery::backend::ResultBackend;
use kombu_celery::control::{Broadcast, Control};
use kombu_celery::{Celery, State, TaskOptions};
use kombu_core::Connection;
use kombu_test_support::{brokers, until};
use serde_json::{Map, Value as Json, json};

mod nodes;

use nodes::{ADD, SLEEP, WAIT, answering, ask, node, to};

fn ids(list: &Json) -> Vec<String> {
    list.as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| {
                    i.get("id")
                        .or_else(|| i.get("request").and_then(|r| r.get("id")))
                        .and_then(Json::as_str)
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn inspect_and_control(url: &str) {
    let conn = Connection::open(url).await.expect("open");
    let one = node(&conn, "one", |w| w).await;
    let two = node(&conn, "two", |w| w.autoscale(4, 1)).await;
    let control = Control::new(&conn);
    answering(&control, &one).await;
    answering(&control, &two).await;
    let celery = Celery::builder(&conn)
        .default_queue(one.queue.as_str())
        .build();

    // Addressing: both by destination, one by pattern, none by an unknown name.
    let both = Broadcast::new()
        .destination(one.name.as_str())
        .destination(two.name.as_str())
        .timeout(Duration::from_secs(5));
    let mut pongs = control
        .broadcast("ping", Map::new(), &both)
        .await
        .expect("ping");
    pongs.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        pongs,
        vec![
            (one.name.clone(), json!({"ok": "pong"})),
            (two.name.clone(), json!({"ok": "pong"}))
        ]
    );
    let prefix = one.name.split('@').next().expect("a name");
    let by_pattern = control
        .inspect(
            "ping",
            Map::new(),
            &Broadcast::new()
                .pattern(format!("{prefix}@*"))
                .timeout(Duration::from_millis(500)),
        )
        .await
        .expect("ping");
    assert_eq!(
        by_pattern.keys().collect::<Vec<_>>(),
        vec![&one.name],
        "the pattern picks one"
    );
    let nobody = control
        .broadcast(
            "ping",
            Map::new(),
            &Broadcast::new()
                .destination("nobody@nowhere")
                .timeout(Duration::from_millis(300)),
        )
        .await
        .expect("ping");
    assert!(nobody.is_empty());

    // Inspect.
    let stats = ask(&control, &one, "stats", json!({})).await;
    for key in [
        "total",
        "pid",
        "clock",
        "uptime",
        "pool",
        "broker",
        "prefetch_count",
        "rusage",
    ] {
        assert!(stats.get(key).is_some(), "stats has {key}: {stats}");
    }
    assert!(
        stats["clock"].is_string(),
        "Celery's clock in stats is a string"
    );
    assert_eq!(stats["pool"]["max-concurrency"], json!(2));
    assert_eq!(
        ask(&control, &two, "stats", json!({})).await["autoscaler"]["max"],
        json!(4)
    );
    assert_eq!(
        ask(&control, &one, "registered", json!({})).await,
        json!(["tasks.add [rate_limit=100/s]", "tasks.sleep"])
    );
    let queues = ask(&control, &one, "active_queues", json!({})).await;
    assert_eq!(queues[0]["name"], json!(one.queue));
    assert_eq!(queues[0]["exchange"]["type"], json!("direct"));
    assert!(
        ask(&control, &one, "clock", json!({})).await["clock"]
            .as_u64()
            .is_some()
    );
    assert_eq!(
        ask(&control, &one, "nosuchcommand", json!({})).await,
        json!({"error": "KeyError('nosuchcommand')"})
    );

    // Active, reserved and scheduled: two sleepers fill the slots, a third waits, one with
    // an eta under a second waits in the worker.
    let sleeping: Vec<String> = futures::future::join_all(
        (0..3).map(|_| celery.send_task(SLEEP.name(), (1.5,), (), TaskOptions::new())),
    )
    .await
    .into_iter()
    .map(|r| r.expect("sent"))
    .collect();
    let soon = celery
        .send_task(
            ADD.name(),
            (1, 1),
            (),
            TaskOptions::new().countdown(Duration::from_millis(900)),
        )
        .await
        .expect("sent");
    let mut seen = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..50 {
        seen = (
            ids(&ask(&control, &one, "active", json!({})).await),
            ids(&ask(&control, &one, "reserved", json!({})).await),
            ids(&ask(&control, &one, "scheduled", json!({})).await),
        );
        if seen.0.len() == 2 && seen.1.len() == 1 && seen.2 == vec![soon.clone()] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen.0.len(), 2, "two running: {seen:?}");
    assert_eq!(seen.1.len(), 1, "one reserved: {seen:?}");
    assert_eq!(seen.2, vec![soon.clone()], "one scheduled: {seen:?}");
    assert!(seen.0.iter().chain(&seen.1).all(|id| sleeping.contains(id)));
    let active = ask(&control, &one, "active", json!({"safe": true})).await;
    assert_eq!(active[0]["args"], json!("(1.5,)"), "safe: repr strings");
    assert_eq!(active[0]["acknowledged"], json!(true));
    let queried = ask(&control, &one, "query_task", json!({"ids": [seen.0[0]]})).await;
    assert_eq!(queried[&seen.0[0]][0], json!("active"));

    // Terminate a running task: REVOKED, terminated.
    let victim = seen.0[0].clone();
    assert_eq!(
        ask(
            &control,
            &one,
            "revoke",
            json!({"task_id": victim, "terminate": true, "signal": "SIGKILL"})
        )
        .await,
        json!({"ok": format!("terminate: {victim}")})
    );
    let meta = one.results.wait(&victim, WAIT).await.expect("a result");
    assert_eq!(meta.state, State::Revoked);
    assert_eq!(
        meta.failure_of().map(|f| f.exc_message),
        Some(vec![json!("terminated")])
    );

    // Revoke one not sent yet: it is not run when it comes, and marked REVOKED at once.
    let doomed = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        ask(&control, &one, "revoke", json!({"task_id": [doomed]})).await,
        json!({"ok": format!("tasks {{'{doomed}'}} flagged as revoked")})
    );
    assert_eq!(
        ask(&control, &one, "revoked", json!({})).await,
        json!([victim, doomed])
    );
    assert_eq!(
        one.results.meta(&doomed).await.expect("meta").state,
        State::Revoked
    );
    let before = one.handle.stats().revoked;
    celery
        .send_task(
            ADD.name(),
            (2, 2),
            (),
            TaskOptions::new().task_id(doomed.as_str()),
        )
        .await
        .expect("sent");
    until("the revoked task is skipped", WAIT, || {
        one.handle.stats().revoked > before
    })
    .await;
    assert_eq!(
        one.results.meta(&doomed).await.expect("meta").state,
        State::Revoked
    );

    // Rate and time limits.
    assert_eq!(
        ask(
            &control,
            &one,
            "rate_limit",
            json!({"task_name": "tasks.add", "rate_limit": "10/m"})
        )
        .await,
        json!({"ok": "new rate limit set successfully"})
    );
    assert_eq!(
        ask(&control, &one, "registered", json!({})).await[0],
        json!("tasks.add [rate_limit=10/m]")
    );
    assert_eq!(
        ask(
            &control,
            &one,
            "rate_limit",
            json!({"task_name": "tasks.add", "rate_limit": null})
        )
        .await,
        json!({"ok": "rate limit disabled successfully"})
    );
    assert_eq!(
        ask(
            &control,
            &one,
            "rate_limit",
            json!({"task_name": "tasks.nope", "rate_limit": "1/s"})
        )
        .await,
        json!({"error": "unknown task"})
    );
    assert_eq!(
        ask(
            &control,
            &one,
            "time_limit",
            json!({"task_name": "tasks.sleep", "hard": 0.2})
        )
        .await,
        json!({"ok": "time limits set successfully"})
    );
    let limited = celery
        .send_task(SLEEP.name(), (5.0,), (), TaskOptions::new())
        .await
        .expect("sent");
    let meta = one.results.wait(&limited, WAIT).await.expect("a result");
    assert_eq!(meta.state, State::Failure);
    assert_eq!(
        meta.failure_of().map(|f| f.exc_type),
        Some("TimeLimitExceeded".to_owned())
    );

    // The pool.
    assert_eq!(
        ask(&control, &one, "pool_grow", json!({"n": 2})).await,
        json!({"ok": "pool will grow"})
    );
    assert_eq!(
        ask(&control, &one, "stats", json!({})).await["pool"]["max-concurrency"],
        json!(4)
    );
    assert_eq!(
        ask(&control, &one, "pool_shrink", json!({})).await,
        json!({"ok": "pool will shrink"})
    );
    assert_eq!(
        ask(&control, &one, "stats", json!({})).await["pool"]["max-concurrency"],
        json!(3)
    );
    assert_eq!(
        ask(&control, &one, "autoscale", json!({"max": 3, "min": 1})).await,
        json!({"error": "ValueError('Autoscale not enabled')"})
    );
    assert_eq!(
        ask(&control, &two, "pool_grow", json!({})).await,
        json!({"error": "pool_grow is not supported with autoscale. Adjust autoscale range instead."})
    );
    assert_eq!(
        ask(&control, &two, "autoscale", json!({"max": 6, "min": 2})).await,
        json!({"ok": "autoscale now max=6 min=2"})
    );
    assert_eq!(
        ask(&control, &two, "stats", json!({})).await["autoscaler"]["min"],
        json!(2)
    );

    // Queues: add one, tasks there run; cancel it, they wait.
    let extra = format!("{}-extra", one.queue);
    assert_eq!(
        ask(&control, &one, "add_consumer", json!({"queue": extra})).await,
        json!({"ok": format!("add consumer {extra}")})
    );
    let names = |q: &Json| {
        q.as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|q| q["name"].as_str().map(str::to_owned))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = names(&ask(&control, &one, "active_queues", json!({})).await);
        if listed.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(listed, vec![one.queue.clone(), extra.clone()]);
    let there = celery
        .send_task(
            ADD.name(),
            (3, 4),
            (),
            TaskOptions::new().queue(extra.as_str()),
        )
        .await
        .expect("sent");
    assert_eq!(
        one.results
            .wait(&there, WAIT)
            .await
            .expect("a result")
            .result,
        json!(7)
    );
    assert_eq!(
        ask(&control, &one, "cancel_consumer", json!({"queue": extra})).await,
        json!({"ok": format!("no longer consuming from {extra}")})
    );
    for _ in 0..100 {
        listed = names(&ask(&control, &one, "active_queues", json!({})).await);
        if listed.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(listed, vec![one.queue.clone()]);
    let parked = celery
        .send_task(
            ADD.name(),
            (5, 6),
            (),
            TaskOptions::new().queue(extra.as_str()),
        )
        .await
        .expect("sent");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        one.results.meta(&parked).await.expect("meta").state,
        State::Pending,
        "not consumed"
    );
    assert_eq!(
        conn.queue_size(&extra).await.expect("size"),
        1,
        "it waits in its queue"
    );

    // Events on and off, and a shutdown that stops the worker without a reply.
    assert_eq!(
        ask(&control, &one, "enable_events", json!({})).await,
        json!({"ok": "task events enabled"})
    );
    assert_eq!(
        ask(&control, &one, "enable_events", json!({})).await,
        json!({"ok": "task events already enabled"})
    );
    assert_eq!(
        ask(&control, &one, "disable_events", json!({})).await,
        json!({"ok": "task events disabled"})
    );
    assert_eq!(
        ask(&control, &one, "disable_events", json!({})).await,
        json!({"ok": "task events already disabled"})
    );
    let silent = control
        .broadcast(
            "shutdown",
            Map::new(),
            &to(&one).timeout(Duration::from_millis(300)),
        )
        .await
        .expect("shutdown");
    assert!(silent.is_empty(), "a worker shutting down does not reply");
    control
        .cast("shutdown", Map::new(), Some(vec![two.name.clone()]))
        .await
        .expect("cast");
    tokio::time::timeout(WAIT, one.running)
        .await
        .expect("one stopped")
        .expect("joined")
        .expect("ran");
    tokio::time::timeout(WAIT, two.running)
        .await
        .expect("two stopped")
        .expect("joined")
        .expect("ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_obeys_remote_control() {
    kombu_core::transport::memory::register();
    kombu_redis::register();
    kombu_amqp::register();
    for transport in ["memory", "redis", "amqp"] {
        let Some(broker) = brokers::broker(transport, "control") else {
            continue;
        };
        inspect_and_control(&broker.url).await;
    }
}

/// Mingle: a worker that starts asks the others for their revoked ids (Redis, RabbitMQ).
async fn mingle(url: &str) {
    let conn = Connection::open(url).await.expect("open");
    let old = node(&conn, "old", |w| w).await;
    let control = Control::new(&conn);
    answering(&control, &old).await;
    let doomed = uuid::Uuid::new_v4().to_string();
    ask(&control, &old, "revoke", json!({"task_id": doomed})).await;
    let new = node(&conn, "new", |w| w).await;
    answering(&control, &new).await;
    let mut learned = Json::Null;
    for _ in 0..100 {
        learned = ask(&control, &new, "revoked", json!({})).await;
        if learned
            .as_array()
            .is_some_and(|ids| ids.contains(&json!(doomed)))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        learned
            .as_array()
            .is_some_and(|ids| ids.contains(&json!(doomed))),
        "the new worker learned {doomed}: {learned}"
    );
    for n in [old, new] {
        n.handle.stop();
        tokio::time::timeout(WAIT, n.running)
            .await
            .expect("stopped")
            .expect("joined")
            .expect("ran");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_worker_learns_the_ids_others_revoked() {
    kombu_redis::register();
    kombu_amqp::register();
    for transport in ["redis", "amqp"] {
        let Some(broker) = brokers::broker(transport, "mingle") else {
            continue;
        };
        mingle(&broker.url).await;
    }
}
