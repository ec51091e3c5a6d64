//! Running the handler on one message and settling it: ack, nak, dead-letter, term.

use std::{any::Any, fmt, future::Future, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use async_nats::{
    HeaderMap,
    jetstream::{self, AckKind},
};
use futures::FutureExt;
use tracing::{debug, warn};

use super::{ConsumeOptions, stats::Counters};
use crate::{HandlerError, Message};

/// What was done with a message whose handler failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Nak'ed: it comes back after `delay`.
    Nak {
        /// The redelivery delay asked for.
        delay: Duration,
    },
    /// Kept by natty (the consumer orders by key) and run again after `delay`; the key's later
    /// messages wait for it.
    Held {
        /// The retry delay.
        delay: Duration,
    },
    /// Terminated without a dead-letter subject configured: never redelivered.
    Terminated,
    /// Published to the dead-letter subject, then terminated.
    DeadLettered,
    /// Given up on, but the dead-letter publish failed: nak'ed so it stays in the stream and
    /// comes back after `delay` for another try.
    DeadLetterFailed {
        /// Why the publish failed.
        reason: String,
        /// The redelivery delay asked for.
        delay: Duration,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nak { delay } => write!(f, "nak'ed, back in {delay:?}"),
            Self::Held { delay } => write!(f, "held, its key waiting; retried in {delay:?}"),
            Self::Terminated => f.write_str("terminated"),
            Self::DeadLettered => f.write_str("dead-lettered"),
            Self::DeadLetterFailed { reason, delay } => {
                write!(
                    f,
                    "dead-letter publish failed ({reason}); nak'ed, back in {delay:?}"
                )
            }
        }
    }
}

/// A handler failure, as reported on the error channel.
#[derive(Debug)]
#[non_exhaustive]
pub struct ConsumeError {
    /// The message's subject.
    pub subject: String,
    /// Its stream sequence.
    pub stream_sequence: u64,
    /// Its delivery count.
    pub delivered: u64,
    /// What the handler said.
    pub error: HandlerError,
    /// What was done.
    pub action: Action,
}

impl fmt::Display for ConsumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "handling message {} on {:?} (delivery {}): {}; {}",
            self.stream_sequence, self.subject, self.delivered, self.error, self.action
        )
    }
}

impl std::error::Error for ConsumeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error
            .source()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Per-consumer settings read from the server, refreshed when the durable is re-created.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    /// In-progress ack interval for running and waiting messages (`ack_wait / 3`).
    pub(super) keepalive: Duration,
    /// natty's delivery limit: at it, a failed message is given up on.
    pub(super) max_deliver: Option<u64>,
    /// The durable's `max_batch`: a pull asking for more is refused.
    pub(super) max_batch: Option<usize>,
    /// The durable's `max_expires`: a pull waiting longer is refused.
    pub(super) max_expires: Option<Duration>,
}

impl Settings {
    /// Messages to ask for, `expires` and heartbeat of the next pull, with `waiting` messages
    /// already held: the options clamped to the durable's limits (the heartbeat kept below a
    /// third of a clamped `expires`).
    pub(super) fn pull_size(
        &self,
        options: &ConsumeOptions,
        waiting: usize,
    ) -> (usize, Duration, Duration) {
        let n = options.batch.saturating_sub(waiting).max(1);
        let n = self.max_batch.map_or(n, |max| n.min(max));
        let expires = self
            .max_expires
            .map_or(options.expires, |max| options.expires.min(max));
        let heartbeat = if expires <= options.heartbeat * 2 {
            expires / 3
        } else {
            options.heartbeat
        };
        (n, expires, heartbeat)
    }
}

/// What became of a message after its handler ran.
pub(super) enum Outcome {
    /// Handled and acknowledged.
    Acked,
    /// Given up on, nak'ed back to the server, or failed to settle: not ours any more.
    Settled,
    /// The handler failed and the consumer orders by key: the message stays with natty, to
    /// run again after `delay` (the server's delivery count does not move; `retries` counts).
    Hold {
        /// Boxed: the common outcome, `Settled`, stays small.
        message: Box<jetstream::Message>,
        delay: Duration,
        retries: u64,
    },
}

pub(super) struct Shared {
    pub(super) js: jetstream::Context,
    /// The durable's name, part of the dead-letter message id.
    pub(super) durable: String,
    pub(super) options: ConsumeOptions,
    pub(super) stats: Arc<Counters>,
}

impl Shared {
    /// Handles and settles `m` inside its per-message span (continuing the publisher's trace
    /// with feature `otel`). `retries`: times natty already ran it and held it for a retry
    /// (ordered by key), added to the server's delivery count.
    pub(super) fn process<H, Fut>(
        self: Arc<Self>,
        m: jetstream::Message,
        handler: Arc<H>,
        settings: Settings,
        retries: u64,
    ) -> tracing::instrument::Instrumented<impl Future<Output = Outcome>>
    where
        H: Fn(Message) -> Fut,
        Fut: Future<Output = Result<(), HandlerError>>,
    {
        let span = crate::trace::process_span(&m, &self.durable);
        tracing::Instrument::instrument(self.handle(m, handler, settings, retries), span)
    }

    async fn handle<H, Fut>(
        self: Arc<Self>,
        m: jetstream::Message,
        handler: Arc<H>,
        settings: Settings,
        retries: u64,
    ) -> Outcome
    where
        H: Fn(Message) -> Fut,
        Fut: Future<Output = Result<(), HandlerError>>,
    {
        let mut message = Message::from_jetstream(&m);
        message.delivered = message.delivered.saturating_add(retries);
        let (subject, seq, delivered) = (
            message.subject.clone(),
            message.stream_sequence,
            message.delivered,
        );
        // Past natty's limit already (an earlier dead-letter publish failed, or the process
        // died while handling it): give up without running the handler again.
        if let Some(max) = settings.max_deliver.filter(|max| delivered > *max) {
            let error = HandlerError::retry(format!(
                "delivered {delivered} times, past the limit of {max}: given up without \
                 running the handler again"
            ));
            let action = self.give_up(&m, &subject, seq, delivered, &error).await;
            self.report(ConsumeError {
                subject,
                stream_sequence: seq,
                delivered,
                error,
                action,
            });
            return Outcome::Settled;
        }
        // A panicking handler (when it is called or while it runs) is a retryable failure:
        // it must neither unwind out of `consume` nor leave its message to `ack_wait`.
        let timer = crate::obs::Timer::start();
        let work = async move {
            match std::panic::catch_unwind(AssertUnwindSafe(|| handler(message))) {
                Ok(work) => AssertUnwindSafe(work)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|panic| Err(panicked(&*panic))),
                Err(panic) => Err(panicked(&*panic)),
            }
        };
        tokio::pin!(work);
        // Most handlers finish at once: only a handler still running gets a timer, which
        // keeps its message from being redelivered with in-progress acks.
        let result = match futures::poll!(&mut work) {
            std::task::Poll::Ready(result) => result,
            std::task::Poll::Pending => {
                let mut keepalive = tokio::time::interval_at(
                    tokio::time::Instant::now() + settings.keepalive,
                    settings.keepalive,
                );
                loop {
                    tokio::select! {
                        result = &mut work => break result,
                        _ = keepalive.tick() => {
                            debug!(seq, "handler still running: in-progress ack");
                            let _ = m.ack_with(AckKind::Progress).await;
                        }
                    }
                }
            }
        };
        crate::obs::handled(&m, timer);
        let error = match result {
            Ok(()) => {
                if let Err(e) = m.ack().await {
                    warn!(seq, error = %e, "ack failed; the message will be redelivered");
                    return Outcome::Settled;
                }
                Counters::add(&self.stats.acked);
                crate::obs::settled(&m, crate::obs::Settled::Acked);
                return Outcome::Acked;
            }
            Err(error) => error,
        };
        let exhausted = settings.max_deliver.is_some_and(|max| delivered >= max);
        let action = match error.retry_delay() {
            Some(asked) if !exhausted && self.options.ordered.is_some() => {
                let delay = asked.unwrap_or_else(|| self.options.retry_delay_for(delivered));
                debug!(seq, delivered, ?delay, error = %error, "handler failed: held, its key waits");
                Counters::add(&self.stats.held);
                self.report(ConsumeError {
                    subject,
                    stream_sequence: seq,
                    delivered,
                    error,
                    action: Action::Held { delay },
                });
                return Outcome::Hold {
                    message: Box::new(m),
                    delay,
                    retries: retries + 1,
                };
            }
            Some(asked) if !exhausted => {
                let delay = asked.unwrap_or_else(|| self.options.retry_delay_for(delivered));
                debug!(seq, delivered, ?delay, error = %error, "handler failed: nak");
                self.nak(&m, delay).await;
                Action::Nak { delay }
            }
            _ => self.give_up(&m, &subject, seq, delivered, &error).await,
        };
        self.report(ConsumeError {
            subject,
            stream_sequence: seq,
            delivered,
            error,
            action,
        });
        Outcome::Settled
    }

    async fn nak(&self, m: &jetstream::Message, delay: Duration) {
        let _ = m.ack_with(AckKind::Nak(Some(delay))).await;
        Counters::add(&self.stats.naked);
        crate::obs::settled(m, crate::obs::Settled::Naked);
    }

    /// Dead-letters (if configured) and terminates. If the dead-letter publish fails, the
    /// message is nak'ed instead: natty owns the delivery limit (the server's is unlimited),
    /// so it stays in the stream and is given up on again at its next delivery.
    async fn give_up(
        &self,
        m: &jetstream::Message,
        subject: &str,
        seq: u64,
        delivered: u64,
        error: &HandlerError,
    ) -> Action {
        let Some(dl) = &self.options.dead_letter else {
            let _ = m.ack_with(AckKind::Term).await;
            Counters::add(&self.stats.termed);
            crate::obs::settled(m, crate::obs::Settled::Termed);
            return Action::Terminated;
        };
        let stream = m.info().map(|i| i.stream.to_owned()).unwrap_or_default();
        let mut headers = HeaderMap::new();
        // The durable is part of the id: two durables (a broadcast) giving up on the same
        // sequence must both be stored, not the second dropped as a duplicate.
        let id = format!("natty-dl:{stream}:{}:{seq}", self.durable);
        headers.insert("Nats-Msg-Id", id.as_str());
        headers.insert(
            "Natty-Dead-Letter-Reason",
            error.to_string().replace(['\r', '\n'], " ").as_str(),
        );
        headers.insert("Natty-Original-Subject", subject);
        headers.insert("Natty-Original-Stream", stream.as_str());
        headers.insert("Natty-Stream-Sequence", seq.to_string().as_str());
        headers.insert("Natty-Deliveries", delivered.to_string().as_str());
        let stored = match self
            .js
            .publish_with_headers(dl.clone(), headers, m.payload.clone())
            .await
        {
            Ok(ack) => ack.await.map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            let delay = self.options.retry_max;
            warn!(seq, dead_letter = %dl, error = %e, ?delay, "dead-letter publish failed: nak instead of term");
            self.nak(m, delay).await;
            return Action::DeadLetterFailed {
                reason: e.to_string(),
                delay,
            };
        }
        Counters::add(&self.stats.dead_lettered);
        crate::obs::settled(m, crate::obs::Settled::DeadLettered);
        let _ = m.ack_with(AckKind::Term).await;
        Counters::add(&self.stats.termed);
        crate::obs::settled(m, crate::obs::Settled::Termed);
        Action::DeadLettered
    }

    fn report(&self, e: ConsumeError) {
        if let Some(tx) = &self.options.errors
            && tx.try_send(e).is_err()
        {
            Counters::add(&self.stats.errors_dropped);
        }
    }
}

/// A handler panic as a retryable failure, with the panic's message.
fn panicked(panic: &(dyn Any + Send)) -> HandlerError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".to_owned());
    warn!(panic = %what, "handler panicked: treated as a retryable failure");
    HandlerError::retry(format!("handler panicked: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_batch: Option<usize>, max_expires: Option<Duration>) -> Settings {
        Settings {
            keepalive: Duration::from_secs(10),
            max_deliver: None,
            max_batch,
            max_expires,
        }
    }

    #[test]
    fn pulls_are_clamped_to_the_durables_limits() {
        let o = ConsumeOptions::default(); // batch 200, expires 30 s, heartbeat 5 s
        let s = Duration::from_secs;
        let table = [
            (settings(None, None), 0, (200, s(30), s(5))),
            (settings(None, None), 150, (50, s(30), s(5))),
            (settings(Some(5), None), 0, (5, s(30), s(5))),
            (settings(Some(5), Some(s(20))), 0, (5, s(20), s(5))),
            // A clamped expires keeps the heartbeat below a third of it.
            (settings(None, Some(s(6))), 0, (200, s(6), s(2))),
            (settings(Some(500), Some(s(60))), 0, (200, s(30), s(5))),
        ];
        for (settings, waiting, want) in table {
            assert_eq!(settings.pull_size(&o, waiting), want, "{settings:?}");
        }
    }

    #[test]
    fn a_panic_is_a_retryable_failure_with_its_message() {
        let e = panicked(&"bad input");
        assert_eq!(e.retry_delay(), Some(None));
        assert_eq!(e.reason(), "handler panicked: bad input");
        let e = panicked(&String::from("index out of bounds"));
        assert_eq!(e.reason(), "handler panicked: index out of bounds");
        assert!(panicked(&42_u8).reason().contains("non-string"));
    }
}
