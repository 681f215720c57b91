//! Helpers the transports' integration tests share: the Python interpreter with kombu and
//! Celery, child processes that die with the test, and their output as lines.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::Child;
use std::sync::mpsc;

/// The Python interpreter of the venv `scripts/python-env` makes (`$KOMBU_PYTHON`, else
/// `~/.cache/kombu-rs/venv/bin/python` when it exists). Without one: a panic when
/// `KOMBU_TEST_REQUIRE` is set (as in CI), else `None` with a "skipped" message.
pub fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("KOMBU_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            let venv = PathBuf::from(home).join(".cache/kombu-rs/venv/bin/python");
            venv.exists().then_some(venv)
        });
    if candidate.is_none() {
        let hint = "no Python with kombu and Celery: run scripts/python-env and set KOMBU_PYTHON";
        if std::env::var_os("KOMBU_TEST_REQUIRE").is_some() {
            panic!("{hint} (KOMBU_TEST_REQUIRE is set, so this is a failure)");
        }
        eprintln!("skipped: {hint}");
    }
    candidate
}

/// A child process that is killed (and reaped) when the guard drops, so a failing test
/// leaves no process behind.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads `output` (a child's stdout or stderr) on a thread of its own and hands each line
/// over the returned channel, which closes when the output ends.
pub fn lines(output: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
