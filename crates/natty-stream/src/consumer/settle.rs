//! Running the handler on one message and settling it: ack, nak, dead-letter, term.

use std::{fmt, future::Future, sync::Arc, time::Duration};

use async_nats::{
    HeaderMap,
    jetstream::{self, AckKind},
};
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
}

pub(super) struct Shared {
    pub(super) js: jetstream::Context,
    pub(super) options: ConsumeOptions,
    pub(super) stats: Arc<Counters>,
}

impl Shared {
    pub(super) async fn process<H, Fut>(
        self: Arc<Self>,
        m: jetstream::Message,
        handler: Arc<H>,
        settings: Settings,
    ) where
        H: Fn(Message) -> Fut,
        Fut: Future<Output = Result<(), HandlerError>>,
    {
        let message = Message::from_jetstream(&m);
        let (subject, seq, delivered) = (
            message.subject.clone(),
            message.stream_sequence,
            message.delivered,
        );
        let timer = crate::obs::Timer::start();
        let work = handler(message);
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
                } else {
                    Counters::add(&self.stats.acked);
                    crate::obs::settled(&m, crate::obs::Settled::Acked);
                }
                return;
            }
            Err(error) => error,
        };
        let exhausted = settings.max_deliver.is_some_and(|max| delivered >= max);
        let action = match error.retry_delay() {
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
        headers.insert("Nats-Msg-Id", format!("natty-dl:{stream}:{seq}").as_str());
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
