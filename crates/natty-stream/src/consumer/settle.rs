//! Running the handler on one message and settling it: ack, nak, dead-letter, term.

use std::{any::Any, fmt, future::Future, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use async_nats::{
    HeaderMap,
    jetstream::{self, AckKind},
};
use futures::FutureExt;
use tracing::{debug, warn};

use tokio_util::sync::CancellationToken;

use super::{
    ConsumeOptions,
    health::StreamFacts,
    ledger::{Ledger, Place},
    options::clamp_delay,
    stats::Counters,
};
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
    /// Handler failures counted for it, this one included (what the delivery limit counts);
    /// `None` when not counted: no delivery limit, or the failure ledger could not be read.
    pub failures: Option<u64>,
    /// What the handler said.
    pub error: HandlerError,
    /// What was done.
    pub action: Action,
}

impl fmt::Display for ConsumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "handling message {} on {:?} (delivery {}{}): {}; {}",
            self.stream_sequence,
            self.subject,
            self.delivered,
            self.failures
                .map(|f| format!(", failure {f}"))
                .unwrap_or_default(),
            self.error,
            self.action
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
    /// The consumed stream, for the failure ledger's keys and replicas.
    pub(super) stream: StreamFacts,
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
    /// Handed back (nak'ed) by natty itself, not for a handler failure: the stop deadline
    /// cancelled its handler or came before it started. Not counted against the limit.
    HandedBack,
    /// The handler failed and the consumer orders by key: the message stays with natty, to
    /// run again after `delay` (the server's delivery count does not move; `retries` counts).
    Hold {
        /// Boxed: the common outcome, `Settled`, stays small.
        message: Box<jetstream::Message>,
        delay: Duration,
        retries: u64,
        /// Its handler failures so far, if known.
        failures: Option<u64>,
    },
}

pub(super) struct Shared {
    pub(super) js: jetstream::Context,
    /// The stream consumed, part of the failure ledger's keys and the dead-letter id.
    pub(super) stream: String,
    /// The durable's name, for the per-message span.
    pub(super) durable: String,
    /// What failure counts and dead letters are keyed by (default: the durable's name).
    pub(super) identity: String,
    pub(super) options: ConsumeOptions,
    pub(super) stats: Arc<Counters>,
    pub(super) ledger: Ledger,
    /// Fired at the stop deadline: handlers still running are cancelled and their messages
    /// handed back.
    pub(super) abandon: CancellationToken,
}

/// What natty knows of a message before its handler runs (carried across retries held in
/// place).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Known {
    /// Times natty ran it and held it for a retry (ordered by key), added to the server's
    /// delivery count.
    pub(super) retries: u64,
    /// Handler failures counted so far, when known.
    pub(super) failures: Option<u64>,
}

/// The longest dead-letter reason header kept (a handler's error text may be long).
const MAX_REASON: usize = 1024;

impl Shared {
    /// Handles and settles `m` inside its per-message span (continuing the publisher's trace
    /// with feature `otel`).
    pub(super) fn process<H, Fut>(
        self: Arc<Self>,
        m: jetstream::Message,
        handler: Arc<H>,
        settings: Settings,
        known: Known,
    ) -> tracing::instrument::Instrumented<impl Future<Output = Outcome>>
    where
        H: Fn(Message) -> Fut,
        Fut: Future<Output = Result<(), HandlerError>>,
    {
        let span = crate::trace::process_span(&m, &self.durable);
        tracing::Instrument::instrument(self.handle(m, handler, settings, known), span)
    }

    async fn handle<H, Fut>(
        self: Arc<Self>,
        m: jetstream::Message,
        handler: Arc<H>,
        settings: Settings,
        known: Known,
    ) -> Outcome
    where
        H: Fn(Message) -> Fut,
        Fut: Future<Output = Result<(), HandlerError>>,
    {
        if self.abandon.is_cancelled() {
            return self.hand_back(&m).await;
        }
        let mut message = Message::from_jetstream(&m);
        let server_delivered = message.delivered;
        message.delivered = server_delivered.saturating_add(known.retries);
        let (subject, seq, delivered) = (
            message.subject.clone(),
            message.stream_sequence,
            message.delivered,
        );
        let place = Place::new(&self.stream, settings.stream.created, &self.identity);
        let replicas = settings.stream.replicas;
        // A redelivery may have failed before (in this process or an earlier one): what the
        // ledger says decides whether it is past the limit. A first delivery is assumed
        // clean (cheap: no read when handlers succeed).
        let mut failures = known.failures;
        if failures.is_none() && settings.max_deliver.is_some() && server_delivered > 1 && seq > 0 {
            failures = tokio::select! {
                () = self.abandon.cancelled() => return self.hand_back(&m).await,
                f = self.ledger.failures(&place, seq, replicas) => f,
            };
        }
        // Past natty's limit already — its handler ran and failed that often (an earlier
        // dead-letter publish failed, or the process stopped between counting the last
        // failure and settling): given up without running the handler again.
        if let (Some(max), Some(f)) = (settings.max_deliver, failures)
            && f >= max
        {
            let error = HandlerError::retry(format!(
                "its handler failed {f} times, the limit is {max}: given up without running \
                 it again"
            ));
            let action = self
                .give_up(&m, &subject, seq, delivered, Some(f), &error)
                .await;
            self.report(ConsumeError {
                subject,
                stream_sequence: seq,
                delivered,
                failures: Some(f),
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
        // In a slot, so a handler past its timeout is dropped (cancelled) at once, before its
        // message is settled.
        let mut work = std::pin::pin!(Some(work));
        // Most handlers finish at once: only a handler still running gets a timer, which
        // keeps its message from being redelivered with in-progress acks.
        let first = {
            let first = std::pin::pin!(run(work.as_mut()));
            futures::poll!(first)
        };
        let result = match first {
            std::task::Poll::Ready(result) => result,
            std::task::Poll::Pending => {
                let now = tokio::time::Instant::now();
                let mut keepalive =
                    tokio::time::interval_at(now + settings.keepalive, settings.keepalive);
                let timeout = self.options.handler_timeout;
                let expiry = timeout.map(|t| now + t);
                loop {
                    tokio::select! {
                        biased;
                        result = run(work.as_mut()) => break result,
                        () = self.abandon.cancelled() => {
                            work.set(None);
                            debug!(seq, "stop deadline: handler cancelled, message handed back");
                            return self.hand_back(&m).await;
                        }
                        () = tokio::time::sleep_until(expiry.unwrap_or(now)), if expiry.is_some() => {
                            work.set(None);
                            let after = timeout.unwrap_or_default();
                            warn!(seq, subject, ?after, "handler timed out: cancelled; a retryable failure");
                            break Err(HandlerError::retry(format!(
                                "handler timed out after {after:?} (ConsumeOptions::handler_timeout)"
                            )));
                        }
                        _ = keepalive.tick() => {
                            debug!(seq, "handler still running: in-progress ack");
                            let _ = m.ack_with(AckKind::Progress).await;
                        }
                    }
                }
            }
        };
        work.set(None);
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
        let Some(asked) = error.retry_delay() else {
            let action = self
                .give_up(&m, &subject, seq, delivered, failures, &error)
                .await;
            self.report(ConsumeError {
                subject,
                stream_sequence: seq,
                delivered,
                failures,
                error,
                action,
            });
            return Outcome::Settled;
        };
        // A retryable failure: counted in the ledger when there is a limit. When the ledger
        // cannot be read the count is unknown and the message is never given up on for the
        // limit (fail safe: retried with a delay).
        let failures = match settings.max_deliver {
            None => None,
            Some(_) => {
                let before = match failures {
                    Some(f) => Some(f),
                    None if seq > 0 => self.ledger.failures(&place, seq, replicas).await,
                    None => None,
                };
                match before {
                    Some(f) => {
                        let now = f.saturating_add(1);
                        // A failed write only loses this failure for later deliveries (one
                        // more run, never fewer); the ledger warns.
                        self.ledger.record(&place, seq, now, replicas).await;
                        Some(now)
                    }
                    None => None,
                }
            }
        };
        let exhausted = settings
            .max_deliver
            .zip(failures)
            .is_some_and(|(max, f)| f >= max);
        let delay = asked
            .map(clamp_delay)
            .unwrap_or_else(|| self.options.retry_delay_for(failures.unwrap_or(delivered)));
        let action = match () {
            () if exhausted => {
                self.give_up(&m, &subject, seq, delivered, failures, &error)
                    .await
            }
            () if self.options.ordered.is_some() => {
                debug!(seq, delivered, ?failures, ?delay, error = %error, "handler failed: held, its key waits");
                Counters::add(&self.stats.held);
                self.report(ConsumeError {
                    subject,
                    stream_sequence: seq,
                    delivered,
                    failures,
                    error,
                    action: Action::Held { delay },
                });
                return Outcome::Hold {
                    message: Box::new(m),
                    delay,
                    retries: known.retries + 1,
                    failures,
                };
            }
            () => {
                debug!(seq, delivered, ?failures, ?delay, error = %error, "handler failed: nak");
                self.nak(&m, Some(delay)).await;
                Action::Nak { delay }
            }
        };
        self.report(ConsumeError {
            subject,
            stream_sequence: seq,
            delivered,
            failures,
            error,
            action,
        });
        Outcome::Settled
    }

    async fn nak(&self, m: &jetstream::Message, delay: Option<Duration>) {
        let _ = m.ack_with(AckKind::Nak(delay)).await;
        Counters::add(&self.stats.naked);
        crate::obs::settled(m, crate::obs::Settled::Naked);
    }

    /// Hands a message back to the server at once, not for a handler failure (nothing is
    /// counted): it is redelivered at once, to this durable's next reader.
    pub(super) async fn hand_back(&self, m: &jetstream::Message) -> Outcome {
        self.nak(m, None).await;
        Outcome::HandedBack
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
        failures: Option<u64>,
        error: &HandlerError,
    ) -> Action {
        let Some(dl) = &self.options.dead_letter else {
            warn!(
                subject,
                seq,
                delivered,
                ?failures,
                reason = %error,
                "given up on: terminated (no dead-letter subject)"
            );
            let _ = m.ack_with(AckKind::Term).await;
            Counters::add(&self.stats.termed);
            crate::obs::settled(m, crate::obs::Settled::Termed);
            return Action::Terminated;
        };
        let stream = m.info().map(|i| i.stream.to_owned()).unwrap_or_default();
        let mut headers = HeaderMap::new();
        // The identity (default: the durable) is part of the id: two durables (a broadcast)
        // giving up on the same sequence must both be stored, not the second dropped as a
        // duplicate; one reader whose durable is re-created (a group's owners) stores it once.
        let id = format!("natty-dl:{stream}:{}:{seq}", self.identity);
        headers.insert("Nats-Msg-Id", id.as_str());
        headers.insert(
            "Natty-Dead-Letter-Reason",
            header_value(&error.to_string(), MAX_REASON).as_str(),
        );
        headers.insert("Natty-Original-Subject", subject);
        headers.insert("Natty-Original-Stream", stream.as_str());
        headers.insert("Natty-Stream-Sequence", seq.to_string().as_str());
        headers.insert("Natty-Deliveries", delivered.to_string().as_str());
        if let Some(f) = failures {
            headers.insert("Natty-Failures", f.to_string().as_str());
        }
        // A dead letter over the server's max_payload (headers included) would make the server
        // close the shared connection, and then fail again at every redelivery: stored
        // without its payload instead, saying so.
        let limit = self.js.client().server_info().max_payload;
        let mut payload = m.payload.clone();
        if limit > 0 && headers_len(&headers) + payload.len() > limit {
            headers.insert(
                "Natty-Payload-Omitted",
                format!(
                    "{} bytes: the dead letter would exceed the server's max_payload of {limit}",
                    payload.len()
                )
                .as_str(),
            );
            warn!(
                seq,
                size = payload.len(),
                max_payload = limit,
                "dead letter over the server's max_payload: stored without its payload"
            );
            payload = bytes::Bytes::new();
        }
        let stored = match self
            .js
            .publish_with_headers(dl.clone(), headers, payload)
            .await
        {
            Ok(ack) => ack.await.map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            let delay = self.options.retry_max;
            warn!(subject, seq, delivered, ?failures, reason = %error, dead_letter = %dl, error = %e, ?delay,
                "giving up: the dead-letter publish failed, nak instead of term (tried again at its next delivery)");
            self.nak(m, Some(delay)).await;
            return Action::DeadLetterFailed {
                reason: e.to_string(),
                delay,
            };
        }
        warn!(
            subject,
            seq,
            delivered,
            ?failures,
            reason = %error,
            dead_letter = %dl,
            "given up on: dead-lettered and terminated"
        );
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

/// Runs the future in the slot; pending forever once the slot is emptied.
async fn run<F: Future>(slot: std::pin::Pin<&mut Option<F>>) -> F::Output {
    match slot.as_pin_mut() {
        Some(work) => work.await,
        None => std::future::pending().await,
    }
}

/// `text` as a header value: CR/LF replaced, at most `max` bytes (cut at a character).
fn header_value(text: &str, max: usize) -> String {
    let mut v = text.replace(['\r', '\n'], " ");
    if v.len() > max {
        let mut end = max;
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        v.truncate(end);
        v.push('…');
    }
    v
}

/// The size of `headers` on the wire (`NATS/1.0\r\n`, `name: value\r\n` each, `\r\n`), which
/// counts against `max_payload` with the payload.
fn headers_len(headers: &HeaderMap) -> usize {
    let lines: usize = headers
        .iter()
        .map(|(name, values)| {
            values
                .iter()
                .map(|v| AsRef::<[u8]>::as_ref(name).len() + 2 + v.as_str().len() + 2)
                .sum::<usize>()
        })
        .sum();
    "NATS/1.0\r\n".len() + lines + 2
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
            stream: StreamFacts {
                created: 0,
                replicas: 1,
            },
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
