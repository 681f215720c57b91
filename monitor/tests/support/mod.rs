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
