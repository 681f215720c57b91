//! The page in a real browser: headless Chromium (Debian's `chromium`) driven through
//! ChromeDriver over WebDriver. On Redis and on RabbitMQ (a virtual host of the test's own) the
//! page lists a Python and a Rust Celery worker online, shows a task's state move from received
//! to succeeded as it happens, filters the tasks from the keyboard, opens a task's timeline and
//! shows a queue's depth; on SQLite (Celery sends no events over SQL brokers) the queue depth.
//! Every step leaves a screenshot in `target/browser-screenshots/` (a CI artifact).
//!
//! ChromeDriver is `$KOMBU_TEST_CHROMEDRIVER`, else `chromedriver` on the path; Chromium is
//! `$KOMBU_TEST_CHROMIUM`, else ChromeDriver's own choice. Without ChromeDriver the tests are
//! skipped, unless `KOMBU_TEST_REQUIRE` requires `chromium` (`all` does, as in CI); without
//! Chromium they fail.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use kombu_celery::worker::{TaskContext, Worker};
use kombu_celery::{Celery, Task, TaskOptions};
use kombu_core::Connection;
use kombu_monitor::Monitor;
use kombu_test_support::http::free_port;
use kombu_test_support::{CeleryWorker, brokers, python};
use serde_json::{Value as Json, json};

use support::ADD;
const MUL: Task<(i64, i64), i64> = Task::new("tasks.mul");
/// Waits until the test lets it finish (a permit of the gate).
const GATED: Task<(), ()> = Task::new("tasks.gated");
const WAIT: Duration = Duration::from_secs(40);

/// The Python worker's app: `tasks.mul`, events on (the worker's `-E` too).
const PYTHON_APP: &str = "import json, os\nfrom celery import Celery\n\
    app = Celery('kombu_rs_tasks', broker=os.environ['KOMBU_RS_BROKER'])\n\
    app.conf.broker_transport_options = json.loads(os.environ['KOMBU_RS_OPTIONS'])\n\
    app.conf.worker_send_task_events = True\n\
    @app.task(name='tasks.mul')\ndef mul(x, y):\n    return x * y\n";

/// ChromeDriver in a process group of its own, with the Chromium it starts: the whole group
/// killed when dropped (a failing test's browser too, whose session is never closed).
struct Driver(std::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A headless Chromium session and where its screenshots go.
struct Browser {
    client: Client,
    shots: PathBuf,
    prefix: String,
    _driver: Driver,
}

impl Browser {
    /// A session, or `None` (skipped) when there is no ChromeDriver and none is required.
    /// ChromeDriver logs to `<prefix>-chromedriver.log` beside the screenshots.
    async fn start(prefix: &str) -> Option<Browser> {
        use std::os::unix::process::CommandExt;
        let program =
            std::env::var("KOMBU_TEST_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".to_owned());
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .map(|target| target.join("browser-screenshots"))
            .expect("the target directory");
        std::fs::create_dir_all(&shots).expect("the screenshots' directory");
        let log = shots.join(format!("{prefix}-chromedriver.log"));
        // A port another process takes between free_port and ChromeDriver's bind: ChromeDriver
        // exits, and another port is tried.
        let mut tries = 0;
        let (driver, port) = loop {
            tries += 1;
            let port = free_port();
            let mut child = match Command::new(&program)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .process_group(0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            {
                Ok(child) => child,
                Err(e) if !brokers::required("chromium") => {
                    eprintln!("browser tests skipped: no {program} ({e})");
                    return None;
                }
                Err(e) => panic!("{program}: {e} (KOMBU_TEST_REQUIRE requires chromium)"),
            };
            tokio::time::sleep(Duration::from_millis(300)).await;
            match child.try_wait() {
                Ok(None) => break (Driver(child), port),
                exited if tries < 3 => eprintln!("{program} on {port} ended: {exited:?}"),
                exited => panic!(
                    "{program} ended three times ({exited:?}); see {}",
                    log.display()
                ),
            }
        };
        let mut options = json!({
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--hide-scrollbars", "--window-size=1280,900", "--lang=en-US",
            ],
        });
        if let Ok(binary) = std::env::var("KOMBU_TEST_CHROMIUM") {
            options["binary"] = json!(binary);
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".to_owned(), options);
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                // ChromeDriver still starting.
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no session from {program}: {e}; see {}", log.display()),
            }
        };
        Some(Browser {
            client,
            shots,
            prefix: prefix.to_owned(),
            _driver: driver,
        })
    }

    /// Saves a screenshot as `<prefix>-<name>.png`.
    async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        let path = self.shots.join(format!("{}-{name}.png", self.prefix));
        std::fs::write(&path, png).expect("write the screenshot");
    }

    /// What `script` (a function body) returns.
    async fn js(&self, script: &str) -> Json {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("the script failed: {e}\n{script}"))
    }

    /// Runs `script` until `done` holds for what it returns; returns that. On time out, a
    /// screenshot `<prefix>-failed-<what>.png` and a panic naming the last value.
    async fn until(&self, what: &str, script: &str, done: impl Fn(&Json) -> bool) -> Json {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.js(script).await;
            if done(&got) {
                return got;
            }
            if Instant::now() > deadline {
                self.shot(&format!("failed-{}", what.replace(' ', "-")))
                    .await;
                panic!("{what}: never came; last {got}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Presses and releases `key` where the focus is.
    async fn press(&self, key: char) {
        let keys = KeyActions::new("keyboard".to_owned())
            .then(KeyAction::Down { value: key })
            .then(KeyAction::Up { value: key });
        self.client
            .perform_actions(keys)
            .await
            .expect("a key pressed");
    }

    /// Types `text` where the focus is.
    async fn type_text(&self, text: &str) {
        for c in text.chars() {
            self.press(c).await;
        }
    }

    /// The focused element's id, or its class when it has none.
    async fn focused(&self) -> String {
        self.js("const e = document.activeElement; return e.id || e.className || e.tagName;")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// The rows of a table body as arrays of cell texts.
fn rows_of(body: &str) -> String {
    format!(
        "return [...document.querySelectorAll('#{body} tr')]\
         .map(r => [...r.children].map(c => c.textContent));"
    )
}

fn rows(got: &Json) -> Vec<Vec<String>> {
    serde_json::from_value(got.clone()).unwrap_or_default()
}

/// The row whose `column` reads `value`.
fn row_with(got: &Json, column: usize, value: &str) -> Option<Vec<String>> {
    rows(got)
        .into_iter()
        .find(|r| r.get(column).is_some_and(|c| c == value))
}

/// The Queues view: waits for `queue`'s row to read `ready` ready messages; returns the row.
async fn queue_row(browser: &Browser, queue: &str, ready: &str) -> Vec<String> {
    browser
        .client
        .find(Locator::Css("nav a[data-view=queues]"))
        .await
        .expect("the Queues link")
        .click()
        .await
        .expect("clicked");
    // The page asks every 5 s; the broker's report is 2 s old at most (RabbitMQ's
    // management figures up to 5 s more).
    let got = browser
        .until(
            &format!("{queue} ready {ready}"),
            &rows_of("queues-body"),
            |v| row_with(v, 0, queue).is_some_and(|r| r.get(1).is_some_and(|c| c == ready)),
        )
        .await;
    row_with(&got, 0, queue).unwrap_or_default()
}

/// A queue nobody consumes, holding three tasks.
async fn fill(conn: &Connection, queue: &str) {
    let celery = Celery::builder(conn).default_queue(queue).build();
    for n in 0..3 {
        celery
            .send_task(ADD.name(), (n, n), (), TaskOptions::new())
            .await
            .expect("sent");
    }
}

/// The page on `transport` (Redis or AMQP) with a Python and a Rust worker.
async fn workers_tasks_and_queues(transport: &'static str) {
    kombu_redis::register();
    kombu_amqp::register();
    let Some(python) = python() else { return };
    // On RabbitMQ a virtual host of the test's own: other tests' workers and events stay
    // out of view.
    let Some(broker) = brokers::isolated(transport, "browser") else {
        return;
    };
    let url = broker.url.clone();
    let Some(browser) = Browser::start(transport).await else {
        return;
    };
    let (py_url, options) = brokers::celery_side(transport, &url);
    let conn = Connection::open(&url).await.expect("open");
    let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let (rust_queue, py_queue, idle) = (
        format!("browser-rust-{id}"),
        format!("browser-py-{id}"),
        format!("browser-idle-{id}"),
    );
    let monitor = Monitor::builder(&conn)
        .queues([idle.as_str()])
        .start()
        .await
        .expect("the monitor");
    let (port, serving) = support::serve(&monitor).await;

    let rust_node = format!("rust-{id}@browser");
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let opened = gate.clone();
    let worker = Worker::builder(&conn)
        .hostname(rust_node.as_str())
        .queue(rust_queue.as_str())
        .concurrency(2)
        .task_events(true)
        .task(ADD, |(x, y), _: TaskContext| async move { Ok(x + y) })
        .task(GATED, move |(), _: TaskContext| {
            let gate = gate.clone();
            async move {
                // The test releases it once it saw the task running.
                if let Ok(permit) = gate.acquire().await {
                    permit.forget();
                }
                Ok(())
            }
        })
        .build()
        .expect("a worker");
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());
    let py_worker = CeleryWorker::start_with_events(
        &python,
        "browser",
        PYTHON_APP,
        &py_queue,
        &[("KOMBU_RS_BROKER", &py_url), ("KOMBU_RS_OPTIONS", &options)],
    );
    let py_node = py_worker.node().to_owned();

    // Workers: both online, each with its software.
    browser
        .client
        .goto(&format!("http://127.0.0.1:{port}/"))
        .await
        .expect("the page");
    let workers = browser
        .until("both workers online", &rows_of("workers-body"), |v| {
            [&rust_node, &py_node].iter().all(|node| {
                row_with(v, 0, node).is_some_and(|r| r.get(1).is_some_and(|c| c == "online"))
            })
        })
        .await;
    let software = |node: &str| row_with(&workers, 0, node).and_then(|r| r.get(7).cloned());
    assert!(
        software(&rust_node).is_some_and(|s| s.starts_with("kombu-rs")),
        "{workers}"
    );
    assert!(
        software(&py_node).is_some_and(|s| s.starts_with("py-celery")),
        "{workers}"
    );
    browser.shot("workers").await;

    // The keyboard: the skip link first, then the sections; Enter on Tasks shows the tasks and
    // moves the focus to their heading.
    browser.press(Key::Tab.into()).await;
    assert_eq!(browser.focused().await, "skip");
    browser.press(Key::Tab.into()).await;
    browser.press(Key::Tab.into()).await;
    let link = browser
        .js("return document.activeElement.dataset.view || null;")
        .await;
    assert_eq!(link, json!("tasks"), "two tabs on: the Tasks link");
    browser.press(Key::Enter.into()).await;
    browser
        .until(
            "the tasks view",
            "return !document.getElementById('view-tasks').hidden;",
            |v| v == &json!(true),
        )
        .await;
    assert_eq!(browser.focused().await, "h-tasks");

    // A task's state as it moves: seen running (it waits for the gate), then succeeded.
    let celery = Celery::builder(&conn).build();
    let slow = celery
        .send_task(
            GATED.name(),
            (),
            (),
            TaskOptions::new().queue(rust_queue.as_str()),
        )
        .await
        .expect("sent");
    let added = celery
        .send_task(
            ADD.name(),
            (2, 3),
            (),
            TaskOptions::new().queue(rust_queue.as_str()),
        )
        .await
        .expect("sent");
    let multiplied = celery
        .send_task(
            MUL.name(),
            (6, 7),
            (),
            TaskOptions::new().queue(py_queue.as_str()),
        )
        .await
        .expect("sent");
    let state_of = |id: String| move |v: &Json| row_with(v, 5, &id).and_then(|r| r.get(1).cloned());
    let early = browser
        .until(
            "the slow task received or started",
            &rows_of("tasks-body"),
            |v| state_of(slow.clone())(v).is_some_and(|s| s == "RECEIVED" || s == "STARTED"),
        )
        .await;
    browser.shot("tasks-running").await;
    let slow_row = row_with(&early, 5, &slow).unwrap_or_default();
    assert_eq!(slow_row.first().map(String::as_str), Some("tasks.gated"));
    opened.add_permits(1);
    let done = browser
        .until("every task succeeded", &rows_of("tasks-body"), |v| {
            [&slow, &added, &multiplied]
                .iter()
                .all(|id| state_of((*id).clone())(v).is_some_and(|s| s == "SUCCESS"))
        })
        .await;
    assert_eq!(
        row_with(&done, 5, &multiplied).and_then(|r| r.get(2).cloned()),
        Some(py_node.clone()),
        "the Python worker ran tasks.mul"
    );
    assert_eq!(
        row_with(&done, 5, &added).and_then(|r| r.get(2).cloned()),
        Some(rust_node.clone()),
        "the Rust worker ran tasks.add"
    );
    browser.shot("tasks-done").await;

    // Filtering from the keyboard: from the heading, Tab to the state, Tab to the task name,
    // type, Enter submits.
    browser.press(Key::Tab.into()).await;
    browser.press(Key::Tab.into()).await;
    let field = browser
        .js("return document.activeElement.name || null;")
        .await;
    assert_eq!(field, json!("taskname"));
    browser.type_text("tasks.mul").await;
    browser.press(Key::Enter.into()).await;
    let filtered = browser
        .until("only tasks.mul", &rows_of("tasks-body"), |v| {
            let rows = rows(v);
            !rows.is_empty()
                && rows
                    .iter()
                    .all(|r| r.first().is_some_and(|n| n == "tasks.mul"))
        })
        .await;
    assert!(row_with(&filtered, 5, &multiplied).is_some(), "{filtered}");
    browser.shot("tasks-filtered").await;

    // A task's page: its facts, its timeline from received to succeeded, the focus on it.
    browser
        .client
        .find(Locator::Css(&format!(
            "#tasks-body tr[data-uuid='{multiplied}'] button"
        )))
        .await
        .expect("the task's button")
        .click()
        .await
        .expect("clicked");
    let timeline = browser
        .until(
            "the task's timeline",
            "return [...document.querySelectorAll('#task-timeline strong')]\
             .map(s => s.textContent);",
            |v| v.as_array().is_some_and(|a| a.len() >= 3),
        )
        .await;
    assert_eq!(timeline, json!(["received", "started", "succeeded"]));
    let facts = browser
        .js("return document.getElementById('task-facts').textContent;")
        .await;
    let facts = facts.as_str().unwrap_or_default();
    assert!(facts.contains("result42"), "{facts}");
    assert!(facts.contains(&format!("worker{py_node}")), "{facts}");
    assert_eq!(browser.focused().await, "h-task");
    browser.shot("task").await;

    // Queues: the idle queue's depth, the workers' queues consumed.
    fill(&conn, &idle).await;
    let row = queue_row(&browser, &idle, "3").await;
    assert_eq!(
        row.get(8).map(String::as_str),
        Some("–"),
        "no worker: {row:?}"
    );
    // Consumers where the broker counts them (RabbitMQ), the workers everywhere (once the
    // monitor's inspect of each has been answered: a worker's mailbox may listen after it
    // announced itself).
    let got = browser
        .until("the workers' queues", &rows_of("queues-body"), |v| {
            [(&rust_queue, &rust_node), (&py_queue, &py_node)]
                .iter()
                .all(|(queue, node)| row_with(v, 0, queue).is_some_and(|r| r.get(8) == Some(*node)))
        })
        .await;
    let column = |queue: &str, n: usize| row_with(&got, 0, queue).and_then(|r| r.get(n).cloned());
    let consumers = if transport == "amqp" { "1" } else { "–" };
    for (queue, node) in [(&rust_queue, &rust_node), (&py_queue, &py_node)] {
        assert_eq!(column(queue, 3).as_deref(), Some(consumers), "{got}");
        assert_eq!(column(queue, 8).as_ref(), Some(node), "{got}");
    }
    browser.shot("queues").await;

    // Charts: the tasks counted.
    browser
        .client
        .find(Locator::Css("nav a[data-view=charts]"))
        .await
        .expect("the Charts link")
        .click()
        .await
        .expect("clicked");
    browser
        .until(
            "the throughput summary",
            "return document.getElementById('throughput-summary').textContent;",
            |v| {
                v.as_str()
                    .is_some_and(|s| s.contains("succeeded: 3 in ten minutes"))
            },
        )
        .await;
    browser.shot("charts").await;

    let _ = browser.client.close().await;
    handle.stop();
    let _ = tokio::time::timeout(WAIT, running).await;
    drop(py_worker);
    serving.abort();
    monitor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rust_workers_on_redis() {
    workers_tasks_and_queues("redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rust_workers_on_rabbitmq() {
    workers_tasks_and_queues("amqp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depth_on_sqlite() {
    kombu_sqlite::register();
    let Some(broker) = brokers::broker("sqlite", "browser") else {
        return;
    };
    let Some(browser) = Browser::start("sqlite").await else {
        return;
    };
    let conn = Connection::open(&broker.url).await.expect("open");
    let queue = format!(
        "browser-idle-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let monitor = Monitor::builder(&conn)
        .queues([queue.as_str()])
        .start()
        .await
        .expect("the monitor");
    let (port, serving) = support::serve(&monitor).await;
    fill(&conn, &queue).await;
    browser
        .client
        .goto(&format!("http://127.0.0.1:{port}/"))
        .await
        .expect("the page");
    queue_row(&browser, &queue, "3").await;
    // The oldest message's age, as observed from the second report on: at least this old.
    browser
        .until("the oldest message's age", &rows_of("queues-body"), |v| {
            row_with(v, 0, &queue)
                .and_then(|r| r.get(4).cloned())
                .is_some_and(|age| age.ends_with(" s (at least)"))
        })
        .await;
    let transport = browser
        .js("return document.getElementById('queues-transport').textContent;")
        .await;
    assert_eq!(transport, json!("Transport: sqlite"));
    let notes = browser
        .js("return document.getElementById('queues-unreported').children.length;")
        .await;
    assert!(
        notes.as_u64().is_some_and(|n| n > 0),
        "what SQLite cannot tell"
    );
    browser.shot("queues").await;
    let _ = browser.client.close().await;
    serving.abort();
    monitor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_opens_the_page_as_its_password() {
    kombu_core::transport::memory::register();
    let Some(browser) = Browser::start("token").await else {
        return;
    };
    let conn = Connection::open(&format!(
        "memory://browser-{}",
        uuid::Uuid::new_v4().simple()
    ))
    .await
    .expect("open");
    let monitor = Monitor::builder(&conn)
        .token("t0ken")
        .start()
        .await
        .expect("the monitor");
    let (port, serving) = support::serve(&monitor).await;
    let (handle, running) = support::add_worker(&conn, "token@browser", "browser");
    // What a user types at the browser's prompt, given in the address: any name, the token.
    browser
        .client
        .goto(&format!("http://anyone:t0ken@127.0.0.1:{port}/"))
        .await
        .expect("the page");
    // The page's calls and its live stream carry the same credentials.
    browser
        .until("the worker listed", &rows_of("workers-body"), |v| {
            row_with(v, 0, "token@browser").is_some()
        })
        .await;
    browser
        .until(
            "the live stream",
            "return document.getElementById('link').textContent;",
            |v| v == &json!("Live"),
        )
        .await;
    // Later visits without the password in the address: the browser sends it by itself.
    browser
        .client
        .goto(&format!("http://127.0.0.1:{port}/#queues"))
        .await
        .expect("the page again");
    browser
        .until(
            "the queues view, live",
            "return [document.getElementById('link').textContent, \
             document.getElementById('queues-transport').textContent];",
            |v| v == &json!(["Live", "Transport: memory"]),
        )
        .await;
    browser.shot("workers").await;
    let _ = browser.client.close().await;
    handle.stop();
    let _ = tokio::time::timeout(WAIT, running).await;
    serving.abort();
    monitor.stop().await;
}
