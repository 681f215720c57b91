//! `kombu monitor` as a user runs it: the binary on a broker, read-only, its OpenAPI document
//! at `/api/openapi.json`, and schemathesis (PyPI, in the venv) calling every documented
//! operation with generated arguments (a bounded number of examples) and checking each answer
//! against the document: no server error, documented status codes, content types and JSON
//! shapes. Read-only mode makes every steering call a documented 403, so nothing is steered.

mod cli_support;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cli_support::{redis_url_with_prefix, unique};
use kombu_test_support::http::{free_port, get};

/// The monitor process, killed when dropped (its output printed when the test fails).
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() {
            let mut out = String::new();
            if let Some(mut err) = self.0.stderr.take() {
                let _ = err.read_to_string(&mut out);
            }
            eprintln!("the monitor's stderr:\n{out}");
        }
    }
}

#[test]
fn the_openapi_document_holds_for_every_answer() {
    let Some(python) = kombu_test_support::python() else {
        return;
    };
    let url = redis_url_with_prefix(&unique("monitor-openapi"));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_kombu"))
        .args(["--url", &url, "monitor", "--read-only", "--listen", &listen])
        .args(["--queue", "openapi-q", "--backend", &url])
        .env_remove("KOMBU_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the monitor");
    let _served = Served(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(port, "/healthcheck").is_none_or(|(status, _)| status != 200) {
        assert!(Instant::now() < deadline, "the monitor never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = get(port, "/api/openapi.json").expect("the document");
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    // Every route the monitor serves is documented.
    for path in [
        "/api/tasks",
        "/api/workers",
        "/api/broker/queues",
        "/api/broker/queues/{name}/messages",
        "/api/broker/queues/{name}/replay",
        "/api/task/send-task/{name}",
        "/api/task/apply/{name}",
        "/api/task/abort/{id}",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not documented");
    }

    // Schemathesis keeps a cache in its working directory: a scratch one.
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let schemathesis = |extra: &[&str]| {
        let run = Command::new(&python)
            .current_dir(scratch.path())
            .args(["-m", "schemathesis.cli", "run"])
            .arg(format!("http://127.0.0.1:{port}/api/openapi.json"))
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_schema_conformance",
                "--max-examples",
                "15",
                "--workers",
                "1",
                "--request-timeout",
                "20",
                "--no-color",
            ])
            .args(extra)
            .output()
            .expect("run schemathesis");
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(
            run.status.success(),
            "schemathesis ({extra:?}) found problems:\n{out}"
        );
    };
    // Every operation with the boundary and invalid values the document implies (but the
    // live stream, which never ends).
    schemathesis(&["--phases", "coverage", "--exclude-path", "/api/live"]);
    // Random arguments, except for the task result, whose `timeout` would make each
    // generated request wait that long.
    schemathesis(&[
        "--phases",
        "fuzzing",
        "--exclude-path",
        "/api/task/result/{id}",
        "--exclude-path",
        "/api/live",
    ]);
}
