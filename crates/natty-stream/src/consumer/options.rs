//! [`ConsumeOptions`]: how [`Consumer::consume`](super::Consumer::consume) pulls and retries.

use std::time::Duration;

use natty_core::names;

use super::OrderKey;
use crate::{ConsumeError, Error, ErrorKind, Message, error::from_core};

/// How [`Consumer::consume`](super::Consumer::consume) behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumeOptions {
    /// Messages held at most: pulled and waiting for a handler slot, plus those asked for by
    /// the pull in flight (default 200). Waiting ones are kept alive with in-progress acks.
    pub batch: usize,
    /// Handlers running at once (default 1: messages are handled in order).
    pub concurrency: usize,
    /// Nak delay for the first retry, doubled per delivery (default 1 s) ...
    pub retry_base: Duration,
    /// ... up to this (default 60 s). Also the delay before a message whose dead-letter
    /// publish failed comes back.
    pub retry_max: Duration,
    /// Where given-up messages go, with the reason in headers (`Natty-Dead-Letter-Reason`,
    /// `Natty-Original-Subject`, `Natty-Original-Stream`, `Natty-Stream-Sequence`,
    /// `Natty-Deliveries`, `Natty-Failures`) and a `Nats-Msg-Id` of
    /// `natty-dl:<stream>:<identity>:<sequence>` (see [`identity`](Self::identity)), so a
    /// repeat within the dead-letter stream's duplicate window is stored once. It must be
    /// captured by some stream; while it is not, the message stays in its own stream and comes
    /// back (and is then dead-lettered without running the handler again). A dead letter that
    /// would exceed the server's `max_payload` is stored without the payload, with header
    /// `Natty-Payload-Omitted` giving the payload's size.
    pub dead_letter: Option<String>,
    /// How long one pull request waits for messages (default 30 s).
    pub expires: Duration,
    /// Server heartbeat on a waiting pull; when two in a row are missed the pull is re-issued
    /// (default 5 s).
    pub heartbeat: Duration,
    /// How long the durable (or its stream) may be missing before `consume` gives up with
    /// `ConsumerNotFound` (or `StreamNotFound`); if it is re-created meanwhile, consuming
    /// carries on (default 30 s).
    pub consumer_gone_grace: Duration,
    /// Handler failures are reported here if set; never blocks consumption (a full channel
    /// drops the report and counts it in [`ConsumerStats::errors_dropped`](super::ConsumerStats)).
    pub errors: Option<tokio::sync::mpsc::Sender<ConsumeError>>,
    /// Per-key order (default none): see [`ordered_by_key`](Self::ordered_by_key).
    pub ordered: Option<OrderKey>,
    /// This consumer is the durable's only reader (default false): see
    /// [`exclusive`](Self::exclusive).
    pub exclusive: bool,
    /// The name failure counts and dead letters are keyed by (default: the durable's name):
    /// see [`identity`](Self::identity).
    pub identity: Option<String>,
    /// How long a graceful stop may take (default 15 s): see [`stop_timeout`](Self::stop_timeout).
    pub stop_timeout: Duration,
    /// How long one handler may run (default 5 min; `None`: unbounded): see
    /// [`handler_timeout`](Self::handler_timeout).
    pub handler_timeout: Option<Duration>,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        Self {
            batch: 200,
            concurrency: 1,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            dead_letter: None,
            expires: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            consumer_gone_grace: Duration::from_secs(30),
            errors: None,
            ordered: None,
            exclusive: false,
            identity: None,
            stop_timeout: Duration::from_secs(15),
            handler_timeout: Some(Duration::from_secs(300)),
        }
    }
}

/// Longest `expires`, `heartbeat`, retry delay, grace period or timeout accepted; a longer
/// delay asked for by a handler ([`HandlerError::retry_after`](crate::HandlerError::retry_after))
/// is clamped to it.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

impl ConsumeOptions {
    /// Messages held at most.
    #[must_use]
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n;
        self
    }

    /// Concurrency.
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Retry delays.
    #[must_use]
    pub fn retry_delay(mut self, base: Duration, max: Duration) -> Self {
        self.retry_base = base;
        self.retry_max = max;
        self
    }

    /// Dead-letter subject.
    #[must_use]
    pub fn dead_letter(mut self, subject: impl Into<String>) -> Self {
        self.dead_letter = Some(subject.into());
        self
    }

    /// Pull expiry.
    #[must_use]
    pub fn expires(mut self, expires: Duration) -> Self {
        self.expires = expires;
        self
    }

    /// Heartbeat of a waiting pull (two missed ones re-issue it).
    #[must_use]
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// How long a deleted durable may stay missing before `consume` gives up.
    #[must_use]
    pub fn consumer_gone_grace(mut self, grace: Duration) -> Self {
        self.consumer_gone_grace = grace;
        self
    }

    /// Error channel.
    #[must_use]
    pub fn errors(mut self, tx: tokio::sync::mpsc::Sender<ConsumeError>) -> Self {
        self.errors = Some(tx);
        self
    }

    /// Handles messages with the same key one at a time and in stream order, and different
    /// keys in parallel, up to [`concurrency`](Self::concurrency) handlers at once (Kafka's
    /// per-partition order, per key). `key_fn` gives a message's key; a message without one
    /// (`None`) is ordered with nothing.
    ///
    /// Retry policy — a failed message blocks its key: when a handler fails with a retryable
    /// error, the message is *not* nak'ed back to the server (the server would redeliver it
    /// after later messages of its key had run) but held by natty, kept alive with in-progress
    /// acks, and run again after the retry delay; its key's later messages wait for it, other
    /// keys go on. It stops blocking when its handler succeeds, or when it is given up on: a
    /// permanent error, or the delivery limit of [`ensure_consumer`](crate::ensure_consumer)
    /// (its handler failures; [`Message::delivered`] counts the server's deliveries plus
    /// natty's retries in place), then it is dead-lettered (or terminated) and the key moves
    /// on. A delay asked for with [`HandlerError::retry_after`](crate::HandlerError::retry_after)
    /// is clamped to 24 hours.
    /// No failure skips a message silently. Failures are reported as
    /// [`Action::Held`](crate::Action::Held) on the error channel.
    ///
    /// Limits: messages waiting for a busy key count against [`batch`](Self::batch); when
    /// `batch` messages of blocked keys are held, no more are pulled until one key moves
    /// (bounded memory at the price of head-of-line blocking: raise `batch` if one key often
    /// fails for long). Order is per consumer: several processes on one durable each order
    /// only what they get (use a consumer group for order across processes). On cancel,
    /// pulled messages go on running in key order until
    /// [`stop_timeout`](Self::stop_timeout); held and unstarted ones are then handed back
    /// (nak'ed); a redelivery by the server (a process that died, an ack lost) may come after
    /// a key's later messages (unless [`exclusive`](Self::exclusive)), and is counted in
    /// [`ConsumerStats::redelivered`](super::ConsumerStats).
    #[must_use]
    pub fn ordered_by_key<F>(mut self, key_fn: F) -> Self
    where
        F: Fn(&Message) -> Option<String> + Send + Sync + 'static,
    {
        self.ordered = Some(OrderKey::from_fn(key_fn));
        self
    }

    /// [`ordered_by_key`](Self::ordered_by_key) with subject token `index` (0-based) as the
    /// key: `ordered_by_subject_token(2)` orders `orders.eu.42` by `42`.
    #[must_use]
    pub fn ordered_by_subject_token(mut self, index: usize) -> Self {
        self.ordered = Some(OrderKey::subject_token(index));
        self
    }

    /// [`ordered_by_key`](Self::ordered_by_key) with the first value of header `name` as the
    /// key.
    #[must_use]
    pub fn ordered_by_header(mut self, name: impl Into<String>) -> Self {
        self.ordered = Some(OrderKey::header(name));
        self
    }

    /// Declares this consumer the durable's only reader while it runs, as a consumer group's
    /// partition owner is. natty then makes the durable's next reader get what an earlier one
    /// did not finish first, in stream order — like a Kafka consumer resuming from the
    /// committed offset — instead of `ack_wait` later, behind later messages of its key:
    /// - at start, if messages are still waiting for an ack (a previous reader was killed,
    ///   aborted, or handed messages back), the durable is reset to its ack floor (ADR-60,
    ///   server 2.14+);
    /// - at stop, natty asks the server how far it delivered; messages it sent to the pull
    ///   that never arrived (the server sends until it sees the unsubscribe, async-nats drops
    ///   what comes after) are put back the same way.
    ///
    /// A reset re-runs the messages acknowledged after the first unfinished one
    /// (at-least-once: duplicates rather than order broken), and redelivered messages start
    /// their delivery count again (a message that kills every reader is retried at each
    /// hand-over, not dead-lettered).
    ///
    /// Do not set it on a durable that other consumers read at the same time: the reset would
    /// redeliver their in-flight messages too. On an older server the reset is refused and
    /// logged; unfinished messages then come back after `ack_wait`.
    #[must_use]
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        self
    }

    /// The name this consumer's failure counts and dead letters are keyed by, stable when the
    /// durable is re-created; default: the durable name.
    ///
    /// The delivery limit counts handler failures in a small KV bucket (`natty_failures`, see
    /// [`Consumer::consume`](super::Consumer::consume)) under the stream, this identity and the
    /// stream sequence; the dead letter's `Nats-Msg-Id` is
    /// `natty-dl:<stream>:<identity>:<sequence>`. Set it when one logical reader uses durables
    /// with changing names (a consumer group's partition owner makes a durable per term and
    /// sets `"<group>_p<partition>"`), so failures counted under one durable still count under
    /// the next and a message dead-lettered by one owner is not stored again by the next. Two
    /// durables that must each give up on their own (a broadcast) need different identities.
    #[must_use]
    pub fn identity(mut self, name: impl Into<String>) -> Self {
        self.identity = Some(name.into());
        self
    }

    /// How long a graceful stop may take (default 15 s, well inside the usual 30 s a process
    /// supervisor such as Kubernetes gives before it kills).
    ///
    /// On cancel, `consume` stops pulling and hands back (naks) the messages pulled but not
    /// started — except with [`ordered_by_key`](Self::ordered_by_key), where it goes on
    /// starting them in key order until the deadline, keeping the waiting ones alive —, lets
    /// running handlers finish until the deadline, then cancels the ones still running (their
    /// futures are dropped) and hands their messages back. Handed-back messages are not
    /// handler failures: they never count against the delivery limit. After the deadline
    /// `consume` still flushes the acks (bounded by the client's request timeout) and, for an
    /// [`exclusive`](Self::exclusive) consumer, puts back what the server sent that never
    /// arrived (a few seconds at most).
    #[must_use]
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// How long one handler may run before it is cancelled (default 5 minutes, as Kafka's
    /// `max.poll.interval.ms`; `None`: no limit).
    ///
    /// A running handler is kept alive with in-progress acks, so without a limit a handler that
    /// hangs (a lost connection without a timeout, a deadlock) holds its slot — at concurrency
    /// 1, the whole consumer — forever. On expiry its future is dropped (cancelled at its
    /// current await; a handler blocking its thread cannot be interrupted) and the message
    /// fails as retryable: counted against the delivery limit, reported on the error channel,
    /// logged, retried after the retry delay. The default is generous so that legitimately
    /// long work is not cut off; set it close to what your handler needs, or `None` for jobs
    /// that may run for hours.
    #[must_use]
    pub fn handler_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.handler_timeout = timeout;
        self
    }

    /// Checks the options (done by [`Consumer::new`](super::Consumer::new)); a consumer group
    /// runs it on its consume options at its own construction. Errors are `InvalidConfig` (or
    /// `InvalidName` for a bad dead-letter subject or identity), naming the option.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what: String| {
            Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("consume options: {what}"),
            ))
        };
        if self.batch == 0 || self.concurrency == 0 {
            return bad("batch and concurrency must be at least 1".to_owned());
        }
        for (name, d) in [
            ("expires", self.expires),
            ("heartbeat", self.heartbeat),
            ("retry_base", self.retry_base),
            ("retry_max", self.retry_max),
            ("consumer_gone_grace", self.consumer_gone_grace),
            ("stop_timeout", self.stop_timeout),
            (
                "handler_timeout",
                self.handler_timeout.unwrap_or(Duration::ZERO),
            ),
        ] {
            if d > MAX_DURATION {
                return bad(format!(
                    "{name} must be at most {MAX_DURATION:?}, got {d:?}"
                ));
            }
        }
        if self.heartbeat < Duration::from_millis(100) || self.expires <= self.heartbeat * 2 {
            return bad(format!(
                "heartbeat must be at least 100ms and expires more than twice the heartbeat, \
                 got heartbeat {:?} and expires {:?}",
                self.heartbeat, self.expires
            ));
        }
        if self.handler_timeout.is_some_and(|t| t.is_zero()) {
            return bad("handler_timeout must be above zero (or None: no limit)".to_owned());
        }
        if let Some(dl) = &self.dead_letter {
            names::subject(dl).map_err(from_core)?;
        }
        if let Some(identity) = &self.identity {
            names::consumer(identity).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidName,
                    format!("consume options: identity {identity:?}: {e}"),
                )
            })?;
        }
        Ok(())
    }

    /// The nak delay after delivery `delivered` failed: `retry_base` doubled per delivery,
    /// capped at `retry_max`.
    pub(super) fn retry_delay_for(&self, delivered: u64) -> Duration {
        let exp = u32::try_from(delivered.saturating_sub(1).min(20)).unwrap_or(20);
        self.retry_base
            .checked_mul(2u32.pow(exp))
            .unwrap_or(self.retry_max)
            .min(self.retry_max)
    }
}

/// A delay asked for by a handler, clamped to what natty accepts (`Instant + delay` and the
/// server's nanosecond delay field must not overflow).
pub(super) fn clamp_delay(delay: Duration) -> Duration {
    delay.min(MAX_DURATION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_up_to_the_cap_and_never_overflow() {
        let o =
            ConsumeOptions::default().retry_delay(Duration::from_secs(1), Duration::from_secs(10));
        let got: Vec<u64> = (1..=6).map(|d| o.retry_delay_for(d).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 10, 10]);
        let huge = ConsumeOptions::default().retry_delay(MAX_DURATION, MAX_DURATION);
        assert_eq!(huge.retry_delay_for(u64::MAX), MAX_DURATION);
    }

    #[test]
    fn nonsense_is_refused_before_the_network() {
        for o in [
            ConsumeOptions::default().batch(0),
            ConsumeOptions::default().concurrency(0),
            ConsumeOptions::default().heartbeat(Duration::ZERO),
            ConsumeOptions::default().heartbeat(Duration::from_secs(20)),
            ConsumeOptions::default().expires(Duration::MAX),
            ConsumeOptions::default().retry_delay(Duration::MAX, Duration::MAX),
            ConsumeOptions::default().consumer_gone_grace(Duration::MAX),
            ConsumeOptions::default().stop_timeout(Duration::MAX),
            ConsumeOptions::default().handler_timeout(Some(Duration::MAX)),
            ConsumeOptions::default().handler_timeout(Some(Duration::ZERO)),
        ] {
            let kind = o.validate().map_err(|e| e.kind()).err();
            assert_eq!(kind, Some(ErrorKind::InvalidConfig), "{o:?}");
        }
        let bad_subject = ConsumeOptions::default().dead_letter("bad subject");
        let kind = bad_subject.validate().map_err(|e| e.kind()).err();
        assert_eq!(kind, Some(ErrorKind::InvalidName));
        let bad_identity = ConsumeOptions::default().identity("a.b");
        let kind = bad_identity.validate().map_err(|e| e.kind()).err();
        assert_eq!(kind, Some(ErrorKind::InvalidName));
        assert!(ConsumeOptions::default().validate().is_ok());
        assert!(
            ConsumeOptions::default()
                .handler_timeout(None)
                .identity("orders_p3")
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn delays_asked_for_are_clamped() {
        assert_eq!(clamp_delay(Duration::MAX), MAX_DURATION);
        assert_eq!(clamp_delay(Duration::from_secs(3)), Duration::from_secs(3));
        // What the clamp protects: neither overflows.
        let _ = tokio::time::Instant::now() + clamp_delay(Duration::MAX);
        assert!(u64::try_from(clamp_delay(Duration::MAX).as_nanos()).is_ok());
    }
}
