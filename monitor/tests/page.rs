//! The page as served: the document, its script and style sheet from the binary (nothing
//! from another site), the security headers, the workers' data the page reads, and the
//! password a browser is asked for when users are set.

use std::time::{Duration, Instant};

use kombu_core::Connection;
use kombu_monitor::Monitor;
use kombu_test_support::http::{get, head};
use serde_json::Value as Json;

mod support;

async fn fetch(port: u16, path: &str) -> (u16, String) {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || get(port, &path))
        .await
        .expect("joined")
        .expect("an answer")
}

async fn headers(port: u16, path: &str) -> String {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || head(port, &path, ""))
        .await
        .expect("joined")
        .expect("an answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_its_assets_and_its_workers() {
    kombu_core::transport::memory::register();
    let conn = Connection::open(&format!("memory://page-{}", uuid::Uuid::new_v4().simple()))
        .await
        .expect("open");
    let monitor = Monitor::builder(&conn).start().await.expect("the monitor");
    let (port, server) = support::serve(&monitor).await;

    let (status, html) = fetch(port, "/").await;
    assert_eq!(status, 200);
    assert!(html.contains("<base href=\"/\">"), "{html}");
    for part in [
        "<html lang=\"en\">",
        "class=\"skip\" href=\"#main\"",
        "<nav aria-label=\"Sections\">",
        "src=\"static/monitor.js\"",
        "href=\"static/monitor.css\"",
        "role=\"status\" aria-live=\"polite\"",
        "<caption>",
    ] {
        assert!(html.contains(part), "the page lacks {part}");
    }
    let head = headers(port, "/").await.to_lowercase();
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'self'"),
        "{head}"
    );
    assert!(head.contains("x-frame-options: deny"), "{head}");
    for (path, kind) in [
        ("/static/monitor.js", "text/javascript"),
        ("/static/monitor.css", "text/css"),
    ] {
        let (status, body) = fetch(port, path).await;
        assert_eq!(status, 200, "{path}");
        assert!(!body.is_empty());
        // Nothing from elsewhere: no CDN, no absolute URL.
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path} names another site"
        );
        let head = headers(port, path).await.to_lowercase();
        assert!(head.contains(&format!("content-type: {kind}")), "{head}");
    }
    assert!(!html.contains("http://") && !html.contains("https://"));
    // Every API path the script reads exists.
    let (_, script) = fetch(port, "/static/monitor.js").await;
    for path in [
        "api/monitor/workers",
        "api/tasks",
        "api/task/info/",
        "api/broker/queues",
        "api/stats/series",
        "api/live",
    ] {
        assert!(script.contains(path), "the script does not read {path}");
    }

    // The workers' table data.
    let (handle, running) = support::add_worker(&conn, "page@test", "page");
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let (status, body) = fetch(port, "/api/monitor/workers").await;
        assert_eq!(status, 200);
        let data: Json = serde_json::from_str(&body).expect("JSON");
        if let Some(w) = data["workers"]
            .as_array()
            .and_then(|all| all.iter().find(|w| w["hostname"] == "page@test"))
            .filter(|w| w["online"] == true)
        {
            break w.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the worker never came online: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(seen["sw_ident"], "kombu-rs", "{seen}");
    assert_eq!(seen["failed"], 0, "{seen}");
    handle.stop();
    let _ = running.await;
    server.abort();
    monitor.stop().await;

    // Behind a prefix: the page names it as its base, and `<prefix>/` leads to it.
    let monitor = Monitor::builder(&conn)
        .url_prefix("flower")
        .start()
        .await
        .expect("the monitor");
    let (port, server) = support::serve(&monitor).await;
    let (status, html) = fetch(port, "/flower").await;
    assert_eq!(status, 200);
    assert!(html.contains("<base href=\"/flower/\">"), "{html}");
    for path in [
        "/flower/static/monitor.js",
        "/flower/static/monitor.css",
        "/flower/api/monitor/workers",
        "/flower/api/stats/series",
    ] {
        assert_eq!(fetch(port, path).await.0, 200, "{path}");
    }
    let head = headers(port, "/flower/").await;
    assert!(head.contains(" 308 "), "{head}");
    assert!(
        head.to_lowercase().contains("location: /flower\r\n"),
        "{head}"
    );
    let (_, html) = fetch(port, "/").await;
    assert!(!html.contains("<base"), "nothing outside the prefix");
    server.abort();
    monitor.stop().await;

    // With users, the page asks for a password as Flower does.
    let monitor = Monitor::builder(&conn)
        .basic_auth("ann", "secret")
        .start()
        .await
        .expect("the monitor");
    let (port, server) = support::serve(&monitor).await;
    let head = headers(port, "/").await;
    assert!(head.contains(" 401 "), "{head}");
    assert!(
        head.to_lowercase()
            .contains("www-authenticate: basic realm=\"kombu monitor\""),
        "{head}"
    );
    // The assets themselves hold nothing secret.
    assert_eq!(fetch(port, "/static/monitor.js").await.0, 200);
    server.abort();
    monitor.stop().await;

    // With a token only, a browser asks too, and the token is the password (any user name);
    // scripts send it as a bearer token.
    let monitor = Monitor::builder(&conn)
        .token("t0ken")
        .start()
        .await
        .expect("the monitor");
    let (port, server) = support::serve(&monitor).await;
    let head = headers(port, "/").await;
    assert!(head.contains(" 401 "), "{head}");
    assert!(
        head.to_lowercase().contains("www-authenticate: basic"),
        "{head}"
    );
    let ask = |path: &'static str, credentials: &'static str| {
        let line = format!("Authorization: {credentials}\r\n");
        async move {
            tokio::task::spawn_blocking(move || {
                kombu_test_support::http::request(port, "GET", path, "", &line)
            })
            .await
            .expect("joined")
            .map(|(status, _)| status)
        }
    };
    // "anyone:t0ken", "t0ken:t0ken", "anyone:t0ke" and "t0ken" (no colon) in base64.
    assert_eq!(ask("/", "Basic YW55b25lOnQwa2Vu").await, Some(200));
    assert_eq!(ask("/api/tasks", "Basic YW55b25lOnQwa2Vu").await, Some(200));
    assert_eq!(ask("/api/tasks", "Basic dDBrZW46dDBrZW4=").await, Some(200));
    assert_eq!(ask("/api/tasks", "Basic YW55b25lOnQwa2U=").await, Some(401));
    assert_eq!(ask("/api/tasks", "Basic dDBrZW4=").await, Some(401));
    assert_eq!(ask("/api/tasks", "Bearer t0ken").await, Some(200));
    server.abort();
    monitor.stop().await;
}
