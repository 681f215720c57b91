//! Child processes for the suite's crash mode and the transports' integration tests: a guard
//! that kills the child with the test, and the child's output as lines.

use std::io::{BufRead, BufReader, Read};
use std::process::Child;
use std::sync::mpsc;

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
