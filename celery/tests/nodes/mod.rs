//! The worker nodes the remote-control and event tests start: a Celery worker of kombu-rs
//! with `tasks.add` and `tasks.sleep`, a memory result backend, and how to ask it.

#![allow(dead_code)] // each test file uses the part it needs

use std::sync::Arc;
use std::time::Duration;

use kombu_celery::Task;
use kombu_celery::backend::MemoryResultBackend;
use kombu_celery::control::{Broadcast, Control};
use kombu_celery::worker::{TaskContext, TaskSettings, Worker, WorkerHandle};
use kombu_core::Connection;
use serde_json::{Map, Value as Json};

pub const ADD: Task<(i64, i64), i64> = Task::new("tasks.add");
pub const SLEEP: Task<(f64,), f64> = Task::new("tasks.sleep");
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Node {
    pub name: String,
    pub queue: String,
    pub handle: WorkerHandle,
    pub running: tokio::task::JoinHandle<kombu_core::Result<()>>,
    pub results: Arc<MemoryResultBackend>,
}

pub async fn node(
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

pub fn to(node: &Node) -> Broadcast {
    Broadcast::new()
        .destination(node.name.as_str())
        .timeout(Duration::from_secs(5))
}

/// The one reply of `node` to `method`.
pub async fn ask(control: &Control, node: &Node, method: &str, args: Json) -> Json {
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
pub async fn answering(control: &Control, node: &Node) {
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
