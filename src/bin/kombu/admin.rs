//! `kombu declare`, `bind`, `unbind`, `size`, `purge` and `delete`.

use std::time::Duration;

use kombu::{Binding, Exchange, HeaderMatch, Queue};

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
            durable,
            auto_delete,
        } => {
            let exchange = Exchange::new(name.clone(), kind.into())
                .durable(durable)
                .auto_delete(auto_delete);
            conn.declare_exchange(&exchange)
                .await
                .ctx(format!("cannot declare exchange {name:?} on {masked}"))?;
            println!(
                "declared exchange {name:?} ({}) on {masked}",
                exchange.kind.as_str()
            );
        }
        DeclareWhat::Queue(q) => {
            let mut queue = Queue::new(q.name.clone()).durable(q.durable);
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
                    "declared queue {:?} bound to exchange {exchange:?} with key {:?} on {masked}",
                    q.name, q.routing_key
                );
            } else {
                println!("declared queue {:?} on {masked}", q.name);
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
    let conn = common::connect(&url).await?;
    let n = conn.queue_size(&args.queue).await.ctx(format!(
        "cannot get the size of queue {:?} on {}",
        args.queue,
        common::mask(&url)
    ))?;
    println!("{n}");
    Ok(Outcome::Done)
}

pub async fn purge(global: &Global, args: QueueArg) -> anyhow::Result<Outcome> {
    let url = common::url(global)?;
    let conn = common::connect(&url).await?;
    let n = conn.purge(&args.queue).await.ctx(format!(
        "cannot purge queue {:?} on {}",
        args.queue,
        common::mask(&url)
    ))?;
    println!("{n}");
    Ok(Outcome::Done)
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
