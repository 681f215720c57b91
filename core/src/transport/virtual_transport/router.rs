//! Exchange routing for virtual transports.
//!
//! Semantics are RabbitMQ's, so an application behaves the same on every transport:
//! - **direct**: binding key equals routing key;
//! - **topic**: keys are words separated by `.`; in a binding `*` matches exactly one word and
//!   `#` zero or more words. `a.#` matches `a`, and `#.c` matches `c`. *kombu differs here*: its
//!   virtual transports turn `#` into the regular expression `.*?` between literal dots, so
//!   Python kombu does not match `a` with `a.#` nor `c` with `#.c`. An empty routing key has
//!   zero words (matched by `#` only);
//! - **fanout**: every bound queue;
//! - **headers**: the binding's arguments, except those starting with `x-`, are compared with the
//!   message headers: `x-match: all` (the default) needs all of them present and equal, `any`
//!   needs one. A binding argument whose value is null matches presence alone.
//!
//! A queue bound more than once receives a message once.

use crate::entity::ExchangeKind;
use crate::transport::virtual_transport::BindingRow;
use crate::value::{Headers, Value};

/// Whether a topic binding key matches a routing key.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    let pattern: Vec<&str> = split_words(pattern);
    let key: Vec<&str> = split_words(key);
    match_words(&pattern, &key)
}

/// kombu's `TopicExchange.key_to_pattern`: the regular expression Python kombu's virtual
/// transports store beside a topic binding (Redis binding members, MongoDB's `pattern` field) and
/// match routing keys with. Stores that share bindings with Python write it.
pub fn kombu_topic_pattern(key: &str) -> String {
    let escaped: String = key
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || ".#*".contains(c) {
                c.to_string()
            } else if c == '\0' {
                "\\000".to_owned()
            } else {
                format!("\\{c}")
            }
        })
        .collect();
    let words: Vec<&str> = escaped
        .split('.')
        .map(|w| match w {
            "*" => "[^\\.]+",
            "#" => ".*?",
            w => w,
        })
        .collect();
    format!("^{}$", words.join("\\."))
}

fn split_words(s: &str) -> Vec<&str> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split('.').collect()
    }
}

fn match_words(pattern: &[&str], key: &[&str]) -> bool {
    // Iterative matcher with one backtrack point per `#`, like glob matching: O(p * k).
    let (mut p, mut k) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None; // (pattern index after '#', key index)
    while k < key.len() {
        if p < pattern.len() && pattern[p] == "#" {
            star = Some((p + 1, k));
            p += 1;
        } else if p < pattern.len() && (pattern[p] == "*" || pattern[p] == key[k]) {
            p += 1;
            k += 1;
        } else if let Some((sp, sk)) = star {
            // Let the last '#' swallow one more word.
            p = sp;
            k = sk + 1;
            star = Some((sp, sk + 1));
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == "#" {
        p += 1;
    }
    p == pattern.len()
}

/// Whether a headers-exchange binding matches the message headers.
pub fn headers_match(binding_args: &Headers, headers: &Headers) -> bool {
    let any = matches!(
        binding_args.get("x-match").and_then(Value::as_str),
        Some("any")
    );
    let mut considered = binding_args.iter().filter(|(k, _)| !k.starts_with("x-"));
    let matches_one = |(k, v): (&String, &Value)| match headers.get(k) {
        None => false,
        Some(_) if *v == Value::Null => true,
        Some(h) => h == v,
    };
    if any {
        considered.any(matches_one)
    } else {
        considered.all(matches_one)
    }
}

/// Whether one binding row takes a message published with `routing_key` and `headers` to an
/// exchange of `kind`.
pub fn binding_matches(
    kind: ExchangeKind,
    row: &BindingRow,
    routing_key: &str,
    headers: &Headers,
) -> bool {
    match kind {
        ExchangeKind::Direct => row.routing_key == routing_key,
        ExchangeKind::Topic => topic_matches(&row.routing_key, routing_key),
        ExchangeKind::Fanout => true,
        ExchangeKind::Headers => headers_match(&row.arguments, headers),
    }
}

/// The queues a message goes to, each once, in binding order.
pub fn route<'a>(
    kind: ExchangeKind,
    rows: &'a [BindingRow],
    routing_key: &str,
    headers: &Headers,
) -> Vec<&'a str> {
    let mut out: Vec<&'a str> = Vec::new();
    for row in rows {
        if binding_matches(kind, row, routing_key, headers) && !out.contains(&row.queue.as_str()) {
            out.push(&row.queue);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_are_kombus() {
        assert_eq!(kombu_topic_pattern("a.*.c"), r"^a\.[^\.]+\.c$");
        assert_eq!(kombu_topic_pattern("a.#"), r"^a\..*?$");
        assert_eq!(kombu_topic_pattern("usd-eur.x"), r"^usd\-eur\.x$");
    }

    #[test]
    fn topic_rabbitmq_semantics() {
        let cases = [
            ("a.b.c", "a.b.c", true),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.c", false),
            ("a.*.c", "a.b.b.c", false),
            ("a.#", "a", true),
            ("a.#", "a.b.c", true),
            ("#.c", "c", true),
            ("#.c", "a.b.c", true),
            ("#", "", true),
            ("#", "a.b", true),
            ("*", "", false),
            ("*", "a", true),
            ("*", "a.b", false),
            ("a.#.c", "a.c", true),
            ("a.#.c", "a.x.y.c", true),
            ("a.#.c", "a.x.y.d", false),
            ("#.b.#", "a.b.c", true),
            ("#.b.#", "b", true),
            ("#.b.#", "a.c", false),
            ("*.#", "", false),
            ("*.#", "a", true),
            ("é.*", "é.ü", true),
            ("a.b", "a.b.c", false),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(topic_matches(pattern, key), expected, "{pattern} vs {key}");
        }
    }

    fn h(pairs: &[(&str, Value)]) -> Headers {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn headers_all_and_any() {
        let msg = h(&[("format", "pdf".into()), ("type", "report".into())]);
        let all = h(&[
            ("x-match", "all".into()),
            ("format", "pdf".into()),
            ("type", "report".into()),
        ]);
        let all_miss = h(&[("format", "pdf".into()), ("type", "log".into())]);
        let any = h(&[
            ("x-match", "any".into()),
            ("format", "zip".into()),
            ("type", "report".into()),
        ]);
        let any_miss = h(&[("x-match", "any".into()), ("format", "zip".into())]);
        let presence = h(&[("format", Value::Null)]);
        assert!(headers_match(&all, &msg));
        assert!(!headers_match(&all_miss, &msg));
        assert!(headers_match(&any, &msg));
        assert!(!headers_match(&any_miss, &msg));
        assert!(headers_match(&presence, &msg));
    }

    #[test]
    fn route_dedups_queues() {
        let row = |rk: &str, q: &str| BindingRow {
            exchange: "x".into(),
            routing_key: rk.into(),
            queue: q.into(),
            arguments: Headers::new(),
        };
        let rows = vec![row("a.*", "q1"), row("#", "q1"), row("b", "q2")];
        assert_eq!(
            route(ExchangeKind::Topic, &rows, "a.b", &Headers::new()),
            vec!["q1"]
        );
        assert_eq!(
            route(ExchangeKind::Fanout, &rows, "zzz", &Headers::new()),
            vec!["q1", "q2"]
        );
    }

    /// The plain recursive definition of RabbitMQ's topic match, to check the iterative
    /// matcher against: `#` takes any number of words, `*` exactly one, a word itself.
    fn reference(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|skip| reference(rest, &key[skip..])),
            Some((&"*", rest)) => !key.is_empty() && reference(rest, &key[1..]),
            Some((word, rest)) => key.first() == Some(word) && reference(rest, &key[1..]),
        }
    }

    /// A dotted string of up to seven words drawn from `words`.
    fn dotted(words: &'static [&'static str]) -> impl proptest::strategy::Strategy<Value = String> {
        proptest::collection::vec(proptest::sample::select(words), 0..7).prop_map(|w| w.join("."))
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn topic_matcher_agrees_with_the_reference(
            pattern in dotted(&["a", "b", "", "*", "#"]),
            key in dotted(&["a", "b", ""]),
        ) {
            let expected = reference(&split_words(&pattern), &split_words(&key));
            prop_assert_eq!(topic_matches(&pattern, &key), expected, "{:?} vs {:?}", pattern, key);
        }
    }
}
