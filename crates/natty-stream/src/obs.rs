//! Metrics (feature `metrics`, through the `metrics` facade): one call per event, made from
//! the publish and consume paths. Without the feature every function here is an empty
//! `#[inline(always)]` body and [`Timer`] is a zero-sized type: nothing is compiled in.
//!
//! Names (see the docs/observability.md): `natty_stream_*`, counters end in
//! `_total`, durations are histograms in seconds ending in `_seconds`. Publish metrics carry
//! `stream` (empty when no known stream captures the subject) and `publisher` (`single` or
//! `batch`); consume metrics carry `stream` and `consumer`.

/// Which publisher a publish metric comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Via {
    Single,
    Batch,
}

#[cfg(feature = "metrics")]
mod imp {
    use std::time::Instant;

    use async_nats::jetstream;

    use super::Via;

    impl Via {
        fn label(self) -> &'static str {
            match self {
                Self::Single => "single",
                Self::Batch => "batch",
            }
        }
    }

    /// When an operation started.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Timer(Instant);

    impl Timer {
        pub(crate) fn start() -> Self {
            Self(Instant::now())
        }
        fn seconds(self) -> f64 {
            self.0.elapsed().as_secs_f64()
        }
    }

    fn publish_counter(name: &'static str, stream: &str, via: Via) {
        metrics::counter!(name, "stream" => stream.to_owned(), "publisher" => via.label())
            .increment(1);
    }

    /// A message handed to the server for the first time (counted once per message).
    pub(crate) fn published(stream: &str, via: Via) {
        publish_counter("natty_stream_published_total", stream, via);
    }

    pub(crate) fn retried(stream: &str, via: Via) {
        publish_counter("natty_stream_publish_retried_total", stream, via);
    }

    pub(crate) fn failed(stream: &str, via: Via) {
        publish_counter("natty_stream_publish_failed_total", stream, via);
    }

    /// A message acknowledged by its stream, `since` it was sent.
    pub(crate) fn acked(stream: &str, via: Via, since: Timer) {
        acked_seconds(stream, via, since.seconds());
    }

    /// A message acknowledged by its stream, `since` the batch publisher's task took it (fast
    /// ingest: one ack covers many messages, so the timer is the message's own).
    pub(crate) fn acked_since(stream: &str, via: Via, since: tokio::time::Instant) {
        acked_seconds(stream, via, since.elapsed().as_secs_f64());
    }

    fn acked_seconds(stream: &str, via: Via, seconds: f64) {
        publish_counter("natty_stream_acked_total", stream, via);
        metrics::histogram!("natty_stream_publish_ack_seconds", "stream" => stream.to_owned(), "publisher" => via.label())
            .record(seconds);
    }

    fn labels(m: &jetstream::Message) -> (String, String, u64) {
        m.info()
            .map(|i| (i.stream.to_owned(), i.consumer.to_owned(), i.pending))
            .unwrap_or_default()
    }

    /// A message pulled: counts it and sets the consumer's lag to the pending count the server
    /// sent with it.
    pub(crate) fn consumed(m: &jetstream::Message) {
        let (stream, consumer, pending) = labels(m);
        metrics::counter!("natty_stream_consumed_total", "stream" => stream.clone(), "consumer" => consumer.clone())
            .increment(1);
        #[allow(
            clippy::cast_precision_loss,
            reason = "a gauge is an f64; lag beyond 2^53 is approximate"
        )]
        metrics::gauge!("natty_stream_consumer_lag", "stream" => stream, "consumer" => consumer)
            .set(pending as f64);
    }

    /// How a message was settled.
    #[derive(Debug, Clone, Copy)]
    pub(crate) enum Settled {
        Acked,
        Naked,
        Termed,
        DeadLettered,
    }

    pub(crate) fn settled(m: &jetstream::Message, how: Settled) {
        let (stream, consumer, _) = labels(m);
        let name = match how {
            Settled::Acked => "natty_stream_consumer_acked_total",
            Settled::Naked => "natty_stream_consumer_naked_total",
            Settled::Termed => "natty_stream_consumer_termed_total",
            Settled::DeadLettered => "natty_stream_consumer_dead_lettered_total",
        };
        metrics::counter!(name, "stream" => stream, "consumer" => consumer).increment(1);
    }

    pub(crate) fn handled(m: &jetstream::Message, since: Timer) {
        let (stream, consumer, _) = labels(m);
        metrics::histogram!("natty_stream_handler_seconds", "stream" => stream, "consumer" => consumer)
            .record(since.seconds());
    }
}

#[cfg(not(feature = "metrics"))]
#[allow(clippy::inline_always, reason = "the point: these compile to nothing")]
mod imp {
    use async_nats::jetstream;

    use super::Via;

    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Timer;

    impl Timer {
        #[inline(always)]
        pub(crate) fn start() -> Self {
            Self
        }
    }

    #[derive(Debug, Clone, Copy)]
    pub(crate) enum Settled {
        Acked,
        Naked,
        Termed,
        DeadLettered,
    }

    #[inline(always)]
    pub(crate) fn published(_: &str, _: Via) {}
    #[inline(always)]
    pub(crate) fn retried(_: &str, _: Via) {}
    #[inline(always)]
    pub(crate) fn failed(_: &str, _: Via) {}
    #[inline(always)]
    pub(crate) fn acked(_: &str, _: Via, _: Timer) {}
    #[inline(always)]
    pub(crate) fn acked_since(_: &str, _: Via, _: tokio::time::Instant) {}
    #[inline(always)]
    pub(crate) fn consumed(_: &jetstream::Message) {}
    #[inline(always)]
    pub(crate) fn settled(_: &jetstream::Message, _: Settled) {}
    #[inline(always)]
    pub(crate) fn handled(_: &jetstream::Message, _: Timer) {}
}

pub(crate) use imp::*;
