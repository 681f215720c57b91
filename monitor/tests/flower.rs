//! The monitor beside a real Flower (2.2, from the venv) on the same Redis, both listening to a
//! Rust worker with task events: the same bytes from `/api/tasks`, `/api/task/info/<id>` and
//! `/api/task/types`, and both see the worker alive.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kombu_celery::worker::{TaskContext, Worker};
use kombu_celery::{Celery, Task, TaskOptions};
use kombu_core::Connection;
use kombu_monitor::Monitor;
use kombu_test_support::http::{
    free_port, get as http_get, head, post as http_post, request as http,
};
use kombu_test_support::{brokers, python};
use serde_json::{Value as Json, json};

const ADD: Task<(i64, i64), i64> = Task::new("tasks.add");
const FAIL: Task<(String,), ()> = Task::new("tasks.fail");
const WAIT: Duration = Duration::from_secs(40);

/// A connection to a memory broker of the test's own.
async fn memory() -> Connection {
    kombu_core::transport::memory::register();
    Connection::open(&format!(
        "memory://monitor-{}",
        uuid::Uuid::new_v4().simple()
    ))
    .await
    .expect("open")
}

/// A metric sample: its name, labels and value.
type Sample = (String, std::collections::BTreeMap<String, String>, f64);

/// The samples of a Prometheus or OpenMetrics text exposition (`le` normalised as a number).
fn samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap_or((line, ""));
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
        let mut map = std::collections::BTreeMap::new();
        for pair in labels
            .trim_end_matches('}')
            .split("\",")
            .filter(|p| !p.is_empty())
        {
            if let Some((key, value)) = pair.split_once("=\"") {
                let value = value.trim_end_matches('"').to_owned();
                let value = match key {
                    "le" => value.parse::<f64>().map_or(value, |v| v.to_string()),
                    _ => value,
                };
                map.insert(key.trim_start_matches(',').to_owned(), value);
            }
        }
        out.push((name.to_owned(), map, value));
    }
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out
}

/// A child process killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `port` at `path` until `done` holds for the JSON body; returns the body.
async fn poll(port: u16, path: &str, what: &str, done: impl Fn(&Json) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = {
            let path = path.to_owned();
            tokio::task::spawn_blocking(move || http_get(port, &path))
                .await
                .expect("joined")
        };
        if let Some((200, body)) = got
            && serde_json::from_str::<Json>(&body).is_ok_and(|v| done(&v))
        {
            return body;
        }
        assert!(Instant::now() < deadline, "{what} never came: {path}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_api_bytes_as_flower_on_redis() {
    side_by_side("redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_api_bytes_as_flower_on_rabbitmq() {
    side_by_side("amqp").await;
}

/// Flower and the monitor on one broker (Redis, or a RabbitMQ virtual host of the test's
/// own, with Flower reading the management API), results in Redis.
async fn side_by_side(transport: &'static str) {
    kombu_redis::register();
    kombu_amqp::register();
    let Some(python) = python() else { return };
    // On RabbitMQ a virtual host of the test's own: other tests' workers and events stay
    // out of view.
    let Some(broker) = brokers::isolated(transport, "monitor") else {
        return;
    };
    let url = broker.url.clone();
    let (py_url, options) = brokers::celery_side(transport, &url);
    // Results in Redis where Flower reads them (Celery's keys, no transport prefix).
    let Some(redis) = brokers::broker("redis", "monitor") else {
        return;
    };
    let backend_url = match transport {
        "redis" => py_url.clone(),
        _ => brokers::celery_side("redis", &redis.url).0,
    };
    let dir = std::env::temp_dir().join(format!("kombu-monitor-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("a directory");
    std::fs::write(
        dir.join("flower_app.py"),
        "import json, os\nfrom celery import Celery\n\
         app = Celery('flower_app', broker=os.environ['KOMBU_RS_BROKER'])\n\
         app.conf.broker_transport_options = json.loads(os.environ['KOMBU_RS_OPTIONS'])\n\
         app.conf.result_backend = os.environ['KOMBU_RS_BACKEND']\n\
         @app.task(name='tasks.add')\ndef add(x, y):\n    return x + y\n",
    )
    .expect("write the app");
    let flower_port = free_port();
    let _flower = Child(
        Command::new(&python)
            .args([
                "-m",
                "celery",
                "-A",
                "flower_app",
                "flower",
                "--address=127.0.0.1",
            ])
            .arg(format!("--port={flower_port}"))
            // Where the management API is (Flower's default, named for the reader).
            .arg("--broker_api=http://guest:guest@127.0.0.1:15672/api/")
            .current_dir(&dir)
            .env("PYTHONPATH", &dir)
            .env("FLOWER_UNAUTHENTICATED_API", "true")
            .env("KOMBU_RS_BROKER", &py_url)
            .env("KOMBU_RS_OPTIONS", &options)
            .env("KOMBU_RS_BACKEND", &backend_url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start flower"),
    );

    let conn = Connection::open(&url).await.expect("open");
    let results = std::sync::Arc::new(
        kombu_celery::backend::RedisResultBackend::connect(&backend_url)
            .await
            .expect("the result backend"),
    );
    let monitor = Monitor::builder(&conn)
        .result_backend(results.clone())
        .start()
        .await
        .expect("the monitor");
    let (our_port, serving) = support::serve(&monitor).await;

    let id = uuid::Uuid::new_v4().simple().to_string();
    let node = format!("mon-{}@test", &id[..10]);
    let queue = format!("monitor-{id}");
    let worker = Worker::builder(&conn)
        .hostname(node.as_str())
        .queue(queue.as_str())
        .concurrency(1)
        .task_events(true)
        .shared_result_backend(results.clone())
        .task(ADD, |(x, y), _: TaskContext| async move { Ok(x + y) })
        .task(FAIL, |(message,), _: TaskContext| async move {
            Err(kombu_celery::TaskFailure::value_error(message).into())
        })
        .build()
        .expect("a worker");
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());

    // Both hear the worker's heartbeats (Flower's receiver is up then).
    for port in [flower_port, our_port] {
        poll(port, "/api/workers?status=true", "the worker alive", |v| {
            v[&node] == json!(true)
        })
        .await;
    }
    let celery = Celery::builder(&conn).default_queue(queue.as_str()).build();
    let ok = celery
        .send_task(ADD.name(), (2, 3), (), TaskOptions::new())
        .await
        .expect("sent");
    let failing = celery
        .send_task(FAIL.name(), ("boom",), (), TaskOptions::new())
        .await
        .expect("sent");
    let finished =
        |v: &Json| v[&ok]["state"] == json!("SUCCESS") && v[&failing]["state"] == json!("FAILURE");
    let theirs = poll(flower_port, "/api/tasks", "Flower's tasks", finished).await;
    let ours = poll(our_port, "/api/tasks", "the monitor's tasks", finished).await;
    assert_eq!(ours, theirs, "/api/tasks");
    // Flower's metrics, the same samples for our worker (formats differ: Python's text format
    // there, OpenMetrics here; names, labels and values agree).
    let scrape = |port: u16| tokio::task::spawn_blocking(move || http_get(port, "/metrics"));
    let theirs = scrape(flower_port)
        .await
        .expect("joined")
        .expect("Flower's metrics");
    let ours = scrape(our_port)
        .await
        .expect("joined")
        .expect("our metrics");
    assert_eq!(ours.0, 200);
    let of_node = |text: &str| -> Vec<Sample> {
        samples(text)
            .into_iter()
            .filter(|(name, labels, _)| {
                labels.get("worker") == Some(&node)
                    && [
                        "flower_events_total",
                        "flower_worker_prefetched_tasks",
                        "flower_task_prefetch_time_seconds",
                        "flower_task_runtime_seconds_bucket",
                        "flower_task_runtime_seconds_count",
                        "flower_task_runtime_seconds_sum",
                        "flower_worker_online",
                    ]
                    .contains(&name.as_str())
            })
            .collect()
    };
    let (theirs, ours) = (of_node(&theirs.1), of_node(&ours.1));
    assert!(theirs.len() >= 10, "{theirs:?}");
    assert_eq!(ours, theirs, "/metrics");
    for path in [
        format!("/api/task/info/{ok}"),
        format!("/api/task/info/{failing}"),
        "/api/task/types".to_owned(),
        "/api/tasks?sort_by=-name&limit=1".to_owned(),
        "/api/tasks?state=failure".to_owned(),
        format!("/api/tasks?workername={node}&offset=1"),
        "/api/task/info/nothing".to_owned(),
        "/api/tasks?sort_by=size".to_owned(),
        "/api/tasks?limit=x".to_owned(),
        format!("/api/task/result/{ok}"),
        format!("/api/task/result/{failing}"),
        format!("/api/task/result/{ok}?timeout=1"),
        "/api/task/result/unknown".to_owned(),
        "/api/task/result/unknown?timeout=0.2".to_owned(),
        "/api/task/result/unknown?timeout=soon".to_owned(),
        "/api/tasks?search=boom".to_owned(),
        "/api/tasks?search=name:ADD".to_owned(),
        "/api/tasks?search=state:failure".to_owned(),
        "/api/tasks?search=add%20OR%20fail".to_owned(),
        "/api/tasks?search=(tasks%20AND%20result:5)".to_owned(),
        "/api/tasks?search=tasks&limit=1&offset=1".to_owned(),
        "/api/tasks?search=kwargs:x=1".to_owned(),
        "/api/tasks?search=a".to_owned(),
        "/api/tasks?search=NOT%20abc".to_owned(),
        "/api/tasks?search=%22abc".to_owned(),
        "/api/tasks?search=abc%20OR".to_owned(),
    ] {
        let get = |port: u16| {
            let path = path.clone();
            tokio::task::spawn_blocking(move || http_get(port, &path))
        };
        let theirs = get(flower_port)
            .await
            .expect("joined")
            .expect("Flower answers");
        let ours = get(our_port)
            .await
            .expect("joined")
            .expect("the monitor answers");
        assert_eq!(ours, theirs, "{path}");
    }
    // Flower knows a worker from its inspect at start or a refresh; ours also inspects a
    // worker when it comes online.
    poll(
        flower_port,
        "/api/workers?refresh=1",
        "Flower's inspect",
        |v| v[&node]["stats"].is_object(),
    )
    .await;
    poll(our_port, "/api/workers", "our inspect", |v| {
        v[&node]["stats"].is_object() && v[&node]["active"].is_array()
    })
    .await;
    // Steering: the same answers (each side's own queue names where they differ).
    let post = |port: u16, path: String, body: String| {
        tokio::task::spawn_blocking(move || http_post(port, &path, &body))
    };
    for (path, body) in [
        (
            format!("/api/task/rate-limit/tasks.add?workername={node}&ratelimit=50/m"),
            "",
        ),
        (
            format!("/api/task/timeout/tasks.add?workername={node}&soft=30&hard=60"),
            "",
        ),
        (format!("/api/worker/pool/grow/{node}?n=1"), ""),
        (format!("/api/worker/pool/shrink/{node}"), ""),
        ("/api/worker/pool/grow/nobody@nowhere".to_owned(), ""),
        (format!("/api/worker/pool/restart/{node}"), ""),
        (format!("/api/worker/pool/autoscale/{node}?min=1&max=2"), ""),
        (format!("/api/worker/pool/autoscale/{node}?min=1"), ""),
        (format!("/api/worker/pool/grow/{node}"), ""),
        ("/api/worker/shutdown/nobody@nowhere".to_owned(), ""),
        (format!("/api/worker/queue/cancel-consumer/{node}"), ""),
        (
            format!("/api/task/rate-limit/tasks.add?workername={node}"),
            "",
        ),
        (format!("/api/task/revoke/{id}?terminate=false"), ""),
        (format!("/api/task/revoke/{id}?terminate=maybe"), ""),
        ("/api/task/send-task/tasks.add".to_owned(), "[1]"),
        ("/api/task/send-task/tasks.add".to_owned(), r#"{"args": 3}"#),
        ("/api/task/apply/tasks.add".to_owned(), r#"{"args": 3}"#),
        (
            "/api/task/apply/tasks.add".to_owned(),
            r#"{"timeout": "x"}"#,
        ),
        ("/api/task/apply/tasks.add".to_owned(), r#"{"eta": "soon"}"#),
        (
            "/api/task/async-apply/tasks.add".to_owned(),
            r#"{"expires": "May"}"#,
        ),
    ] {
        let theirs = post(flower_port, path.clone(), body.to_owned())
            .await
            .expect("joined")
            .expect("Flower answers");
        let ours = post(our_port, path.clone(), body.to_owned())
            .await
            .expect("joined")
            .expect("the monitor answers");
        assert_eq!(ours, theirs, "POST {path} {body}");
    }
    // apply: sent, waited for, answered in Flower's order (each side's own task id); with a
    // timeout that passes first (nobody consumes the queue), the state then.
    let nobody = format!("{queue}-nobody");
    for body in [
        format!(r#"{{"args": [2, 3], "queue": "{queue}"}}"#),
        format!(r#"{{"args": [20, 22], "queue": "{queue}", "timeout": 30}}"#),
        format!(r#"{{"args": [1, 2], "queue": "{nobody}", "timeout": 0.5}}"#),
    ] {
        let answer = |port: u16| {
            let body = body.clone();
            async move {
                let (status, text) = post(port, "/api/task/apply/tasks.add".to_owned(), body)
                    .await
                    .expect("joined")
                    .expect("answers");
                let value: Json = serde_json::from_str(&text).expect("JSON");
                let id = value["task-id"].as_str().unwrap_or_default().to_owned();
                (status, text.replace(&id, "ID"))
            }
        };
        let (theirs, ours) = (answer(flower_port).await, answer(our_port).await);
        assert_eq!(ours, theirs, "apply {body}");
        assert_eq!(ours.0, 200, "{ours:?}");
    }
    // abort: each side writes ABORTED where the other reads it; a result already SUCCESS
    // stays.
    for (writer, reader) in [(flower_port, our_port), (our_port, flower_port)] {
        let target = uuid::Uuid::new_v4().to_string();
        for (port, path, want) in [
            (
                writer,
                format!("/api/task/abort/{target}"),
                format!(r#"{{"message": "Aborted '{target}'"}}"#),
            ),
            (
                writer,
                format!("/api/task/abort/{ok}"),
                format!(r#"{{"message": "Aborted '{ok}'"}}"#),
            ),
        ] {
            let got = post(port, path.clone(), String::new())
                .await
                .expect("joined")
                .expect("answers");
            assert_eq!(got, (200, want), "{path}");
        }
        for (id, state) in [(&target, "ABORTED"), (&ok, "SUCCESS")] {
            let path = format!("/api/task/result/{id}");
            let (status, body) = tokio::task::spawn_blocking(move || http_get(reader, &path))
                .await
                .expect("joined")
                .expect("answers");
            assert_eq!(status, 200);
            let body: Json = serde_json::from_str(&body).expect("JSON");
            assert_eq!(body["state"], json!(state), "{body}");
        }
    }
    for side in ["flower", "ours"] {
        let port = if side == "flower" {
            flower_port
        } else {
            our_port
        };
        let extra = format!("{queue}-{side}");
        let added = post(
            port,
            format!("/api/worker/queue/add-consumer/{node}?queue={extra}"),
            String::new(),
        )
        .await
        .expect("joined")
        .expect("answers");
        assert_eq!(
            added,
            (200, format!(r#"{{"message": "add consumer {extra}"}}"#)),
            "{side}"
        );
        let sent = post(
            port,
            "/api/task/send-task/tasks.add".to_owned(),
            format!(r#"{{"args": [20, 22], "queue": "{extra}"}}"#),
        )
        .await
        .expect("joined")
        .expect("answers");
        assert_eq!(sent.0, 200, "{side}: {sent:?}");
        let sent: Json = serde_json::from_str(&sent.1).expect("JSON");
        let sent_id = sent["task-id"].as_str().expect("a task id").to_owned();
        // The backend's state read right after the send: PENDING unless the worker was
        // quicker.
        assert!(
            ["PENDING", "STARTED", "SUCCESS"]
                .iter()
                .any(|state| sent["state"] == json!(state)),
            "{side}: the backend's state added: {sent}"
        );
        poll(our_port, "/api/tasks", "the sent task done", |v| {
            v[&sent_id]["result"] == json!("42")
        })
        .await;
    }

    // Queue lengths from the queues the worker consumes, after both asked it again.
    poll(
        flower_port,
        "/api/workers?refresh=1",
        "Flower's inspect",
        |v| {
            v[&node]["active_queues"]
                .as_array()
                .is_some_and(|q| q.len() == 3)
        },
    )
    .await;
    poll(our_port, "/api/workers?refresh=1", "our inspect", |v| {
        v[&node]["active_queues"]
            .as_array()
            .is_some_and(|q| q.len() == 3)
    })
    .await;
    if transport == "redis" {
        let theirs =
            tokio::task::spawn_blocking(move || http_get(flower_port, "/api/queues/length"))
                .await
                .expect("joined");
        let ours = tokio::task::spawn_blocking(move || http_get(our_port, "/api/queues/length"))
            .await
            .expect("joined");
        assert_eq!(ours, theirs, "/api/queues/length");
        assert!(
            ours.is_some_and(
                |(_, body)| body.contains(&format!(r#"{{"name": "{queue}", "messages": 0}}"#))
            ),
            "our queue listed"
        );
    } else {
        // The management API's queue objects on both sides, once its statistics (sampled
        // every 5 s) count the three queues empty; their rates and times move between two
        // calls, their names and counts do not.
        let settled = |v: &Json| {
            v["active_queues"].as_array().is_some_and(|queues| {
                queues.len() == 3
                    && queues
                        .iter()
                        .all(|q| q["messages"] == json!(0) && q["messages_ready"] == json!(0))
            })
        };
        let names = |body: &str| -> Vec<Json> {
            let body: Json = serde_json::from_str(body).unwrap_or_default();
            body["active_queues"]
                .as_array()
                .map(|queues| queues.iter().map(|q| q["name"].clone()).collect())
                .unwrap_or_default()
        };
        let theirs = poll(
            flower_port,
            "/api/queues/length",
            "Flower's lengths",
            settled,
        )
        .await;
        let ours = poll(our_port, "/api/queues/length", "our lengths", settled).await;
        assert_eq!(names(&ours), names(&theirs), "/api/queues/length");
        assert_eq!(names(&ours)[0], json!(queue));
    }

    let (status, body) = tokio::task::spawn_blocking(move || http_get(our_port, "/healthcheck"))
        .await
        .expect("joined")
        .expect("answers");
    assert_eq!((status, body.as_str()), (200, "OK"));

    // The consumers added, cancelled: the worker's text on both sides.
    for side in ["flower", "ours"] {
        let port = if side == "flower" {
            flower_port
        } else {
            our_port
        };
        let extra = format!("{queue}-{side}");
        let cancelled = post(
            port,
            format!("/api/worker/queue/cancel-consumer/{node}?queue={extra}"),
            String::new(),
        )
        .await
        .expect("joined")
        .expect("answers");
        assert_eq!(
            cancelled,
            (
                200,
                format!(r#"{{"message": "no longer consuming from {extra}"}}"#)
            ),
            "{side}"
        );
    }
    // Shutdown: a cast without reply, the same message from both; the worker's run ends.
    let path = format!("/api/worker/shutdown/{node}");
    let theirs = post(flower_port, path.clone(), String::new())
        .await
        .expect("joined");
    let ours = post(our_port, path, String::new()).await.expect("joined");
    assert_eq!(ours, theirs, "shutdown");
    assert_eq!(
        ours,
        Some((200, r#"{"message": "Shutting down!"}"#.to_owned()))
    );
    let ended = tokio::time::timeout(WAIT, running).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "the worker shut down: {ended:?}"
    );
    drop(handle);
    serving.abort();
    monitor.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_tokens_and_read_only() {
    let conn = memory().await;
    let monitor = Monitor::builder(&conn)
        .basic_auth("ops", "s3cret")
        .token("t0ken")
        .read_only(true)
        .start()
        .await
        .expect("the monitor");
    let (port, serving) = support::serve(&monitor).await;
    let ask = |method: &'static str, path: &'static str, headers: &'static str| {
        tokio::task::spawn_blocking(move || http(port, method, path, "", headers))
    };
    let status = |r: Option<(u16, String)>| r.map(|(s, _)| s);
    // "ops:s3cret" and "ops:wrong" in base64.
    let good = "Authorization: Basic b3BzOnMzY3JldA==\r\n";
    let bad = "Authorization: Basic b3BzOndyb25n\r\n";
    assert_eq!(
        status(ask("GET", "/api/tasks", "").await.expect("joined")),
        Some(401)
    );
    assert_eq!(
        status(ask("GET", "/api/tasks", bad).await.expect("joined")),
        Some(401)
    );
    assert_eq!(
        status(ask("GET", "/api/tasks", good).await.expect("joined")),
        Some(200)
    );
    assert_eq!(
        status(
            ask("GET", "/api/task/types", "Authorization: Bearer t0ken\r\n")
                .await
                .expect("joined")
        ),
        Some(200)
    );
    assert_eq!(
        status(
            ask("GET", "/api/task/types", "Authorization: Bearer t0ke\r\n")
                .await
                .expect("joined")
        ),
        Some(401)
    );
    assert_eq!(
        ask("POST", "/api/task/revoke/x", good)
            .await
            .expect("joined"),
        Some((403, "Read only mode is enabled".to_owned()))
    );
    for path in [
        "/api/task/send-task/tasks.add",
        "/api/task/apply/tasks.add",
        "/api/task/abort/x",
    ] {
        assert_eq!(
            ask("POST", path, good).await.expect("joined"),
            Some((403, "Read only mode is enabled".to_owned())),
            "{path}"
        );
    }
    // Open without credentials, as Flower's.
    assert_eq!(
        ask("GET", "/healthcheck", "").await.expect("joined"),
        Some((200, "OK".to_owned()))
    );
    serving.abort();
    monitor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_requests_are_refused() {
    let conn = memory().await;
    let monitor = Monitor::builder(&conn).start().await.expect("the monitor");
    let (port, serving) = support::serve(&monitor).await;
    let ask = |method: &'static str, path: &'static str, headers: String| {
        tokio::task::spawn_blocking(move || http(port, method, path, "", &headers))
    };
    let status = |r: Option<(u16, String)>| r.map(|(s, _)| s);
    // Open (no users): loopback hosts only, so a page's rebound DNS name reads nothing.
    for host in ["127.0.0.1", "localhost:5555", "[::1]:80"] {
        let got = ask("GET", "/api/tasks", format!("Host: {host}\r\n"))
            .await
            .expect("joined");
        assert_eq!(status(got), Some(200), "{host}");
    }
    let got = ask(
        "GET",
        "/api/tasks",
        "Host: evil.example:5555\r\n".to_owned(),
    )
    .await
    .expect("joined");
    assert_eq!(status(got), Some(403));
    // Steering from another site's page.
    let got = ask(
        "POST",
        "/api/task/revoke/x",
        "Origin: http://evil.example\r\n".to_owned(),
    )
    .await
    .expect("joined");
    assert_eq!(status(got), Some(403));
    let got = ask(
        "POST",
        "/api/task/revoke/x",
        "Sec-Fetch-Site: cross-site\r\n".to_owned(),
    )
    .await
    .expect("joined");
    assert_eq!(status(got), Some(403));
    // Reading too, from another site's page; a link to the page itself is followed.
    let got = ask(
        "GET",
        "/api/workers",
        "Sec-Fetch-Site: cross-site\r\n".to_owned(),
    )
    .await
    .expect("joined");
    assert_eq!(status(got), Some(403));
    let got = ask("GET", "/", "Sec-Fetch-Site: cross-site\r\n".to_owned())
        .await
        .expect("joined");
    assert_eq!(status(got), Some(200));
    let got = ask(
        "POST",
        "/api/task/revoke/x",
        "Origin: http://127.0.0.1\r\nSec-Fetch-Site: same-origin\r\n".to_owned(),
    )
    .await
    .expect("joined");
    assert_eq!(got, Some((200, r#"{"message": "Revoked 'x'"}"#.to_owned())));
    // A countdown out of range is refused, not a panic.
    let got = tokio::task::spawn_blocking(move || {
        http_post(
            port,
            "/api/task/send-task/tasks.add",
            r#"{"countdown": 1e300}"#,
        )
    })
    .await
    .expect("joined");
    assert_eq!(got, Some((400, "Invalid option".to_owned())));
    serving.abort();
    monitor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_prefix_with_etags() {
    let conn = memory().await;
    let monitor = Monitor::builder(&conn)
        .url_prefix("/flower/")
        .start()
        .await
        .expect("the monitor");
    let (port, serving) = support::serve(&monitor).await;
    let (prefixed, bare, first) = tokio::task::spawn_blocking(move || {
        (
            http_get(port, "/flower/healthcheck"),
            http_get(port, "/healthcheck"),
            head(port, "/flower/api/task/types", "").expect("an answer"),
        )
    })
    .await
    .expect("joined");
    assert_eq!(prefixed, Some((200, "OK".to_owned())));
    assert_eq!(bare.map(|(s, _)| s), Some(404));
    let tag = first
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .expect("an ETag")
        .to_owned();
    assert!(tag.starts_with('"') && tag.len() == 42, "{tag}");
    let again = tokio::task::spawn_blocking(move || {
        head(
            port,
            "/flower/api/task/types",
            &format!("If-None-Match: {tag}\r\n"),
        )
        .expect("an answer")
    })
    .await
    .expect("joined");
    assert!(again.starts_with("HTTP/1.0 304"), "{again}");
    serving.abort();
    monitor.stop().await;
}
