//! `kombu consume`.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use kombu::transport::{Channel, Decoder};
use kombu::{ConsumeError, Consumer, Delivery, Handled, Queue, StreamExt as _};

use crate::Outcome;
use crate::cli::{ConsumeArgs, Format, Global, OnError};
use crate::common::{self, Ctx as _};
use crate::lifecycle::{self, Backoff, Signal, Signals};
use crate::render::{Body, decode_body, render};

/// What `consume` accepts without `--accept`: the serializers that only describe data. Pickle
/// (which Python runs code to read) and the signing serializers must be named.
const DEFAULT_ACCEPT: [&str; 5] = ["json", "msgpack", "yaml", "text", "raw"];

pub async fn run(global: &Global, args: ConsumeArgs) -> anyhow::Result<Outcome> {
    // From here on SIGINT and SIGTERM stop the command gracefully (a second one exits at once).
    let mut signals = Signals::install();
    let url = common::url(global)?;
    let masked = common::mask(&url);
    let idle = match args.timeout {
        Some(secs) if !secs.is_finite() || secs < 0.0 => {
            return Err(anyhow!("--timeout {secs} is not a number of seconds >= 0"));
        }
        Some(secs) => Some(Duration::from_secs_f64(secs)),
        None => None,
    };
    let conn = common::connect(&url).await?;
    lifecycle::report_link(&conn, "");
    let registry = conn.registry().clone();
    let (accept, accepted) = accept_list(&registry, &args.accept)?;
    for name in &args.queues {
        if args.declare {
            common::declare_queue_lenient(&conn, &Queue::new(name.clone()))
                .await
                .ctx(format!("cannot declare queue {name:?} on {masked}"))?;
        } else {
            common::require_queue(
                &conn,
                name,
                &masked,
                &format!(
                    "check the name, or create it with --declare (or `kombu declare queue {name}`)"
                ),
            )
            .await?;
        }
    }
    let mut source = if args.requeue {
        // A peek takes exactly what it prints, one message at a time: a consumer's prefetch
        // applies per queue on AMQP, so with several queues it would take more.
        let channel = conn
            .channel()
            .await
            .ctx(format!("cannot open a channel on {masked}"))?;
        Source::Peek(Peek {
            channel,
            queues: args.queues.clone(),
            next: 0,
            decoder: Arc::new(Decoder {
                registry: registry.clone(),
                accept: Some(accepted),
                max_decompressed_size: args.max_size,
            }),
        })
    } else {
        let consumer = conn
            .consumer(args.queues.iter().map(|q| {
                let queue = Queue::new(q.clone());
                match (&args.dead_letter_exchange, &args.dead_letter_routing_key) {
                    (Some(x), Some(k)) => queue.dead_letter_exchange(x).dead_letter_routing_key(k),
                    (Some(x), None) => queue.dead_letter_exchange(x),
                    _ => queue,
                }
            }))
            .declare(false)
            .prefetch(prefetch_for(&args))
            .no_ack(args.no_ack)
            .accept(&accept)
            .max_decompressed_size(args.max_size)
            .error_action(args.on_error.into())
            .max_redeliveries(args.max_redeliveries)
            .build()
            .await
            .ctx(format!("cannot consume from {:?} on {masked}", args.queues))?;
        Source::Consumer(consumer)
    };

    let mut held: Vec<Delivery> = Vec::new();
    let mut got = 0u64;
    let mut dead = 0u64;
    let mut stdout = std::io::stdout().lock();
    let mut failure = None;
    let mut outcome = Outcome::Done;
    let mut backoff = Backoff::new();
    let what = format!("consuming from {:?} on {masked}", args.queues);
    loop {
        if args.count.is_some_and(|c| got >= c) {
            break;
        }
        if let Some(signal) = signals.received() {
            outcome = stopped_by(signal);
            break;
        }
        // A signal stops the wait for the next message; the message in hand (printed and
        // acked below) is always finished first.
        let item = match source.next(idle, &mut signals).await {
            Ok(item) => item,
            Err(signal) => {
                outcome = stopped_by(signal);
                break;
            }
        };
        let taken = match item {
            None => {
                outcome = Outcome::TimedOut;
                break;
            }
            Some(None) => {
                failure = Some(anyhow!(
                    "the broker ended the consumer of {:?} on {masked}",
                    args.queues
                ));
                break;
            }
            Some(Some(Ok(delivery))) => decode(delivery, args.format, &registry),
            // raw and base64 show the bytes of any message: the accept list does not apply.
            Some(Some(Err(ConsumeError {
                delivery: Some(delivery),
                ..
            }))) if matches!(args.format, Format::Raw | Format::Base64) => {
                decode(delivery, args.format, &registry)
            }
            // The broker failed (a lost connection the transport is healing): ride it out.
            Some(Some(Err(ConsumeError {
                error,
                delivery: None,
            }))) if error.dead_lettered().is_none() => {
                let retried = tokio::select! {
                    retried = backoff.retry(&error, &what) => retried,
                    signal = signals.wait() => {
                        outcome = stopped_by(signal);
                        break;
                    }
                };
                if retried {
                    continue;
                }
                Err(ConsumeError {
                    error,
                    delivery: None,
                })
            }
            Some(Some(Err(refused))) => Err(refused),
        };
        let (delivery, body) = match taken {
            Ok(taken) => {
                backoff.reset();
                taken
            }
            Err(refused) => {
                match settle_refused(&source, refused, &args, &masked, &mut held).await {
                    Ok(Settled::DeadLettered) => dead += 1,
                    Ok(Settled::Other) => {}
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
                continue;
            }
        };
        let rendered = match render(&delivery, body, args.format) {
            Ok(r) => r,
            Err(e) => {
                failure = Some(e.context(format!(
                    "cannot print a message from queue {:?}; {}",
                    delivery.queue(),
                    where_it_is(args.no_ack)
                )));
                break;
            }
        };
        if let Err(e) = stdout.write_all(&rendered).and_then(|()| stdout.flush()) {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                failure = Some(anyhow!("cannot write to stdout: {e}"));
            }
            break; // the unprinted delivery is dropped: put back (gone with --no-ack)
        }
        got += 1;
        if args.requeue {
            held.push(delivery);
        } else if !args.no_ack
            && let Err(e) = ack(delivery, &mut backoff, &masked).await
        {
            failure = Some(e);
            break;
        }
    }
    if outcome == Outcome::Done && dead > 0 {
        outcome = Outcome::DeadLettered;
    }
    // Newest first: transports that put a requeued message back at the head (memory, Redis)
    // then keep the original order of several peeked messages.
    for delivery in held.into_iter().rev() {
        let queue = delivery.queue().to_owned();
        let what = format!("cannot put a message back on queue {queue:?} on {masked}");
        match delivery.requeue().await {
            Ok(()) => {}
            // Its channel is gone: the broker put it back by itself.
            Err(e) if e.error.kind() == kombu::ErrorKind::StaleDelivery => {
                lifecycle::stale_warning(&what, &e.error);
            }
            Err(e) => {
                if let (None, Err(e)) = (&failure, Err::<(), _>(e).ctx(what)) {
                    failure = Some(e);
                }
            }
        }
    }
    let closed = match source.close().await {
        // The broker is gone: what the consumer held returns to its queue by itself (when the
        // broker sees the connection gone, or when its visibility timeout passes).
        Err(e) if e.is_recoverable() => {
            eprintln!("warning: closing the consumer on {masked}: {e:#}");
            Ok(())
        }
        closed => closed.ctx(format!("cannot close the consumer on {masked}")),
    };
    if let Some(e) = failure {
        return Err(e);
    }
    closed?;
    Ok(outcome)
}

/// How a command stopped by `signal` ends: SIGINT as an interruption (status 130, the shell's
/// convention), SIGTERM as a clean stop (status 0, what supervisors expect of a stop they
/// asked for).
pub fn stopped_by(signal: Signal) -> Outcome {
    match signal {
        Signal::Interrupt => Outcome::Interrupted,
        Signal::Terminate => Outcome::Done,
    }
}

/// Acks a printed message. An ack its broker can no longer apply (the connection was lost and
/// the message will be delivered again) is a warning; one that failed for a recoverable reason
/// is tried again under `backoff`; any other failure ends the command.
async fn ack(delivery: Delivery, backoff: &mut Backoff, masked: &str) -> anyhow::Result<()> {
    let what = format!(
        "cannot acknowledge a message of queue {:?} on {masked}",
        delivery.queue()
    );
    let mut delivery = delivery;
    loop {
        match delivery.ack().await {
            Ok(()) => return Ok(()),
            Err(e) if e.error.kind() == kombu::ErrorKind::StaleDelivery => {
                lifecycle::stale_warning(&what, &e.error);
                return Ok(());
            }
            Err(e) => {
                if backoff.retry(&e.error, &what).await {
                    delivery = e.into_delivery();
                    continue;
                }
                return Err::<(), _>(e).ctx(what);
            }
        }
    }
}

/// The accept list: `given` (`--accept`), else [`DEFAULT_ACCEPT`] (those this build has), by
/// name and as the decoder's [`kombu::serializers::Accept`].
pub fn accept_list(
    registry: &kombu::serializers::Registry,
    given: &[String],
) -> anyhow::Result<(Vec<String>, kombu::serializers::Accept)> {
    let accept: Vec<String> = if given.is_empty() {
        DEFAULT_ACCEPT
            .iter()
            .filter(|name| registry.serializer(name).is_ok())
            .map(|name| (*name).to_owned())
            .collect()
    } else {
        given.to_vec()
    };
    let accepted = registry.accept(&accept).map_err(|e| {
        anyhow!(
            "{e} in --accept (known: {})",
            registry
                .serializers()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    Ok((accept, accepted))
}

/// What became of a message that could not be printed.
enum Settled {
    /// Moved to its dead-letter queue (by the policy, or earlier by the transport).
    DeadLettered,
    /// Requeued for another try, or left in place by a peek.
    Other,
}

/// Settles a message that cannot be printed by `--on-error` (a peek leaves it where it is) and
/// says so on stderr in one line; an error ends the command (a broker failure, or `stop`).
async fn settle_refused(
    source: &Source,
    refused: ConsumeError,
    args: &ConsumeArgs,
    masked: &str,
    held: &mut Vec<Delivery>,
) -> anyhow::Result<Settled> {
    let ConsumeError { error, delivery } = refused;
    let Some(delivery) = delivery else {
        if let Some(record) = error.dead_lettered() {
            eprintln!("{record}");
            return Ok(Settled::DeadLettered);
        }
        return Err(anyhow::Error::new(common::BrokerError::from(error))
            .context(format!("consuming from {:?} on {masked}", args.queues)));
    };
    let queue = delivery.queue().to_owned();
    let hint = hint(&error);
    let consumer = match source {
        Source::Consumer(consumer) => consumer,
        Source::Peek(_) => {
            // A peek changes nothing: the message goes back with the others at the end.
            eprintln!(
                "message from queue {queue:?} not printed: {error:#}; left in the queue \
                 (--requeue moves nothing){hint}"
            );
            held.push(delivery);
            return Ok(Settled::Other);
        }
    };
    let no_ack = delivery.is_no_ack();
    let text = format!("{error:#}");
    match consumer
        .handle(ConsumeError {
            error,
            delivery: Some(delivery),
        })
        .await
    {
        Ok(Handled::DeadLettered(record)) => {
            eprintln!("{record}{hint}");
            Ok(Settled::DeadLettered)
        }
        Ok(Handled::Requeued { redeliveries }) => {
            eprintln!(
                "message from queue {queue:?} requeued at the end of the queue (try {redeliveries} \
                 of {}): {text}{hint}",
                args.max_redeliveries
            );
            Ok(Settled::Other)
        }
        Ok(other) => {
            eprintln!("message from queue {queue:?}: {other:?}: {text}");
            Ok(Settled::Other)
        }
        // Stop hands back the refusal itself once the message is back in its queue; any other
        // error (putting it back failed) is the general case below.
        Err(e) if args.on_error == OnError::Stop && e.kind() == kombu::ErrorKind::Codec => {
            let place = if no_ack {
                "it was taken with --no-ack, so it was published again at the end of the queue"
            } else {
                "it was left in the queue"
            };
            let text = format!(
                "message from queue {queue:?} cannot be printed; {place} (--on-error stop)"
            );
            match hint.strip_prefix("; ") {
                Some(what) => Err(common::hinted(format!("{text}: {e:#}"), what)),
                None => Err(anyhow::Error::new(common::BrokerError::from(e)).context(text)),
            }
        }
        Err(e) => {
            let place = if no_ack {
                "it was taken with --no-ack, so it is no longer in the queue"
            } else {
                "it is still in the queue"
            };
            let e = anyhow::Error::new(common::BrokerError::from(e));
            Err(e.context(format!(
                "cannot move a message of queue {queue:?} aside on {masked} ({text}); {place}"
            )))
        }
    }
}

/// What to try about a message that cannot be printed, as `; ...` (or nothing).
fn hint(error: &kombu::Error) -> &'static str {
    use kombu::serializers::Error as E;
    match error.serializer_error() {
        Some(E::TooLarge { .. }) => "; raise --max-size to read it",
        Some(E::ContentDisallowed { .. }) => "; --accept its serializer to read it",
        _ => "",
    }
}

/// Decodes the body as `format` shows it; a body that does not decode is refused with its
/// delivery.
fn decode(
    delivery: Delivery,
    format: Format,
    registry: &kombu::serializers::Registry,
) -> Result<(Delivery, Body), ConsumeError> {
    match decode_body(&delivery, format, registry) {
        Ok(body) => Ok((delivery, body)),
        Err(error) => Err(ConsumeError {
            error,
            delivery: Some(delivery),
        }),
    }
}

/// How many unsettled messages the consumer may hold.
///
/// With `--count`, no more than that: extra ones would be taken for nothing, and when the
/// command ends come back marked redelivered. (`--requeue` takes no consumer: see [`Peek`].)
fn prefetch_for(args: &ConsumeArgs) -> u16 {
    match args.count {
        Some(c) if args.prefetch == 0 || u64::from(args.prefetch) > c => {
            u16::try_from(c.max(1)).unwrap_or(u16::MAX)
        }
        _ => args.prefetch,
    }
}

/// Where the messages come from: a consumer, or, to peek (`--requeue`), one `get` at a time.
enum Source {
    Consumer(Consumer),
    Peek(Peek),
}

/// What [`Source::next`] gives: `None` when `--timeout` passed without a message, `Some(None)`
/// when the broker ended the consumer, else the next message (or why there is none).
type Next = Option<Option<Result<Delivery, ConsumeError>>>;

impl Source {
    /// The next message, waiting at most `idle` (no bound without it), or the signal that
    /// stopped the wait. A take is never cut short (what it took would stay leased until its
    /// visibility timeout): a consumer's stream keeps a take under way for its close, a peek
    /// looks at the signals only between two takes.
    async fn next(
        &mut self,
        idle: Option<Duration>,
        signals: &mut Signals,
    ) -> Result<Next, Signal> {
        match self {
            Source::Consumer(consumer) => {
                let next = async {
                    match idle {
                        Some(idle) => tokio::time::timeout(idle, consumer.next()).await.ok(),
                        None => Some(consumer.next().await),
                    }
                };
                tokio::select! {
                    next = next => Ok(next),
                    signal = signals.wait() => Err(signal),
                }
            }
            Source::Peek(peek) => peek.next(idle, signals).await,
        }
    }

    /// Closes the channel: what it still holds goes back to its queue.
    async fn close(self) -> kombu::Result<()> {
        match self {
            Source::Consumer(consumer) => consumer.close().await,
            Source::Peek(peek) => peek.channel.close().await,
        }
    }
}

/// First pause of a peek that found every queue empty; it doubles up to [`PEEK_MAX_PAUSE`].
const PEEK_FIRST_PAUSE: Duration = Duration::from_millis(10);
/// Longest pause between two rounds of a peek that finds nothing.
const PEEK_MAX_PAUSE: Duration = Duration::from_millis(200);

/// A peek: takes one message at a time with [`Channel::get`] (AMQP basic.get), round robin over
/// the queues, so that exactly the messages printed are taken, and no other is marked
/// redelivered (a consumer's prefetch is per queue on AMQP, and a consumer takes ahead).
struct Peek {
    channel: Arc<dyn Channel>,
    queues: Vec<String>,
    /// The queue asked first next time.
    next: usize,
    /// The consumer's registry, accept list and decompression bound.
    decoder: Arc<Decoder>,
}

impl Peek {
    async fn next(
        &mut self,
        idle: Option<Duration>,
        signals: &mut Signals,
    ) -> Result<Next, Signal> {
        let deadline = idle.map(|idle| tokio::time::Instant::now() + idle);
        let mut pause = PEEK_FIRST_PAUSE;
        loop {
            if let Some(signal) = signals.received() {
                return Err(signal);
            }
            for _ in 0..self.queues.len() {
                let queue = &self.queues[self.next % self.queues.len()];
                self.next = (self.next + 1) % self.queues.len();
                match self.channel.get(queue, false).await {
                    Ok(Some(delivery)) => {
                        let delivery = delivery.with_decoder(self.decoder.clone());
                        return Ok(Some(Some(match delivery.check_accept() {
                            Ok(()) => Ok(delivery),
                            Err(error) => Err(ConsumeError {
                                error,
                                delivery: Some(delivery),
                            }),
                        })));
                    }
                    Ok(None) => {}
                    Err(error) => {
                        return Ok(Some(Some(Err(ConsumeError {
                            error,
                            delivery: None,
                        }))));
                    }
                }
            }
            let wait = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    pause.min(left)
                }
                None => pause,
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                signal = signals.wait() => return Err(signal),
            }
            pause = (pause * 2).min(PEEK_MAX_PAUSE);
        }
    }
}

/// Where a message the tool could not print is now: back in its queue, or, taken with
/// `--no-ack`, removed by the broker when it was delivered.
fn where_it_is(no_ack: bool) -> &'static str {
    if no_ack {
        "it was taken with --no-ack, so it is no longer in the queue"
    } else {
        "it was put back"
    }
}
