//! [`Consumer`]: a durable pull consumer driven by a handler (Go natty `Consume`).

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use async_nats::{
    HeaderMap,
    jetstream::{self, AckKind, consumer::pull},
};
use futures::{FutureExt, StreamExt};
use natty_core::{Client, names};
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    Error, ErrorKind, HandlerError, Message,
    admin::get_stream,
    error::{CONSUMER_NOT_FOUND, from_core, server_code},
};

/// How [`Consumer::consume`] behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumeOptions {
    /// Messages pulled per request (default 200).
    pub batch: usize,
    /// Handlers running at once (default 1: messages are handled in order).
    pub concurrency: usize,
    /// Nak delay for the first retry, doubled per delivery (default 1 s) ...
    pub retry_base: Duration,
    /// ... up to this (default 60 s).
    pub retry_max: Duration,
    /// Where terminated messages go, with the reason in headers (`Natty-Dead-Letter-Reason`,
    /// `Natty-Original-Subject`, `Natty-Original-Stream`, `Natty-Stream-Sequence`,
    /// `Natty-Deliveries`). It must be captured by some stream.
    pub dead_letter: Option<String>,
    /// How long one pull request waits for messages (default 30 s).
    pub expires: Duration,
    /// Server heartbeat on a waiting pull; two missed ones re-issue the pull (default 5 s).
    pub heartbeat: Duration,
    /// Handler failures are reported here if set; never blocks consumption (a full channel
    /// drops the report and counts it in [`ConsumerStats::errors_dropped`]).
    pub errors: Option<tokio::sync::mpsc::Sender<ConsumeError>>,
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
            errors: None,
        }
    }
}

impl ConsumeOptions {
    /// Batch size.
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

    /// Error channel.
    #[must_use]
    pub fn errors(mut self, tx: tokio::sync::mpsc::Sender<ConsumeError>) -> Self {
        self.errors = Some(tx);
        self
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |what: &str| {
            Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("consume options: {what}"),
            ))
        };
        if self.batch == 0 || self.concurrency == 0 {
            return bad("batch and concurrency must be at least 1");
        }
        if self.heartbeat.is_zero() || self.expires <= self.heartbeat * 2 {
            return bad("expires must be more than twice the heartbeat");
        }
        if let Some(dl) = &self.dead_letter {
            names::subject(dl).map_err(from_core)?;
        }
        Ok(())
    }

    fn retry_delay_for(&self, delivered: u64) -> Duration {
        let exp = u32::try_from(delivered.saturating_sub(1).min(20)).unwrap_or(20);
        (self.retry_base * 2u32.pow(exp)).min(self.retry_max)
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
    /// What was done: `"nak"`, `"term"` or `"dead-lettered"`.
    pub action: &'static str,
}

/// Counters and liveness of a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// Messages received.
    pub delivered: u64,
    /// Messages acknowledged.
    pub acked: u64,
    /// Messages nak'ed for redelivery.
    pub naked: u64,
    /// Messages terminated.
    pub termed: u64,
    /// Messages sent to the dead-letter subject.
    pub dead_lettered: u64,
    /// Messages received that had been delivered before.
    pub redelivered: u64,
    /// Pull requests re-issued after a stall or error.
    pub repulls: u64,
    /// Error reports dropped because the error channel was full.
    pub errors_dropped: u64,
    /// When the last message arrived.
    pub last_activity: Option<SystemTime>,
}

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    acked: AtomicU64,
    naked: AtomicU64,
    termed: AtomicU64,
    dead_lettered: AtomicU64,
    redelivered: AtomicU64,
    repulls: AtomicU64,
    errors_dropped: AtomicU64,
    last_activity: Mutex<Option<SystemTime>>,
}

impl Counters {
    fn snapshot(&self) -> ConsumerStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConsumerStats {
            delivered: l(&self.delivered),
            acked: l(&self.acked),
            naked: l(&self.naked),
            termed: l(&self.termed),
            dead_lettered: l(&self.dead_lettered),
            redelivered: l(&self.redelivered),
            repulls: l(&self.repulls),
            errors_dropped: l(&self.errors_dropped),
            last_activity: *self
                .last_activity
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        }
    }
}

/// A durable consumer to run a handler on. Cheap to clone; clones share counters.
#[derive(Debug, Clone)]
pub struct Consumer {
    client: Client,
    stream: String,
    durable: String,
    options: ConsumeOptions,
    stats: Arc<Counters>,
}

impl Consumer {
    /// A consumer of the durable `durable` on `stream` (create it with
    /// [`ensure_consumer`](crate::ensure_consumer)).
    pub fn new(
        client: Client,
        stream: &str,
        durable: &str,
        options: ConsumeOptions,
    ) -> Result<Self, Error> {
        names::stream(stream).map_err(from_core)?;
        names::consumer(durable).map_err(from_core)?;
        options.validate()?;
        Ok(Self {
            client,
            stream: stream.to_owned(),
            durable: durable.to_owned(),
            options,
            stats: Arc::default(),
        })
    }

    /// Counters and last activity.
    pub fn stats(&self) -> ConsumerStats {
        self.stats.snapshot()
    }

    /// Runs `handler` on every message until `cancel` fires (Go `Consume`). `Ok(())` acks,
    /// `Err(HandlerError::Retry)` naks with a delay growing with the delivery count,
    /// `Err(HandlerError::Permanent)` (or a retry past `max_deliver`) dead-letters and
    /// terminates. Long handlers are kept alive with in-progress acks every `ack_wait / 3`.
    ///
    /// On cancel it stops pulling, hands back (naks) messages pulled but not started, lets
    /// running handlers finish and ack, flushes the acks to the server, and returns the
    /// counters. Cancel safety: dropping the future instead abandons in-flight messages,
    /// which the server redelivers after `ack_wait` (at-least-once either way).
    pub async fn consume<H, Fut>(
        &self,
        cancel: CancellationToken,
        handler: H,
    ) -> Result<ConsumerStats, Error>
    where
        H: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let span =
            info_span!("natty.stream.consume", stream = %self.stream, durable = %self.durable);
        self.run(cancel, Arc::new(handler)).instrument(span).await
    }

    async fn run<H, Fut>(
        &self,
        cancel: CancellationToken,
        handler: Arc<H>,
    ) -> Result<ConsumerStats, Error>
    where
        H: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let stream = get_stream(self.client.jetstream(), &self.stream).await?;
        let mut consumer: jetstream::consumer::Consumer<pull::Config> =
            stream.get_consumer(&self.durable).await.map_err(|e| {
                let context = format!(
                    "opening consumer {:?} on stream {:?}",
                    self.durable, self.stream
                );
                let kind = if server_code(&*e) == Some(CONSUMER_NOT_FOUND) {
                    ErrorKind::ConsumerNotFound
                } else {
                    ErrorKind::Other
                };
                Error::with_source(kind, context, e)
            })?;
        let info = consumer.cached_info().config.clone();
        let shared = Arc::new(Shared {
            js: self.client.jetstream().clone(),
            options: self.options.clone(),
            stats: self.stats.clone(),
            keepalive: info.ack_wait / 3,
            max_deliver: info.max_deliver,
        });
        let permits = Arc::new(Semaphore::new(self.options.concurrency));
        let mut running = JoinSet::new();
        let mut backoff = Duration::from_millis(100);
        info!("consuming");
        'pulls: while !cancel.is_cancelled() {
            let batch = tokio::select! {
                () = cancel.cancelled() => break,
                batch = consumer
                    .batch()
                    .max_messages(self.options.batch)
                    .expires(self.options.expires)
                    .heartbeat(self.options.heartbeat)
                    .messages() => batch,
            };
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, retry_in = ?backoff, "pull request failed");
                    self.stats.repulls.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    // The consumer may have been re-created: refresh its info.
                    if let Ok(c) = stream.get_consumer(&self.durable).await {
                        consumer = c;
                    }
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            loop {
                let next = tokio::select! {
                    biased;
                    () = cancel.cancelled() => {
                        // Stop pulling: hand back what already arrived but was not started.
                        while let Some(Some(Ok(m))) = batch.next().now_or_never() {
                            let _ = m.ack_with(AckKind::Nak(None)).await;
                            self.stats.naked.fetch_add(1, Ordering::Relaxed);
                        }
                        break 'pulls;
                    }
                    next = batch.next() => next,
                };
                match next {
                    Some(Ok(m)) if self.options.concurrency == 1 => {
                        // One at a time, in order: no task, no semaphore.
                        shared.process(m, handler.as_ref()).await;
                    }
                    Some(Ok(m)) => {
                        let permit = tokio::select! {
                            permit = permits.clone().acquire_owned() => permit.expect("never closed"),
                            () = cancel.cancelled() => {
                                let _ = m.ack_with(AckKind::Nak(None)).await;
                                self.stats.naked.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        };
                        let shared = shared.clone();
                        let handler = handler.clone();
                        running.spawn(async move {
                            shared.process(m, handler.as_ref()).await;
                            drop(permit);
                        });
                        // Reap finished handlers so the set does not grow.
                        while running.try_join_next().is_some() {}
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, "pull stalled (missed heartbeat or reconnect); re-issuing");
                        self.stats.repulls.fetch_add(1, Ordering::Relaxed);
                        continue 'pulls;
                    }
                    None => continue 'pulls,
                }
            }
        }
        info!(
            running = running.len(),
            "cancelled: letting running handlers finish"
        );
        while running.join_next().await.is_some() {}
        // Acks are fire-and-forget publishes: make sure they left before we report done.
        if let Err(e) = self.client.nats().flush().await {
            warn!(error = %e, "flushing acks");
        }
        let stats = self.stats();
        info!(?stats, "consumer stopped");
        Ok(stats)
    }
}

struct Shared {
    js: jetstream::Context,
    options: ConsumeOptions,
    stats: Arc<Counters>,
    keepalive: Duration,
    max_deliver: i64,
}

impl Shared {
    async fn process<H, Fut>(&self, m: jetstream::Message, handler: &H)
    where
        H: Fn(Message) -> Fut,
        Fut: Future<Output = Result<(), HandlerError>>,
    {
        let message = Message::from_jetstream(&m);
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        *self
            .stats
            .last_activity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(SystemTime::now());
        if message.delivered > 1 {
            self.stats.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        let (subject, seq, delivered) = (
            message.subject.clone(),
            message.stream_sequence,
            message.delivered,
        );
        let work = handler(message);
        tokio::pin!(work);
        // Most handlers finish at once: only a handler still running gets a timer, which
        // keeps its message from being redelivered with in-progress acks.
        let result = match futures::poll!(&mut work) {
            std::task::Poll::Ready(result) => result,
            std::task::Poll::Pending => {
                let mut keepalive = tokio::time::interval_at(
                    tokio::time::Instant::now() + self.keepalive,
                    self.keepalive,
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
        match result {
            Ok(()) => {
                if let Err(e) = m.ack().await {
                    warn!(seq, error = %e, "ack failed; the message will be redelivered");
                } else {
                    self.stats.acked.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(error) => {
                let exhausted = self.max_deliver > 0
                    && delivered >= u64::try_from(self.max_deliver).unwrap_or(u64::MAX);
                let action = match &error {
                    HandlerError::Retry { delay, .. } if !exhausted => {
                        let delay =
                            delay.unwrap_or_else(|| self.options.retry_delay_for(delivered));
                        debug!(seq, delivered, ?delay, error = %error, "handler failed: nak");
                        let _ = m.ack_with(AckKind::Nak(Some(delay))).await;
                        self.stats.naked.fetch_add(1, Ordering::Relaxed);
                        "nak"
                    }
                    _ => self.terminate(&m, &subject, seq, delivered, &error).await,
                };
                self.report(ConsumeError {
                    subject,
                    stream_sequence: seq,
                    delivered,
                    error,
                    action,
                });
            }
        }
    }

    /// Dead-letters (if configured) and terminates. If the dead-letter publish fails, the
    /// message is nak'ed instead: it is never dropped.
    async fn terminate(
        &self,
        m: &jetstream::Message,
        subject: &str,
        seq: u64,
        delivered: u64,
        error: &HandlerError,
    ) -> &'static str {
        if let Some(dl) = &self.options.dead_letter {
            let mut headers = HeaderMap::new();
            headers.insert(
                "Natty-Dead-Letter-Reason",
                error.to_string().replace(['\r', '\n'], " ").as_str(),
            );
            headers.insert("Natty-Original-Subject", subject);
            if let Ok(info) = m.info() {
                headers.insert("Natty-Original-Stream", info.stream);
            }
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
                warn!(seq, dead_letter = %dl, error = %e, "dead-letter publish failed: nak instead of term");
                let _ = m.ack_with(AckKind::Nak(Some(self.options.retry_max))).await;
                self.stats.naked.fetch_add(1, Ordering::Relaxed);
                return "nak";
            }
            self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        }
        let _ = m.ack_with(AckKind::Term).await;
        self.stats.termed.fetch_add(1, Ordering::Relaxed);
        if self.options.dead_letter.is_some() {
            "dead-lettered"
        } else {
            "term"
        }
    }

    fn report(&self, e: ConsumeError) {
        if let Some(tx) = &self.options.errors
            && tx.try_send(e).is_err()
        {
            self.stats.errors_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
