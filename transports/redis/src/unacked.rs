//! kombu's ack emulation: the `unacked` hash (take field → `[envelope, exchange,
//! routing_key]`) and the `unacked_index` sorted set (field → delivery time). Restoring
//! messages whose lease passed (the sweep, under `unacked_mutex`, kombu's `restore_visible`),
//! restoring one on request, and reading the entries Python kombu writes too.

use std::time::{Duration, Instant};

use kombu_core::transport::unix_now;
use kombu_core::transport::virtual_transport::{Envelope, Receipt, envelope};
use kombu_core::{Error, ErrorKind, Result};
use redis::AsyncCommands;

use crate::backend::{RedisBackend, payload, priority_of};
use crate::connect::redis_error;

/// At most one sweep for expired leases per this interval per connection.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// Overdue messages restored per batch of a sweep.
const SWEEP_BATCH: usize = 100;
/// Most batches of one sweep.
const SWEEP_ROUNDS: usize = 20;

/// A receipt is the message's field in `unacked` (one per take).
pub(crate) fn field_of(receipt: &Receipt) -> Result<&str> {
    match receipt {
        Receipt::Key(key) => Ok(key),
        Receipt::Id(_) | Receipt::Unleased => Err(Error::new(
            ErrorKind::Settlement,
            "redis receipts are unacked fields",
        )),
    }
}

/// The envelope of an unacked entry (`[envelope, exchange, routing_key]`) as it was stored,
/// marked redelivered as Python kombu's restore marks it (`headers.redelivered` and
/// `properties.delivery_info.redelivered`, or the envelope's own `redelivered` when it has
/// neither object), and otherwise unchanged: what Python's `json.dumps` wrote beyond RFC JSON
/// (`NaN`, `Infinity`, lone surrogates) goes back as it was, as Python's own restore writes it.
/// `None` when the text is not such an entry.
fn restored_envelope(stored: &str) -> Option<String> {
    let b = stored.as_bytes();
    let open = skip_ws(b, 0);
    if b.get(open) != Some(&b'[') {
        return None;
    }
    let start = skip_ws(b, open + 1);
    if b.get(start) != Some(&b'{') {
        return None;
    }
    let end = value_end(b, start)?;
    let env = b.get(start..end)?;
    let top = object_members(env, 0)?;
    let mut edits: Vec<(usize, usize, &str)> = Vec::new();
    let mut marked = false;
    let find = |members: &[(String, usize, usize)], key: &str| {
        members
            .iter()
            .find(|(k, ..)| k == key)
            .map(|(_, s, e)| (*s, *e))
            .filter(|(s, _)| env.get(*s) == Some(&b'{'))
    };
    if let Some((s, e)) = find(&top, "headers") {
        mark_redelivered(env, s, e, &mut edits)?;
        marked = true;
    }
    if let Some((s, _)) = find(&top, "properties") {
        let properties = object_members(env, s)?;
        if let Some((s, e)) = find(&properties, "delivery_info") {
            mark_redelivered(env, s, e, &mut edits)?;
            marked = true;
        }
    }
    if !marked {
        mark_redelivered(env, 0, env.len(), &mut edits)?;
    }
    // Every offset is that of an ASCII byte, so a char boundary.
    let mut out = std::str::from_utf8(env).ok()?.to_owned();
    edits.sort_by_key(|(at, ..)| *at);
    for (at, remove, insert) in edits.into_iter().rev() {
        out.replace_range(at..at + remove, insert);
    }
    Some(out)
}

/// Sets `"redelivered": true` in the JSON object `b[start..end]`: its own member's value
/// replaced, or a member added at its end (as Python adds a key to a dict).
fn mark_redelivered(
    b: &[u8],
    start: usize,
    end: usize,
    edits: &mut Vec<(usize, usize, &'static str)>,
) -> Option<()> {
    let members = object_members(b, start)?;
    if let Some((_, s, e)) = members.iter().find(|(k, ..)| k == "redelivered") {
        edits.push((*s, e - s, "true"));
    } else if members.is_empty() {
        edits.push((end - 1, 0, "\"redelivered\": true"));
    } else {
        edits.push((end - 1, 0, ", \"redelivered\": true"));
    }
    Some(())
}

/// The index of the first byte at or after `i` that is not JSON whitespace.
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// The end (exclusive) of the JSON string starting at `b[i]` (a `"`).
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match b.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

/// The end (exclusive) of the JSON value starting at `b[i]`; scalars (numbers, `true`,
/// Python's `NaN`…) end at the next delimiter.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j)? {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while b
                .get(j)
                .is_some_and(|c| !matches!(c, b',' | b']' | b'}') && !c.is_ascii_whitespace())
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// The members of the JSON object starting at `b[start]` (a `{`): key, and where its value
/// starts and ends.
fn object_members(b: &[u8], start: usize) -> Option<Vec<(String, usize, usize)>> {
    if b.get(start) != Some(&b'{') {
        return None;
    }
    let mut out = Vec::new();
    let mut i = skip_ws(b, start + 1);
    if b.get(i) == Some(&b'}') {
        return Some(out);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(b, i)?;
        let key: String = std::str::from_utf8(b.get(i..key_end)?)
            .ok()
            .and_then(|k| serde_json::from_str(k).ok())
            .unwrap_or_default();
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(b, i + 1);
        let value_stop = value_end(b, value_start)?;
        out.push((key, value_start, value_stop));
        i = skip_ws(b, value_stop);
        match b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            b'}' => return Some(out),
            _ => return None,
        }
    }
}

/// The stored bytes and the queue of an entry [`TAKE`](crate::scripts::TAKE) wrote for a
/// message that is not a kombu envelope: `[` raw `, "", "<queue>"]` (the default exchange and
/// the queue, as a JSON string, last). `None` when `stored` is not of that shape.
fn unreadable_entry(stored: &[u8]) -> Option<(&[u8], String)> {
    // Without the `[` and the `]`: raw, `, "", `, the queue's JSON string.
    let inner = stored.strip_prefix(b"[")?.strip_suffix(b"]")?;
    let close = inner.len().checked_sub(1).filter(|i| inner[*i] == b'"')?;
    // The queue's opening quote: the last `"` before the closing one that is not escaped
    // (preceded by an even number of backslashes); JSON escapes every quote in a string.
    let open = (0..close).rev().find(|&i| {
        inner[i] == b'"' && inner[..i].iter().rev().take_while(|c| **c == b'\\').count() % 2 == 0
    })?;
    let queue: String = serde_json::from_slice(inner.get(open..)?).ok()?;
    let raw = inner.get(..open)?.strip_suffix(b", \"\", ")?;
    Some((raw, queue))
}

/// An unacked entry read: the envelope, the exchange and the routing key it was published
/// with (kombu's restore routes it again by them).
fn parse_unacked(stored: &str) -> Result<(Envelope, String, String)> {
    let bad = || {
        Error::new(
            ErrorKind::Protocol,
            "unacked entry is not [envelope, exchange, routing_key]",
        )
    };
    // Written by Python kombu too: json.dumps may put NaN or Infinity in it (null in this
    // tree; what is restored is the stored text, see `restored_envelope`).
    let value: serde_json::Value = kombu_core::serializers::from_python_json(stored.as_bytes())
        .map_err(|e| bad().with_source(e))?;
    let serde_json::Value::Array(mut parts) = value else {
        return Err(bad());
    };
    if parts.len() < 3 {
        return Err(bad());
    }
    let routing_key = parts
        .pop()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let exchange = parts
        .pop()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let env = parts.pop().ok_or_else(bad)?;
    Ok((envelope::from_json(env)?, exchange, routing_key))
}

impl RedisBackend {
    /// Restores messages whose lease passed (ours or Python's), kombu's `restore_visible`: by
    /// the visibility rule, those whose take (or last extension) is at least `visibility`, the
    /// restorer's own timeout, ago.
    pub(crate) async fn sweep(&self, visibility: Duration) -> Result<()> {
        {
            let mut last = self.last_sweep.lock();
            // A recent sweep with this timeout or a shorter one restored all this one would.
            if last.is_some_and(|(t, v)| t.elapsed() < SWEEP_EVERY && v <= visibility) {
                return Ok(());
            }
            *last = Some((Instant::now(), visibility));
        }
        // An ack the virtual channel still holds is of a lease that does not end soon (it
        // writes those of leases about to end at once), so nothing acked here looks overdue.
        let mut conn = self.conn().await?;
        let o = &self.options;
        let ceiling = unix_now() - visibility.as_secs_f64();
        let mut overdue = redis::cmd("ZRANGEBYSCORE");
        overdue
            .arg(&o.unacked_index)
            .arg("-inf")
            .arg(ceiling)
            .arg("LIMIT")
            .arg(0)
            .arg(SWEEP_BATCH);
        let mut due: Vec<String> = overdue
            .query_async(&mut conn)
            .await
            .map_err(self.err("read unacked_index"))?;
        if due.is_empty() {
            return Ok(());
        }
        let token = uuid::Uuid::new_v4().to_string();
        let locked: Option<String> = redis::cmd("SET")
            .arg(&o.unacked_mutex)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(300_000)
            .query_async(&mut conn)
            .await
            .map_err(self.err("take unacked_mutex"))?;
        if locked.is_none() {
            return Ok(()); // another consumer is sweeping
        }
        // Batch after batch while the mutex is ours, up to SWEEP_ROUNDS of them.
        let mut result = Ok(());
        for _ in 0..SWEEP_ROUNDS {
            result = self.restore_tags(&due, None, Some(ceiling)).await;
            if result.is_err() || due.len() < SWEEP_BATCH {
                break;
            }
            due = match overdue.query_async::<Vec<String>>(&mut conn).await {
                Ok(due) if !due.is_empty() => due,
                Ok(_) => break,
                Err(e) => {
                    result = Err(redis_error(&self.label, "read unacked_index", e));
                    break;
                }
            };
        }
        let _: i64 = self
            .unlock
            .key(&o.unacked_mutex)
            .arg(&token)
            .invoke_async(&mut conn)
            .await
            .map_err(self.err("release unacked_mutex"))?;
        result
    }

    /// Restores unacked messages by their `unacked` field: to `queue` when known (our own
    /// deliveries), else to the queues their exchange routes them to now (kombu's rule; what
    /// kombu-rs took names the default exchange and its queue, so it goes back there). A sweep
    /// passes its `ceiling`: a lease whose score moved past it since (extended) stays.
    pub(crate) async fn restore_tags(
        &self,
        fields: &[String],
        queue: Option<&str>,
        ceiling: Option<f64>,
    ) -> Result<()> {
        let mut conn = self.conn().await?;
        let o = &self.options;
        for field in fields {
            // Bytes: an unreadable message's entry need not be UTF-8.
            let stored: Option<Vec<u8>> = conn
                .hget(&o.unacked, field)
                .await
                .map_err(self.err("read unacked"))?;
            let Some(stored) = stored else {
                // Settled meanwhile: drop the index entry.
                let _: i64 = conn
                    .zrem(&o.unacked_index, field)
                    .await
                    .map_err(self.err("clean unacked_index"))?;
                continue;
            };
            let text = std::str::from_utf8(&stored).ok();
            let parsed = text
                .ok_or_else(|| Error::new(ErrorKind::Protocol, "unacked entry is not UTF-8"))
                .and_then(parse_unacked);
            let (mut env, exchange, routing_key) = match parsed {
                Ok(parts) => parts,
                Err(err) => {
                    if let Some((raw, taken_from)) = unreadable_entry(&stored) {
                        // An unreadable message whose take ended before it was set aside (its
                        // consumer died): back to its queue as it was stored, to be set aside
                        // by the next take.
                        let target = queue.map_or(taken_from, str::to_owned);
                        let _: i64 = self
                            .restore
                            .key(&o.unacked)
                            .key(&o.unacked_index)
                            .key(o.list_key(&target, 0))
                            .arg(field)
                            .arg(raw)
                            .arg(ceiling.map_or_else(String::new, |c| c.to_string()))
                            .invoke_async(&mut conn)
                            .await
                            .map_err(self.err("restore"))?;
                        continue;
                    }
                    // Nobody can read it (Python's sweep neither): out of the index, so
                    // sweeps do not stall on it; the entry stays in the hash to inspect.
                    tracing::error!(url = %self.label, %field, error = %err, "unreadable unacked entry taken out of unacked_index");
                    let _: i64 = conn
                        .zrem(&o.unacked_index, field)
                        .await
                        .map_err(self.err("clean unacked_index"))?;
                    continue;
                }
            };
            env.redelivered = true;
            let queues: Vec<String> = match queue {
                Some(q) => vec![q.to_owned()],
                None => {
                    self.lookup(&exchange, &routing_key, &env.message.headers)
                        .await?
                }
            };
            let mut script = self.restore.key(&o.unacked);
            script.key(&o.unacked_index);
            for q in &queues {
                script.key(o.list_key(q, priority_of(&env)));
            }
            // What was stored, marked redelivered; re-encoded only if it cannot be edited.
            let body = text
                .and_then(restored_envelope)
                .filter(|text| {
                    envelope::decode(text.as_bytes()).is_ok_and(|restored| restored.redelivered)
                })
                .map_or_else(|| payload(&env), String::into_bytes);
            script
                .arg(field)
                .arg(body)
                .arg(ceiling.map_or_else(String::new, |c| c.to_string()));
            let _: i64 = script
                .invoke_async(&mut conn)
                .await
                .map_err(self.err("restore"))?;
        }
        self.wake.notify_waiters();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_entry_gives_back_its_bytes_and_queue() {
        let stored = b"[\xff not \"json\", \"\", \"q \\\"x\\\" \\\\\"]";
        let (raw, queue) = unreadable_entry(stored).expect("an entry TAKE wrote");
        assert_eq!(raw, b"\xff not \"json\"");
        assert_eq!(queue, "q \"x\" \\");
        for bad in [
            &b""[..],
            b"[]",
            b"[x]",
            b"[\"q\"]",
            b"[x, \"q\"]",
            b"[x, \"\", \"q]",
        ] {
            assert_eq!(unreadable_entry(bad), None);
        }
    }

    #[test]
    fn a_restored_entry_keeps_what_python_wrote() {
        // Python kombu's entry for a message with NaN and Infinity in its headers and a lone
        // surrogate; strings with braces, quotes and the key names in them.
        let stored = r#"[{"body": "eyJ4IjogTmFOfQ==", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"score": NaN, "hi": Infinity, "lo": -Infinity, "who": "a\ud800b", "odd": "}{\"redelivered\": false"}, "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "q"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "t-1"}}, "", "q"]"#;
        let restored = restored_envelope(stored).expect("an unacked entry");
        assert_eq!(
            restored,
            r#"{"body": "eyJ4IjogTmFOfQ==", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"score": NaN, "hi": Infinity, "lo": -Infinity, "who": "a\ud800b", "odd": "}{\"redelivered\": false", "redelivered": true}, "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "q", "redelivered": true}, "priority": 0, "body_encoding": "base64", "delivery_tag": "t-1"}}"#
        );
        let env = envelope::decode(restored.as_bytes()).expect("decode");
        assert!(env.redelivered);
        assert!(matches!(env.message.headers["score"], kombu_core::Value::Float(f) if f.is_nan()));

        // A marker already there is set, not repeated; empty objects get one; an envelope
        // without headers or delivery_info is marked on its own.
        let stored = r#"[ {"body": "x", "headers": {"redelivered": false}, "properties": {"delivery_info": {}}} , "ex", "rk"]"#;
        assert_eq!(
            restored_envelope(stored).as_deref(),
            Some(
                r#"{"body": "x", "headers": {"redelivered": true}, "properties": {"delivery_info": {"redelivered": true}}}"#
            )
        );
        assert_eq!(
            restored_envelope(r#"[{"body": "x"}, "", "q"]"#).as_deref(),
            Some(r#"{"body": "x", "redelivered": true}"#)
        );
        for bad in ["", "{}", "[1, 2]", r#"[{"body": "x""#, r#"[{"body" "x"}]"#] {
            assert_eq!(restored_envelope(bad), None, "{bad}");
        }
    }
}
