//! Key naming, kombu's layout (`kombu/transport/redis.py`): the lists of a queue (one per
//! priority step), binding tables and their members, kombu 5.7's binding deadlines, kombu-rs's
//! own registries of exchanges and queues, and the PUB/SUB topics of fanout exchanges. Every
//! key carries `global_keyprefix`.

use crate::options::Options;

impl Options {
    /// The list holding `queue`'s messages of `priority` (kombu's `_q_for_pri`).
    pub(crate) fn list_key(&self, queue: &str, priority: u8) -> String {
        let step = self
            .priority_steps
            .iter()
            .rev()
            .find(|s| **s <= priority.min(9))
            .copied()
            .unwrap_or(0);
        if step == 0 {
            format!("{}{queue}", self.prefix)
        } else {
            format!("{}{queue}{}{step}", self.prefix, self.sep)
        }
    }

    /// Every list of `queue`, in consumption order (bucket 0 first).
    pub(crate) fn list_keys(&self, queue: &str) -> Vec<String> {
        self.priority_steps
            .iter()
            .map(|s| self.list_key(queue, *s))
            .collect()
    }

    /// The binding table of `exchange` (kombu's `keyprefix_queue`).
    pub(crate) fn binding_key(&self, exchange: &str) -> String {
        format!("{}_kombu.binding.{exchange}", self.prefix)
    }

    /// kombu 5.7's set of the members of an exchange's table whose queues do not expire: the
    /// binding sweep keeps a table while it has any.
    pub(crate) fn binding_permanent_key(&self, exchange: &str) -> String {
        format!("{}_kombu.binding_permanent.{exchange}", self.prefix)
    }

    /// kombu 5.7's deadlines of binding tables of expiring queues (exchange → ms, server
    /// clock).
    pub(crate) fn binding_deadlines_key(&self) -> String {
        format!("{}_kombu.binding_deadlines", self.prefix)
    }

    /// kombu-rs's registry of exchange types (kombu keeps them in process memory).
    pub(crate) fn exchanges_key(&self) -> String {
        format!("{}_kombu_rs.exchanges", self.prefix)
    }

    /// The PUB/SUB channel of a fanout publish (kombu's `_get_publish_topic`).
    pub(crate) fn fanout_topic(&self, exchange: &str, routing_key: &str) -> String {
        if self.fanout_patterns && !routing_key.is_empty() {
            format!(
                "{}{}{exchange}/{routing_key}",
                self.prefix, self.fanout_prefix
            )
        } else {
            format!("{}{}{exchange}", self.prefix, self.fanout_prefix)
        }
    }

    /// The pattern a queue bound to a fanout exchange subscribes to (kombu's
    /// `_get_subscribe_topic`: `#` becomes Redis's `*`).
    pub(crate) fn fanout_pattern(&self, exchange: &str, binding_key: &str) -> String {
        self.fanout_topic(exchange, &binding_key.replace('#', "*"))
    }

    /// kombu-rs's delayed messages: a sorted set, score the due time (ms, server clock), until
    /// they are moved to their queues' lists (see the `delayed` module).
    pub(crate) fn delayed_key(&self) -> String {
        format!("{}_kombu_rs.delayed", self.prefix)
    }

    /// Where a member of the delayed set that is not of kombu-rs's shape goes when due, as it
    /// was (a list; nothing writes such members but a foreign client).
    pub(crate) fn delayed_unreadable_key(&self) -> String {
        format!("{}_kombu_rs.delayed.unreadable", self.prefix)
    }

    /// kombu-rs's registry of declared queues and their arguments (kombu keeps none).
    pub(crate) fn queues_key(&self) -> String {
        format!("{}_kombu_rs.queues", self.prefix)
    }
}

/// The queue part of a binding-table member (`<routing key><sep><pattern><sep><queue>`, as
/// kombu splits it).
pub(crate) fn member_queue<'a>(member: &'a str, sep: &str) -> Option<&'a str> {
    let mut parts = member.splitn(3, sep);
    let _routing_key = parts.next()?;
    let _pattern = parts.next()?;
    parts.next()
}

/// `text` with Redis glob metacharacters escaped, for a literal match in SCAN MATCH.
pub(crate) fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use kombu_core::{BrokerUrl, Result};

    use super::*;

    #[test]
    fn priority_keys_follow_kombus_steps() -> Result<()> {
        let o = Options::from_url(&BrokerUrl::parse(
            "redis://localhost/3?global_keyprefix=p:",
        )?)?;
        assert_eq!(o.db, 3);
        assert_eq!(o.list_key("q", 0), "p:q");
        assert_eq!(o.list_key("q", 2), "p:q");
        assert_eq!(o.list_key("q", 5), "p:q\x06\x163");
        assert_eq!(o.list_key("q", 9), "p:q\x06\x169");
        assert_eq!(o.list_keys("q").len(), 4);
        assert_eq!(o.unacked, "p:unacked");
        assert_eq!(o.binding_key("x"), "p:_kombu.binding.x");
        Ok(())
    }
}
