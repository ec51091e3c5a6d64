//! Metrics (feature `metrics`, through the `metrics` facade): one call per event, made from
//! the publish and consume paths. Without the feature every function here is an empty
//! `#[inline(always)]` body and [`Timer`] is a zero-sized type: nothing is compiled in.
//!
//! Names (see the README's "Observability" section): `natty_stream_*`, counters end in
//! `_total`, durations are histograms in seconds ending in `_seconds`; labels `stream` and
//! `consumer`. The stream of a publish is only known from its ack, so the counters of
//! attempts that may have no ack (`published`, `retried`, `failed`) carry a `publisher`
//! label (`batch` or `single`) instead.

#[cfg(feature = "metrics")]
mod imp {
    use std::time::Instant;

    use async_nats::jetstream;

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

    pub(crate) fn published(publisher: &'static str) {
        metrics::counter!("natty_stream_published_total", "publisher" => publisher).increment(1);
    }

    pub(crate) fn retried(publisher: &'static str) {
        metrics::counter!("natty_stream_publish_retried_total", "publisher" => publisher)
            .increment(1);
    }

    pub(crate) fn failed(publisher: &'static str) {
        metrics::counter!("natty_stream_publish_failed_total", "publisher" => publisher)
            .increment(1);
    }

    pub(crate) fn acked(stream: &str, since: Timer) {
        let stream = stream.to_owned();
        metrics::counter!("natty_stream_acked_total", "stream" => stream.clone()).increment(1);
        metrics::histogram!("natty_stream_publish_ack_seconds", "stream" => stream)
            .record(since.seconds());
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
    pub(crate) fn published(_: &'static str) {}
    #[inline(always)]
    pub(crate) fn retried(_: &'static str) {}
    #[inline(always)]
    pub(crate) fn failed(_: &'static str) {}
    #[inline(always)]
    pub(crate) fn acked(_: &str, _: Timer) {}
    #[inline(always)]
    pub(crate) fn consumed(_: &jetstream::Message) {}
    #[inline(always)]
    pub(crate) fn settled(_: &jetstream::Message, _: Settled) {}
    #[inline(always)]
    pub(crate) fn handled(_: &jetstream::Message, _: Timer) {}
}

pub(crate) use imp::*;
