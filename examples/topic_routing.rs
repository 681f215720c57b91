//! Topic routing, the classic case: one topic exchange, queues bound to `usa.news`,
//! `usa.weather`, `europe.news` and `europe.weather`, and two bound with wildcards (`usa.#`:
//! everything about the USA; `#.news`: the news from anywhere). A few messages are published
//! and each queue shows what it got.
//!
//! In a topic binding, words are separated by dots; `*` matches exactly one word and `#` zero
//! or more. A message goes to every queue with a matching binding, and to none when nothing
//! matches (`asia.weather` below).
//!
//! ```text
//! cargo run --example topic_routing
//! KOMBU_URL=redis://127.0.0.1:6379/0 cargo run --example topic_routing
//! KOMBU_URL=amqp://guest:guest@127.0.0.1:5672// cargo run --example topic_routing
//! ```
//!
//! The exchange and queues get names unique to the run and are deleted at the end, so runs
//! against a shared broker never mix.

use std::collections::BTreeMap;

use kombu::{Connection, Error, ErrorKind, Exchange, Queue, StreamExt};

/// Queue (what it is for) and the binding key it has.
const BINDINGS: [(&str, &str); 6] = [
    ("usa-news", "usa.news"),
    ("usa-weather", "usa.weather"),
    ("europe-news", "europe.news"),
    ("europe-weather", "europe.weather"),
    ("everything-usa", "usa.#"),
    ("all-news", "#.news"),
];

/// Routing key and text of what is published.
const MESSAGES: [(&str, &str); 6] = [
    ("usa.news", "Election results are in"),
    ("usa.weather", "Sunny in Texas"),
    ("europe.news", "New rail link opens"),
    ("europe.weather", "Storms over the Alps"),
    ("asia.news", "Markets open higher"),
    ("asia.weather", "Monsoon arrives early"),
];

#[tokio::main]
async fn main() -> kombu::Result<()> {
    let url = std::env::var("KOMBU_URL").unwrap_or_else(|_| "memory://".to_owned());
    let conn = Connection::open(&url).await?;
    println!("connected to {}", conn.url());
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();

    let exchange = Exchange::topic(format!("news-{run}"));
    let mut queues = Vec::new();
    for (name, key) in BINDINGS {
        let queue = Queue::new(format!("{name}-{run}"))
            .exchange(exchange.clone())
            .routing_key(key);
        conn.declare_queue(&queue).await?;
        println!("queue {name:<15} bound with {key}");
        queues.push((name, queue));
    }

    let producer = conn.producer().exchange(exchange.clone());
    for (key, text) in MESSAGES {
        producer.message(text).routing_key(key).send().await?;
    }
    println!("published {} messages\n", MESSAGES.len());

    // Each queue's messages, as "routing key: text".
    let mut got: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, queue) in &queues {
        let waiting = conn.queue_size(&queue.name).await?;
        let mut consumer = conn.consumer([queue.clone()]).build().await?;
        let mut texts = Vec::new();
        for _ in 0..waiting {
            let Some(delivery) = consumer.next().await else {
                break;
            };
            let delivery = delivery?;
            let text: String = delivery.decode()?;
            texts.push(format!("{}: {text}", delivery.routing_key()));
            delivery.ack().await?;
        }
        consumer.close().await?;
        println!("{name:<15} got {}", texts.len());
        for text in &texts {
            println!("    {text}");
        }
        got.insert(name, texts);
    }

    // What topic routing promises: each queue got exactly the messages its key matches.
    for (name, key) in BINDINGS {
        let expected: Vec<String> = MESSAGES
            .iter()
            .filter(|(routing_key, _)| matches(key, routing_key))
            .map(|(routing_key, text)| format!("{routing_key}: {text}"))
            .collect();
        let mut received = got.remove(name).unwrap_or_default();
        received.sort();
        let mut expected_sorted = expected.clone();
        expected_sorted.sort();
        if received != expected_sorted {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("queue {name} ({key}) got {received:?}, expected {expected:?}"),
            ));
        }
    }
    println!("\nasia.weather matched no binding: no queue got it");

    for (_, queue) in &queues {
        conn.delete_queue(&queue.name).await?;
    }
    conn.delete_exchange(&exchange.name).await?;
    conn.close().await
}

/// Whether a topic binding key matches a routing key (`*` one word, `#` zero or more), the
/// broker's rule, to check what the broker did.
fn matches(pattern: &str, key: &str) -> bool {
    fn go(pattern: &[&str], key: &[&str]) -> bool {
        match (pattern.first(), key.first()) {
            (None, None) => true,
            (Some(&"#"), _) => {
                go(&pattern[1..], key) || (!key.is_empty() && go(pattern, &key[1..]))
            }
            (Some(&"*"), Some(_)) => go(&pattern[1..], &key[1..]),
            (Some(p), Some(k)) => p == k && go(&pattern[1..], &key[1..]),
            _ => false,
        }
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = key.split('.').collect();
    go(&pattern, &key)
}
