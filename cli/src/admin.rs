//! `kombu declare`, `bind`, `unbind`, `size`, `purge` and `delete`.

use std::time::Duration;

use kombu::{Binding, Connection, ErrorKind, Exchange, HeaderMatch, Queue};

use crate::Outcome;
use crate::cli::{
    BindArgs, DeclareArgs, DeclareWhat, DeleteArgs, EntityKind, Global, MatchMode, QueueArg,
};
use crate::common::{self, Ctx as _};

pub async fn declare(global: &Global, args: DeclareArgs) -> anyhow::Result<Outcome> {
    let url = common::url(global)?;
    let masked = common::mask(&url);
    let conn = common::connect(&url).await?;
    match args.what {
        DeclareWhat::Exchange {
            name,
            kind,
            transient,
            auto_delete,
        } => {
            let exchange = Exchange::new(name.clone(), kind.into())
                .durable(!transient)
                .auto_delete(auto_delete);
            conn.declare_exchange(&exchange)
                .await
                .ctx(format!("cannot declare exchange {name:?} on {masked}"))?;
            println!(
                "declared {} exchange {name:?} ({}) on {masked}",
                durability(exchange.durable),
                exchange.kind.as_str()
            );
        }
        DeclareWhat::Queue(q) => {
            let mut queue = Queue::new(q.name.clone()).durable(!q.transient);
            if let Some(n) = q.max_priority {
                queue = queue.max_priority(n);
            }
            if let Some(ms) = q.message_ttl {
                queue = queue.message_ttl(Duration::from_millis(ms));
            }
            if let Some(ms) = q.expires {
                queue = queue.expires(Duration::from_millis(ms));
            }
            if let Some(n) = q.max_length {
                queue = queue.max_length(n);
            }
            if let Some(x) = &q.dead_letter_exchange {
                queue = queue.dead_letter_exchange(x.clone());
            }
            if let Some(k) = &q.dead_letter_routing_key {
                queue = queue.dead_letter_routing_key(k.clone());
            }
            let caps = conn.capabilities();
            common::warn_unhonoured(
                &conn,
                &masked,
                &[
                    (q.max_priority.is_some(), "--max-priority", caps.priorities),
                    (q.message_ttl.is_some(), "--message-ttl", caps.message_ttl),
                    (q.max_length.is_some(), "--max-length", caps.max_length),
                    (
                        q.dead_letter_exchange.is_some() || q.dead_letter_routing_key.is_some(),
                        "dead-lettering",
                        caps.dead_lettering,
                    ),
                ],
            );
            let what = format!("cannot declare queue {:?} on {masked}", q.name);
            conn.declare_queue(&queue).await.ctx(what.clone())?;
            // Bound by name: the exchange exists already, whatever its type.
            if let Some(exchange) = &q.exchange {
                conn.bind(
                    &q.name,
                    &Binding::new(exchange.clone(), q.routing_key.clone()),
                )
                .await
                .ctx(format!(
                    "declared queue {:?} but cannot bind it to exchange {exchange:?} on \
                         {masked}",
                    q.name
                ))?;
                println!(
                    "declared {} queue {:?} bound to exchange {exchange:?} with key {:?} on \
                     {masked}",
                    durability(queue.durable),
                    q.name,
                    q.routing_key
                );
            } else {
                println!(
                    "declared {} queue {:?} on {masked}",
                    durability(queue.durable),
                    q.name
                );
            }
        }
    }
    Ok(Outcome::Done)
}

pub async fn bind(global: &Global, args: BindArgs, bind: bool) -> anyhow::Result<Outcome> {
    let url = common::url(global)?;
    let masked = common::mask(&url);
    let headers = common::parse_headers(&args.headers)?;
    let conn = common::connect(&url).await?;
    let binding = if headers.is_empty() {
        Binding::new(args.exchange.clone(), args.routing_key.clone())
    } else {
        let mode = match args.match_mode {
            MatchMode::All => HeaderMatch::All,
            MatchMode::Any => HeaderMatch::Any,
        };
        let mut b = Binding::headers(args.exchange.clone(), mode, headers);
        b.routing_key = args.routing_key.clone();
        b
    };
    let (verb, done) = if bind {
        ("bind", "bound")
    } else {
        ("unbind", "unbound")
    };
    let result = if bind {
        conn.bind(&args.queue, &binding).await
    } else {
        conn.unbind(&args.queue, &binding).await
    };
    result.ctx(format!(
        "cannot {verb} queue {:?} and exchange {:?} on {masked}",
        args.queue, args.exchange
    ))?;
    println!(
        "{done} queue {:?} and exchange {:?} (key {:?}) on {masked}",
        args.queue, args.exchange, args.routing_key
    );
    Ok(Outcome::Done)
}

pub async fn size(global: &Global, args: QueueArg) -> anyhow::Result<Outcome> {
    let url = common::url(global)?;
    let masked = common::mask(&url);
    let conn = common::connect(&url).await?;
    let what = format!("cannot get the size of queue {:?} on {masked}", args.queue);
    let n = existing(
        &conn,
        &args.queue,
        &masked,
        what,
        conn.queue_size(&args.queue).await,
    )?;
    println!("{n}");
    Ok(Outcome::Done)
}

pub async fn purge(global: &Global, args: QueueArg) -> anyhow::Result<Outcome> {
    let url = common::url(global)?;
    let masked = common::mask(&url);
    let conn = common::connect(&url).await?;
    let what = format!("cannot purge queue {:?} on {masked}", args.queue);
    let n = existing(
        &conn,
        &args.queue,
        &masked,
        what,
        conn.purge(&args.queue).await,
    )?;
    println!("{n}");
    Ok(Outcome::Done)
}

/// The result of an operation on `queue`, with `what` failed as its context; the library's
/// NotFound (the queue exists nowhere, the same on every transport) as one uniform line with a
/// hint.
fn existing<T>(
    conn: &Connection,
    queue: &str,
    masked: &str,
    what: String,
    result: kombu::Result<T>,
) -> anyhow::Result<T> {
    match result {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let create = format!(
                "check the name, or create it with `kombu declare queue {queue}` (or publish \
                 with --declare-queue {queue})"
            );
            let hint = if conn.url().scheme() == "memory" {
                format!("{}; {create}", common::MEMORY_NOTE)
            } else {
                create
            };
            Err(common::hinted(
                format!("queue {queue:?} does not exist on {masked}"),
                hint,
            ))
        }
        other => other.ctx(what),
    }
}

fn durability(durable: bool) -> &'static str {
    if durable { "durable" } else { "transient" }
}

pub async fn delete(global: &Global, args: DeleteArgs) -> anyhow::Result<Outcome> {
    let url = common::url(global)?;
    let masked = common::mask(&url);
    let conn = common::connect(&url).await?;
    match args.kind {
        EntityKind::Queue => {
            let n = conn
                .delete_queue(&args.name)
                .await
                .ctx(format!("cannot delete queue {:?} on {masked}", args.name))?;
            println!(
                "deleted queue {:?} with {n} ready message{} on {masked}",
                args.name,
                if n == 1 { "" } else { "s" }
            );
        }
        EntityKind::Exchange => {
            conn.delete_exchange(&args.name).await.ctx(format!(
                "cannot delete exchange {:?} on {masked}",
                args.name
            ))?;
            println!("deleted exchange {:?} on {masked}", args.name);
        }
    }
    Ok(Outcome::Done)
}
