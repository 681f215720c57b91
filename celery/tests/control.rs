//! Remote control and events between kombu-rs's own worker and client, on the memory
//! transport and on Redis and RabbitMQ: every inspect and control command the worker obeys,
//! addressed by destination and pattern, and the events a receiver hears in order. (With
//! Celery's own tools and Flower: python_control.rs.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use kombu_celery::backend::{MemoryResultBackend, ResultBackend};
use kombu_celery::control::{Broadcast, Control};
use kombu_celery::events::{EventKind, EventReceiver};
use kombu_celery::worker::{Reject, TaskContext, TaskFail, TaskSettings, Worker, WorkerHandle};
use kombu_celery::{Celery, State, Task, TaskOptions};
use kombu_core::Connection;
use kombu_test_support::{brokers, until};
use serde_json::{Map, Value as Json, json};

const ADD: Task<(i64, i64), i64> = Task::new("tasks.add");
const SLEEP: Task<(f64,), f64> = Task::new("tasks.sleep");
const REJECT: Task<(bool,), ()> = Task::new("tasks.reject");
const IGNORE: Task<(), ()> = Task::new("tasks.ignore");
const REJECT_EARLY: Task<(), ()> = Task::new("tasks.reject_early");
const WAIT: Duration = Duration::from_secs(20);

struct Node {
    name: String,
    queue: String,
    handle: WorkerHandle,
    running: tokio::task::JoinHandle<kombu_core::Result<()>>,
    results: Arc<MemoryResultBackend>,
}

async fn node(
    conn: &Connection,
    tag: &str,
    configure: impl FnOnce(kombu_celery::worker::WorkerBuilder) -> kombu_celery::worker::WorkerBuilder,
) -> Node {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("{tag}-{}@test", &id[..8]);
    let queue = format!("control-{tag}-{id}");
    let results = Arc::new(MemoryResultBackend::new());
    let worker = configure(
        Worker::builder(conn)
            .hostname(name.as_str())
            .queue(queue.as_str())
            .concurrency(2)
            .shared_result_backend(results.clone())
            .task_with(
                ADD,
                TaskSettings::new().rate_limit("100/s".parse().expect("a rate")),
                |(x, y), _: TaskContext| async move { Ok(x + y) },
            )
            .task(SLEEP, |(seconds,), _: TaskContext| async move {
                tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
                Ok(seconds)
            }),
    )
    .build()
    .expect("a worker");
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());
    Node {
        name,
        queue,
        handle,
        running,
        results,
    }
}

fn to(node: &Node) -> Broadcast {
    Broadcast::new()
        .destination(node.name.as_str())
        .timeout(Duration::from_secs(5))
}

/// The one reply of `node` to `method`.
async fn ask(control: &Control, node: &Node, method: &str, args: Json) -> Json {
    let Json::Object(args) = args else {
        panic!("arguments are an object");
    };
    let replies = control
        .broadcast(method, args, &to(node))
        .await
        .expect("broadcast");
    assert_eq!(
        replies.len(),
        1,
        "{method}: one reply from {}: {replies:?}",
        node.name
    );
    assert_eq!(replies[0].0, node.name);
    replies[0].1.clone()
}

/// Waits until the worker's mailbox answers (it starts listening after its queues).
async fn answering(control: &Control, node: &Node) {
    for _ in 0..100 {
        let replies = control
            .broadcast(
                "ping",
                Map::new(),
                &Broadcast::new()
                    .destination(node.name.as_str())
                    .timeout(Duration::from_millis(200)),
            )
            .await
            .expect("ping");
        if !replies.is_empty() {
            return;
        }
    }
    panic!("{} never answered a ping", node.name);
}

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

/// The next event within the patience, if any.
async fn next_event(
    receiver: &mut EventReceiver,
    patience: Duration,
) -> Option<kombu_celery::events::Event> {
    match tokio::time::timeout(patience, receiver.next()).await {
        Ok(Some(Ok(event))) => Some(event),
        Ok(Some(Err(error))) => panic!("an event that does not read: {error:#}"),
        Ok(None) | Err(_) => None,
    }
}

async fn events_in_order(url: &str) {
    let conn = Connection::open(url).await.expect("open");
    let mut all = EventReceiver::builder(&conn)
        .build()
        .await
        .expect("a receiver");
    let mut batches = EventReceiver::builder(&conn)
        .routing_key("task.multi")
        .wake_workers(false)
        .build()
        .await
        .expect("a receiver of task.multi");
    // Refusals as Celery's `Reject` and `Ignore`, acked late so that they act on the message.
    let late = TaskSettings::new().acks_late(true);
    let runs = Arc::new(AtomicUsize::new(0));
    let ignored_ran = Arc::new(AtomicBool::new(false));
    let worker = node(&conn, "events", |w| {
        let (runs, ignored_ran) = (runs.clone(), ignored_ran.clone());
        w.task_events(true)
            .task_with(REJECT, late.clone(), move |(requeue,), _: TaskContext| {
                // With requeue: refused once, then run.
                let again = requeue && runs.fetch_add(1, Ordering::SeqCst) > 0;
                async move {
                    match again {
                        true => Ok(()),
                        false => Err(Reject::new("too big").requeue(requeue).into()),
                    }
                }
            })
            // Acked early, as Celery: a failure, the message already gone (no dead letter).
            .task_with(
                REJECT_EARLY,
                TaskSettings::new().acks_late(false),
                |(), _: TaskContext| async { Err::<(), _>(Reject::new("too late").into()) },
            )
            .task_with(IGNORE, late, move |(), _: TaskContext| {
                ignored_ran.store(true, Ordering::SeqCst);
                async { Err::<(), _>(TaskFail::Ignore) }
            })
    })
    .await;
    let control = Control::new(&conn);
    answering(&control, &worker).await;
    let celery = Celery::builder(&conn)
        .default_queue(worker.queue.as_str())
        .send_sent_events(true)
        .build();
    let ok = celery
        .send_task(ADD.name(), (2, 3), (), TaskOptions::new())
        .await
        .expect("sent");
    let failing = celery
        .send_task(SLEEP.name(), (5.0,), (), TaskOptions::new().time_limit(0.1))
        .await
        .expect("sent");
    let expired = celery
        .send_task(
            ADD.name(),
            (1, 1),
            (),
            // Taken at once (it waits in the worker for its eta), expired by then.
            TaskOptions::new()
                .countdown(Duration::from_millis(900))
                .expires_in(Duration::from_millis(300)),
        )
        .await
        .expect("sent");
    let unknown = celery
        .send_task("tasks.unknown", (), (), TaskOptions::new())
        .await
        .expect("sent");
    let refused = celery
        .send_task(REJECT.name(), (false,), (), TaskOptions::new())
        .await
        .expect("sent");
    let requeued = celery
        .send_task(REJECT.name(), (true,), (), TaskOptions::new())
        .await
        .expect("sent");
    let ignored = celery
        .send_task(IGNORE.name(), (), (), TaskOptions::new())
        .await
        .expect("sent");
    let early = celery
        .send_task(REJECT_EARLY.name(), (), (), TaskOptions::new())
        .await
        .expect("sent");
    for id in [
        &ok, &failing, &expired, &unknown, &refused, &requeued, &early,
    ] {
        let meta = worker.results.wait(id, WAIT).await.expect("a result");
        assert!(meta.state.is_ready(), "{id}: {meta:?}");
    }
    // As Celery: an unknown task fails NotRegistered, a rejection for good fails Reject, a
    // requeued one runs again; an ignored one stores nothing.
    let failure = async |id: &str| {
        let meta = worker.results.meta(id).await.expect("a result");
        assert_eq!(meta.state, State::Failure, "{meta:?}");
        let failure = meta.failure_of().expect("a failure");
        (failure.exc_module, failure.exc_type, failure.exc_message)
    };
    assert_eq!(
        failure(&unknown).await,
        (
            "celery.exceptions".into(),
            "NotRegistered".into(),
            vec![json!("tasks.unknown")]
        )
    );
    assert_eq!(
        failure(&refused).await,
        (
            "celery.exceptions".into(),
            "Reject".into(),
            vec![json!("too big"), json!(false)]
        )
    );
    assert_eq!(
        worker
            .results
            .meta(&requeued)
            .await
            .expect("a result")
            .state,
        State::Success
    );
    assert_eq!(
        failure(&early).await,
        (
            "celery.exceptions".into(),
            "Reject".into(),
            vec![json!("too late"), json!(false)]
        )
    );
    until("the ignored task ran", WAIT, || {
        ignored_ran.load(Ordering::SeqCst)
    })
    .await;
    // Both messages it does not run are kept: the unknown task's and the refused one's.
    let dlq = format!("{}.dlq", worker.queue);
    until("two dead letters", WAIT, || {
        worker.handle.stats().rejected == 2
    })
    .await;
    assert_eq!(conn.queue_size(&dlq).await.expect("the dead letters"), 2);
    assert_eq!(
        ask(&control, &worker, "heartbeat", json!({})).await,
        Json::Null
    );
    worker.handle.stop();
    tokio::time::timeout(WAIT, worker.running)
        .await
        .expect("stopped")
        .expect("joined")
        .expect("ran");

    let mut mine = Vec::new();
    let mut sent = Vec::new();
    while let Some(event) = next_event(&mut all, Duration::from_secs(10)).await {
        if event.hostname() == Some(worker.name.as_str()) {
            let offline = event.kind() == &EventKind::WorkerOffline;
            mine.push(event);
            if offline {
                break;
            }
        } else if event.kind() == &EventKind::TaskSent {
            sent.push(event);
        }
    }
    let kinds = |id: &str| -> Vec<String> {
        mine.iter()
            .filter(|e| e.uuid() == Some(id))
            .map(|e| e.kind().as_str().to_owned())
            .collect()
    };
    assert_eq!(
        mine.first().map(|e| e.kind().clone()),
        Some(EventKind::WorkerOnline)
    );
    assert_eq!(
        mine.last().map(|e| e.kind().clone()),
        Some(EventKind::WorkerOffline)
    );
    assert_eq!(
        kinds(&ok),
        ["task-received", "task-started", "task-succeeded"]
    );
    assert_eq!(
        kinds(&failing),
        ["task-received", "task-started", "task-failed"]
    );
    assert_eq!(
        kinds(&expired),
        ["task-received", "task-revoked"],
        "taken, then expired"
    );
    assert_eq!(
        kinds(&unknown),
        ["task-failed"],
        "as Celery's on_unknown_task"
    );
    assert_eq!(
        kinds(&refused),
        [
            "task-received",
            "task-started",
            "task-failed",
            "task-rejected"
        ]
    );
    assert_eq!(
        kinds(&requeued),
        [
            "task-received",
            "task-started",
            "task-rejected",
            "task-received",
            "task-started",
            "task-succeeded"
        ]
    );
    assert_eq!(kinds(&ignored), ["task-received", "task-started"]);
    assert_eq!(
        kinds(&early),
        ["task-received", "task-started", "task-failed"],
        "acked before its run: nothing to reject"
    );
    assert!(
        worker.results.meta(&ignored).await.expect("a state").state == State::Pending,
        "an ignored task stores nothing"
    );
    assert!(
        mine.iter().all(|e| e.clock().is_some()),
        "every event has a clock"
    );
    // Task events come in the order of their clocks (worker events are not batched, so a
    // heartbeat may overtake a batch, as with Celery's).
    let clocks: Vec<u64> = mine
        .iter()
        .filter(|e| e.kind().group() == "task")
        .filter_map(|e| e.clock())
        .collect();
    assert!(
        clocks.windows(2).all(|w| w[0] < w[1]),
        "clocks rise: {clocks:?}"
    );
    let field = |id: &str, kind: &EventKind, key: &str| {
        mine.iter()
            .find(|e| e.uuid() == Some(id) && e.kind() == kind)
            .and_then(|e| e.get(key).cloned())
    };
    assert_eq!(
        field(&ok, &EventKind::TaskReceived, "args"),
        Some(json!("(2, 3)"))
    );
    assert_eq!(
        field(&ok, &EventKind::TaskReceived, "name"),
        Some(json!("tasks.add"))
    );
    assert_eq!(
        field(&ok, &EventKind::TaskSucceeded, "result"),
        Some(json!("5"))
    );
    assert!(field(&ok, &EventKind::TaskSucceeded, "runtime").is_some_and(|r| r.is_f64()));
    assert_eq!(
        field(&failing, &EventKind::TaskFailed, "exception"),
        Some(json!("TimeLimitExceeded(0.1)"))
    );
    assert_eq!(
        field(&expired, &EventKind::TaskRevoked, "expired"),
        Some(json!(true))
    );
    assert_eq!(
        field(&unknown, &EventKind::TaskFailed, "exception"),
        Some(json!("NotRegistered('tasks.unknown')"))
    );
    assert_eq!(
        field(&refused, &EventKind::TaskFailed, "exception"),
        Some(json!("reject requeue=False: too big"))
    );
    assert_eq!(
        field(&refused, &EventKind::TaskRejected, "requeue"),
        Some(json!(false))
    );
    assert_eq!(
        field(&requeued, &EventKind::TaskRejected, "requeue"),
        Some(json!(true))
    );
    let beat = mine
        .iter()
        .find(|e| e.kind() == &EventKind::WorkerHeartbeat)
        .expect("a heartbeat (asked for)");
    for key in [
        "freq",
        "active",
        "processed",
        "loadavg",
        "sw_ident",
        "sw_ver",
        "sw_sys",
        "utcoffset",
        "pid",
        "timestamp",
    ] {
        assert!(beat.get(key).is_some(), "a heartbeat has {key}: {beat:?}");
    }
    let mut sent_ids: Vec<&str> = sent.iter().filter_map(|e| e.uuid()).collect();
    sent_ids.sort_unstable();
    let mut want = vec![
        ok.as_str(),
        failing.as_str(),
        expired.as_str(),
        unknown.as_str(),
        refused.as_str(),
        requeued.as_str(),
        ignored.as_str(),
        early.as_str(),
    ];
    want.sort_unstable();
    assert_eq!(sent_ids, want, "the client's task-sent events");
    assert_eq!(sent[0].get("queue"), Some(&json!(worker.queue)));
    // Task events come in batches under task.multi.
    let mut batched = Vec::new();
    while let Some(event) = next_event(&mut batches, Duration::from_millis(500)).await {
        batched.push(event);
    }
    assert!(
        batched
            .iter()
            .any(|e| e.uuid() == Some(ok.as_str()) && e.kind() == &EventKind::TaskSucceeded),
        "task events under task.multi: {batched:?}"
    );
    assert!(batched.iter().all(|e| e.kind().group() == "task"));
    conn.delete_queue(&dlq)
        .await
        .expect("delete the dead letters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_hears_the_worker_and_its_tasks_in_order() {
    kombu_core::transport::memory::register();
    kombu_redis::register();
    kombu_amqp::register();
    for transport in ["memory", "redis", "amqp"] {
        let Some(broker) = brokers::broker(transport, "events") else {
            continue;
        };
        events_in_order(&broker.url).await;
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
