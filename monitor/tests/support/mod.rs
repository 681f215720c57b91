//! What the monitor's tests share: serving a monitor on a free loopback port.

use kombu_monitor::Monitor;

/// Serves `monitor` on a free loopback port: the port and the server's task (abort it to
/// stop serving).
pub async fn serve(monitor: &Monitor) -> (u16, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let app = monitor.router();
    (
        port,
        tokio::spawn(async move { axum::serve(listener, app).await }),
    )
}

/// `tasks.add`, the task the monitor's tests run.
#[allow(dead_code)] // not every test file runs a worker
pub const ADD: kombu_celery::Task<(i64, i64), i64> = kombu_celery::Task::new("tasks.add");

/// A Rust worker `node` on `queue` with task events, running `tasks.add`: its handle (to stop
/// it) and its task.
#[allow(dead_code)] // not every test file runs a worker
pub fn add_worker(
    conn: &kombu_core::Connection,
    node: &str,
    queue: &str,
) -> (
    kombu_celery::worker::WorkerHandle,
    tokio::task::JoinHandle<kombu_core::Result<()>>,
) {
    let worker = kombu_celery::worker::Worker::builder(conn)
        .hostname(node)
        .queue(queue)
        .concurrency(1)
        .task_events(true)
        .task(
            ADD,
            |(x, y), _: kombu_celery::worker::TaskContext| async move { Ok(x + y) },
        )
        .build()
        .expect("a worker");
    let handle = worker.handle();
    (handle, tokio::spawn(worker.run()))
}
