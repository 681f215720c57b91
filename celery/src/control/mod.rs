//! Celery's remote control (`celery-monitoring.md` §2): commands broadcast to workers through
//! kombu's `celery.pidbox` mailbox, replies back to the caller's own reply queue, so
//! `celery inspect`, `celery control`, Flower and this crate steer Python and Rust workers
//! alike.
//!
//! - Commands go to the fanout exchange [`PIDBOX_EXCHANGE`] (non-durable); each worker
//!   listens on `<node>.celery.pidbox` (exclusive, auto-delete, expiring 10 s after its
//!   worker is gone, its messages after 300 s) and handles the commands addressed to it (a
//!   `destination` list naming it, a glob `pattern` matching it, or everyone).
//! - Replies (`{node: payload}`) go to the direct exchange [`REPLY_EXCHANGE`] with the
//!   caller's id as routing key, which binds the caller's queue `<id>.reply.celery.pidbox`;
//!   the `ticket` header tells the command they answer.
//! - [`Control`] is the caller: [`Control::broadcast`] collects replies until none came for
//!   the timeout (Celery's idle timeout) or as many as the destinations named came;
//!   [`Control::cast`] sends without waiting.

mod client;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

pub use client::{Broadcast, Control, DEFAULT_TIMEOUT};

/// The mailbox's exchange (Celery's `control_exchange` `celery`, as a kombu pidbox).
pub const PIDBOX_EXCHANGE: &str = "celery.pidbox";
/// Where replies go.
pub const REPLY_EXCHANGE: &str = "reply.celery.pidbox";

/// The name of a worker's mailbox queue.
pub fn mailbox_queue(node: &str) -> String {
    format!("{node}.{PIDBOX_EXCHANGE}")
}

/// The name of a caller's reply queue.
pub fn reply_queue(oid: &str) -> String {
    format!("{oid}.{REPLY_EXCHANGE}")
}

/// A command as it goes on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Command {
    /// The command (`ping`, `revoke`, ...).
    pub method: String,
    /// Its keyword arguments.
    #[serde(default)]
    pub arguments: Map<String, Json>,
    /// The nodes it is for (`None`: every node, unless `pattern`).
    #[serde(default)]
    pub destination: Option<Vec<String>>,
    /// A node-name pattern, used when `destination` is unset.
    #[serde(default)]
    pub pattern: Option<String>,
    /// How `pattern` matches: `glob` (the default) or `pcre`.
    #[serde(default)]
    pub matcher: Option<String>,
    /// The ticket replies carry (only when replies are wanted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// Where replies go (only when replies are wanted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyTo>,
}

/// Where a command's replies go.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplyTo {
    /// The reply exchange ([`REPLY_EXCHANGE`]).
    pub exchange: String,
    /// The caller's id.
    pub routing_key: String,
}

impl Command {
    /// Whether node `name` handles it (kombu's `Node.handle_message`): named in a non-empty
    /// `destination`; else matched by `pattern` (glob; `pcre` is read as a regular
    /// expression of the common kind: only `.`, `*`, `+`, `?`, `^`, `$` and literal text);
    /// else everyone.
    pub fn is_for(&self, name: &str) -> bool {
        if let Some(destination) = self.destination.as_ref().filter(|d| !d.is_empty()) {
            return destination.iter().any(|d| d == name);
        }
        match (&self.pattern, &self.matcher) {
            (Some(pattern), matcher) if !pattern.is_empty() => match matcher.as_deref() {
                Some("pcre") => simple_regex(pattern, name),
                _ => glob(pattern, name),
            },
            _ => true,
        }
    }
}

/// One element of a glob.
enum Tok {
    Star,
    Any,
    Char(char),
    /// `[...]`: ranges, and whether negated (`[!...]`).
    Class(Vec<(char, char)>, bool),
}

fn tokens(pattern: &str) -> Vec<Tok> {
    let p: Vec<char> = pattern.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '*' => {
                if !matches!(out.last(), Some(Tok::Star)) {
                    out.push(Tok::Star);
                }
                i += 1;
            }
            '?' => {
                out.push(Tok::Any);
                i += 1;
            }
            '[' => match p[i + 1..].iter().skip(1).position(|c| *c == ']') {
                // The first character of a class may be `]` itself.
                Some(at) => {
                    let end = i + 2 + at;
                    let mut set = &p[i + 1..end];
                    let negate = set.first() == Some(&'!');
                    if negate {
                        set = &set[1..];
                    }
                    let mut ranges = Vec::new();
                    let mut k = 0;
                    while k < set.len() {
                        if k + 2 < set.len() && set[k + 1] == '-' {
                            ranges.push((set[k], set[k + 2]));
                            k += 3;
                        } else {
                            ranges.push((set[k], set[k]));
                            k += 1;
                        }
                    }
                    out.push(Tok::Class(ranges, negate));
                    i = end + 1;
                }
                None => {
                    out.push(Tok::Char('['));
                    i += 1;
                }
            },
            c => {
                out.push(Tok::Char(c));
                i += 1;
            }
        }
    }
    out
}

/// Shell-style matching (`fnmatch`): `*`, `?`, `[...]`, `[!...]`; linear in the name for
/// each star (no exponential backtracking on `***...x`).
pub fn glob(pattern: &str, name: &str) -> bool {
    let toks = tokens(pattern);
    let n: Vec<char> = name.chars().collect();
    let one = |tok: &Tok, c: char| match tok {
        Tok::Any => true,
        Tok::Char(want) => *want == c,
        Tok::Class(ranges, negate) => ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negate,
        Tok::Star => false,
    };
    let (mut t, mut i) = (0, 0);
    // Where the last star was, and the name position it is tried from.
    let mut star: Option<(usize, usize)> = None;
    while i < n.len() {
        match toks.get(t) {
            Some(Tok::Star) => {
                star = Some((t, i));
                t += 1;
            }
            Some(tok) if one(tok, n[i]) => {
                t += 1;
                i += 1;
            }
            _ => match star {
                // Let the last star take one more character.
                Some((at, from)) => {
                    t = at + 1;
                    i = from + 1;
                    star = Some((at, from + 1));
                }
                None => return false,
            },
        }
    }
    toks[t..].iter().all(|tok| matches!(tok, Tok::Star))
}

/// The common subset of regular expressions, anchored at the start as Python's `re.match`.
fn simple_regex(pattern: &str, name: &str) -> bool {
    let mut glob_pattern = String::new();
    let mut chars = pattern.trim_start_matches('^').chars().peekable();
    let anchored_end = pattern.ends_with('$');
    while let Some(c) = chars.next() {
        match c {
            '$' if chars.peek().is_none() => {}
            '.' => match chars.peek() {
                Some('*') | Some('+') => {
                    chars.next();
                    glob_pattern.push('*');
                }
                _ => glob_pattern.push('?'),
            },
            '\\' => {
                if let Some(next) = chars.next() {
                    glob_pattern.push_str(&format!("[{next}]"));
                }
            }
            c => glob_pattern.push(c),
        }
    }
    if !anchored_end {
        glob_pattern.push('*');
    }
    glob(&glob_pattern, name)
}

#[cfg(test)]
mod tests {
    use super::{Command, glob};
    use serde_json::json;

    fn command(value: serde_json::Value) -> Command {
        serde_json::from_value(value).expect("a command")
    }

    #[test]
    fn a_command_reaches_the_nodes_it_names() {
        let all = command(json!({"method": "ping", "arguments": {}, "destination": null}));
        assert!(all.is_for("w1@h"));
        let named = command(json!({"method": "ping", "destination": ["w2@h"]}));
        assert!(named.is_for("w2@h") && !named.is_for("w1@h"));
        let empty = command(json!({"method": "ping", "destination": []}));
        assert!(empty.is_for("w1@h"), "an empty list is everyone");
        let pattern = command(json!({"method": "ping", "pattern": "w*@h", "matcher": "glob"}));
        assert!(pattern.is_for("w1@h") && !pattern.is_for("x@h"));
        let regex = command(json!({"method": "ping", "pattern": "w.*@h", "matcher": "pcre"}));
        assert!(regex.is_for("w12@h") && !regex.is_for("x@h"));
    }

    #[test]
    fn globs_match_as_fnmatch() {
        assert!(glob("celery@*", "celery@host"));
        assert!(glob("w?@h", "w1@h"));
        assert!(glob("w[0-9]@h", "w5@h") && !glob("w[!0-9]@h", "w5@h"));
        assert!(!glob("w1", "w12"));
        assert!(glob("*a*b", "xxaxxb") && !glob("*a*b", "xxaxxc"));
        assert!(glob("[]]x", "]x"));
        // Many stars against a name that does not match: quick, not exponential.
        let stars = format!("{}x", "*".repeat(40));
        assert!(!glob(&stars, &"a".repeat(200)));
    }

    #[test]
    fn a_cast_has_no_ticket_on_the_wire() {
        let cast = command(json!({"method": "heartbeat", "arguments": {}}));
        let wire = serde_json::to_value(&cast).expect("json");
        assert!(wire.get("ticket").is_none() && wire.get("reply_to").is_none());
        assert_eq!(wire["destination"], json!(null));
    }
}
