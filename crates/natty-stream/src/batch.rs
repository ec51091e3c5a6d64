//! [`BatchPublisher`]: a bounded queue drained by a background task that pipelines publishes,
//! retries with the same `Nats-Msg-Id`, and hands back every message it could not store.
//!
//! What the Go library got wrong, and what this does instead: the queue is bounded (`send`
//! waits: back-pressure); every ack is checked; a timed-out or failed publish is retried with
//! the same message id, so the stream's duplicate window stores it once; a message that still
//! fails is returned *with its payload* (error channel, or `close()`'s report) — never dropped;
//! `flush()` and `close()` wait for the acks; an idle publisher sleeps.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::{
    HeaderMap, Subject,
    jetstream::{self, context::PublishErrorKind},
};
use bytes::Bytes;
use futures::StreamExt;
use jetstream_extra::batch_publish_fast::{FastPublishExt, FastPublisher, GapMode};
use natty_core::{Client, names};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};
use tracing::{Instrument, debug, info_span, warn};

use crate::{
    Error, ErrorKind, PublishOptions,
    error::{from_core, from_publish},
};

/// Settings of a [`BatchPublisher`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchConfig {
    /// Messages that may wait in the queue (default 10,000); `send` waits beyond that.
    pub queue_capacity: usize,
    /// Publishes awaiting their ack at once (default 4096).
    pub max_in_flight: usize,
    /// Attempts per message before it is handed back as failed (default 10).
    pub max_attempts: u32,
    /// First retry delay, doubled per attempt (default 50 ms) ...
    pub backoff_base: Duration,
    /// ... up to this (default 2 s).
    pub backoff_max: Duration,
    /// How long to wait for one ack (default 5 s).
    pub ack_timeout: Duration,
    /// Prefix of generated `Nats-Msg-Id`s (default: random per publisher).
    pub id_prefix: Option<String>,
    /// How messages are sent (default [`PublishMode::Auto`]).
    pub mode: PublishMode,
}

/// How a [`BatchPublisher`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PublishMode {
    /// Fast ingest to streams that allow it (server 2.14+, `allow_batched`), pipelined
    /// publishes elsewhere.
    #[default]
    Auto,
    /// Always one publish per message, up to `max_in_flight` acks outstanding.
    Pipelined,
    /// Fast ingest (ADR-50) only: a message for a stream without `allow_batched` (or on an
    /// older server) is handed back as `Unsupported`.
    FastIngest,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 10_000,
            max_in_flight: 4096,
            max_attempts: 10,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            ack_timeout: Duration::from_secs(5),
            id_prefix: None,
            mode: PublishMode::Auto,
        }
    }
}

impl BatchConfig {
    /// Queue capacity.
    #[must_use]
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n;
        self
    }

    /// Acks in flight.
    #[must_use]
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Attempts per message.
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Ack timeout.
    #[must_use]
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// Publish mode.
    #[must_use]
    pub fn mode(mut self, mode: PublishMode) -> Self {
        self.mode = mode;
        self
    }

    /// Message id prefix.
    #[must_use]
    pub fn id_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.id_prefix = Some(prefix.into());
        self
    }

    /// Checks the configuration without touching the network.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what: &str| {
            Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("batch publisher: {what}"),
            ))
        };
        if self.queue_capacity == 0 {
            return bad("queue_capacity must be at least 1");
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight must be at least 1");
        }
        if self.max_attempts == 0 {
            return bad("max_attempts must be at least 1");
        }
        if self.ack_timeout.is_zero() {
            return bad("ack_timeout must be greater than zero");
        }
        Ok(())
    }
}

/// A message the publisher could not store, handed back with everything needed to retry it.
#[derive(Debug)]
#[non_exhaustive]
pub struct FailedMessage {
    /// The subject.
    pub subject: String,
    /// The payload.
    pub payload: Bytes,
    /// The headers (including `Nats-Msg-Id`).
    pub headers: HeaderMap,
    /// Its `Nats-Msg-Id`.
    pub msg_id: String,
    /// How many times it was tried.
    pub attempts: u32,
    /// The last error.
    pub error: Error,
}

/// Counters of a [`BatchPublisher`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchStats {
    /// Messages accepted by `send`.
    pub queued: u64,
    /// Messages acknowledged by the stream (duplicates included).
    pub acked: u64,
    /// Acks that reported a duplicate (stored earlier; not stored twice).
    pub duplicates: u64,
    /// Publish attempts repeated after a failure.
    pub retried: u64,
    /// Messages handed back as failed.
    pub failed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    queued: AtomicU64,
    acked: AtomicU64,
    duplicates: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> BatchStats {
        BatchStats {
            queued: self.queued.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// What `close()` reports.
#[derive(Debug)]
#[non_exhaustive]
pub struct CloseReport {
    /// Final counters.
    pub stats: BatchStats,
    /// Failed messages not already taken from [`BatchPublisher::take_errors`].
    pub failed: Vec<FailedMessage>,
}

#[derive(Debug)]
struct Outgoing {
    seq: u64,
    /// Shared bytes: cloning it for each attempt costs a reference count, not a copy.
    subject: Subject,
    payload: Bytes,
    /// Extra headers the caller gave (usually none); `Nats-Msg-Id` is added when sending.
    extra: Vec<(String, String)>,
    msg_id: String,
    attempts: u32,
}

impl Outgoing {
    /// The headers sent: built per attempt, as cheap as a fresh map (cloning one is not).
    fn headers(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in &self.extra {
            map.append(k.as_str(), v.as_str());
        }
        map.insert("Nats-Msg-Id", self.msg_id.as_str());
        map
    }
}

#[derive(Debug)]
enum Command {
    Publish(Outgoing),
    Flush(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

/// Publishes in the background, pipelined, losing nothing (Go natty `Publish`).
///
/// ```no_run
/// # async fn example(client: natty_core::Client) -> Result<(), natty_stream::Error> {
/// use natty_stream::{BatchConfig, BatchPublisher};
/// let publisher = BatchPublisher::new(client, BatchConfig::default())?;
/// let mut failures = publisher.take_errors().expect("first call");
/// tokio::spawn(async move {
///     while let Some(failed) = failures.recv().await {
///         eprintln!("not stored: {} ({} bytes): {}", failed.subject, failed.payload.len(), failed.error);
///     }
/// });
/// for i in 0..1000u32 {
///     publisher.send("orders.created", i.to_string().into()).await?;
/// }
/// publisher.close().await?; // every message acked or handed back
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct BatchPublisher {
    tx: mpsc::Sender<Command>,
    next_seq: AtomicU64,
    prefix: String,
    errors: Mutex<Option<mpsc::UnboundedReceiver<FailedMessage>>>,
    stats: Arc<Counters>,
    task: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
}

impl BatchPublisher {
    /// Starts a publisher (its task runs on the current tokio runtime).
    pub fn new(client: Client, config: BatchConfig) -> Result<Self, Error> {
        config.validate()?;
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let (failed_tx, failed_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Counters::default());
        let prefix = config
            .id_prefix
            .clone()
            .unwrap_or_else(|| client.nats().new_inbox().replace("_INBOX.", ""));
        // A context of our own: acks time out after `ack_timeout`, and async-nats' own in-flight
        // limit sits above ours so it never adds a second, hidden wait.
        let js = jetstream::ContextBuilder::new()
            .timeout(client.request_timeout())
            .ack_timeout(config.ack_timeout)
            .max_ack_inflight(config.max_in_flight * 2)
            .build(client.nats().clone());
        let span = info_span!("natty.stream.batch_publisher", prefix = %prefix);
        let task = tokio::spawn(
            Pump {
                js,
                fast_capable: client.server_version().is_some_and(|v| v.at_least(2, 14)),
                config,
                failed: failed_tx,
                stats: stats.clone(),
                routes: Mutex::new(Routes::default()),
            }
            .run(rx)
            .instrument(span),
        );
        Ok(Self {
            tx,
            next_seq: AtomicU64::new(1),
            prefix,
            errors: Mutex::new(Some(failed_rx)),
            stats,
            task: Mutex::new(Some(task)),
            closed: AtomicBool::new(false),
        })
    }

    /// The failed-message channel (once). Messages that fail after it is taken arrive here;
    /// before that, or if it is never taken, `close()` returns them.
    pub fn take_errors(&self) -> Option<mpsc::UnboundedReceiver<FailedMessage>> {
        self.errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Queues a message, waiting for room (back-pressure). It gets a fresh `Nats-Msg-Id`.
    pub async fn send(&self, subject: &str, payload: Bytes) -> Result<(), Error> {
        self.send_with(subject, payload, PublishOptions::default())
            .await
    }

    /// Queues a message with headers and/or your own `Nats-Msg-Id`.
    pub async fn send_with(
        &self,
        subject: &str,
        payload: Bytes,
        options: PublishOptions,
    ) -> Result<(), Error> {
        let m = self.outgoing(subject, payload, options)?;
        self.tx
            .send(Command::Publish(m))
            .await
            .map_err(|_| closed(subject))?;
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Queues a message if there is room now; `Full` otherwise (nothing queued).
    pub fn try_send(&self, subject: &str, payload: Bytes) -> Result<(), Error> {
        let m = self.outgoing(subject, payload, PublishOptions::default())?;
        match self.tx.try_send(Command::Publish(m)) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(Error::new(
                ErrorKind::Full,
                format!(
                    "queueing a message for {subject:?}: all {} places taken",
                    self.tx.max_capacity()
                ),
            )),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(closed(subject)),
        }
    }

    fn outgoing(
        &self,
        subject: &str,
        payload: Bytes,
        options: PublishOptions,
    ) -> Result<Outgoing, Error> {
        names::subject(subject).map_err(from_core)?;
        options.validate()?;
        if self.closed.load(Ordering::Acquire) {
            return Err(closed(subject));
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let msg_id = options
            .msg_id
            .unwrap_or_else(|| format!("{}-{seq}", self.prefix));
        Ok(Outgoing {
            seq,
            subject: Subject::from(subject),
            payload,
            extra: options.headers,
            msg_id,
            attempts: 0,
        })
    }

    /// Waits until every message queued before this call is acknowledged or handed back.
    pub async fn flush(&self) -> Result<BatchStats, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Flush(tx))
            .await
            .map_err(|_| closed("flush"))?;
        rx.await.map_err(|_| closed("flush"))?;
        Ok(self.stats())
    }

    /// Flushes, then stops the background task. Failed messages not taken through
    /// [`take_errors`](Self::take_errors) are returned here.
    pub async fn close(&self) -> Result<CloseReport, Error> {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let (tx, rx) = oneshot::channel();
            if self.tx.send(Command::Close(tx)).await.is_ok() {
                let _ = rx.await;
            }
        }
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let mut failed = Vec::new();
        if let Some(mut rx) = self.take_errors() {
            while let Ok(f) = rx.try_recv() {
                failed.push(f);
            }
        }
        Ok(CloseReport {
            stats: self.stats(),
            failed,
        })
    }

    /// Current counters.
    pub fn stats(&self) -> BatchStats {
        self.stats.snapshot()
    }
}

impl Drop for BatchPublisher {
    fn drop(&mut self) {
        if !self.closed.load(Ordering::Acquire) {
            let s = self.stats();
            let pending = s.queued.saturating_sub(s.acked + s.failed);
            if pending > 0 {
                warn!(
                    pending,
                    "BatchPublisher dropped without close(): its task goes on publishing, but nobody \
                     awaits the acks, and messages die with the process if it exits now"
                );
            }
        }
    }
}

fn closed(what: &str) -> Error {
    Error::new(
        ErrorKind::Closed,
        format!("queueing {what:?}: the publisher is closed"),
    )
}

/// How long an open fast batch waits for more messages before it is committed.
const FAST_LINGER: Duration = Duration::from_millis(2);

enum Step {
    CommitFast,
    Done(Outgoing, Result<jetstream::publish::PublishAck, Error>),
    RetryDue,
    Command(Option<Command>),
}

type AckFuture =
    Pin<Box<dyn Future<Output = (Outgoing, Result<jetstream::publish::PublishAck, Error>)> + Send>>;

struct Pump {
    js: jetstream::Context,
    fast_capable: bool,
    config: BatchConfig,
    failed: mpsc::UnboundedSender<FailedMessage>,
    stats: Arc<Counters>,
    routes: Mutex<Routes>,
}

/// Which streams take fast ingest, by their subject filters (listed once, refreshed on a miss
/// at most every few seconds), so routing a message costs no request.
#[derive(Default)]
struct Routes {
    streams: Vec<(String, Vec<String>, bool)>,
    listed: Option<Instant>,
    /// Decisions per subject (cleared when the stream list is refreshed; bounded).
    cache: HashMap<String, Route>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Pipelined,
    Fast(String),
    Unsupported(String),
}

/// An open fast-ingest batch and the messages in it not yet covered by a flow ack.
struct Fast {
    stream: String,
    publisher: FastPublisher,
    pending: VecDeque<(u64, Outgoing)>,
}

impl Pump {
    async fn run(self, mut rx: mpsc::Receiver<Command>) {
        // Acks come back in publish order (one connection, one stream leader), so a queue
        // awaited at its head does what a FuturesUnordered would, without its per-future
        // bookkeeping: measurably cheaper on the hot path.
        let mut inflight: VecDeque<AckFuture> = VecDeque::new();
        let mut retries: Vec<(Instant, Outgoing)> = Vec::new();
        let mut outstanding: BTreeSet<u64> = BTreeSet::new();
        let mut flushes: Vec<(u64, oneshot::Sender<()>)> = Vec::new();
        let mut closes: Vec<oneshot::Sender<()>> = Vec::new();
        let mut last_seq = 0u64;
        let mut open = true;
        let mut fast: Option<Fast> = None;
        loop {
            // Wake the flushes whose messages are all done.
            let mut i = 0;
            while i < flushes.len() {
                if outstanding.range(..=flushes[i].0).next().is_none() {
                    let (_, tx) = flushes.swap_remove(i);
                    let _ = tx.send(());
                } else {
                    i += 1;
                }
            }
            if !open && inflight.is_empty() && retries.is_empty() && fast.is_none() {
                for c in closes.drain(..) {
                    let _ = c.send(());
                }
                debug!("batch publisher task done");
                return;
            }
            let next_retry = retries.iter().map(|(t, _)| *t).min();
            let room = inflight.len() < self.config.max_in_flight;
            // The select only picks what happened; acting on it (which awaits) comes after,
            // so no borrow of the in-flight set is held across an await.
            let step = tokio::select! {
                biased;
                (m, result) = head(&mut inflight), if !inflight.is_empty() => {
                    inflight.pop_front();
                    Step::Done(m, result)
                }
                () = sleep_until(next_retry), if next_retry.is_some() && room => Step::RetryDue,
                command = rx.recv(), if open && room => Step::Command(command),
                // A fast batch is committed once nothing came for a moment: that acks its tail
                // (flushes wait for it), and an idle batch would be timed out by the server.
                () = tokio::time::sleep(FAST_LINGER), if fast.is_some() => Step::CommitFast,
            };
            match step {
                Step::CommitFast => {
                    self.close_fast(&mut fast, &mut retries, &mut outstanding)
                        .await
                }
                Step::Done(m, result) => {
                    self.on_result(m, result, &mut retries, &mut outstanding)
                        .await;
                }
                Step::RetryDue => {
                    let now = Instant::now();
                    let mut due = Vec::new();
                    let mut i = 0;
                    while i < retries.len()
                        && inflight.len() + due.len() < self.config.max_in_flight
                    {
                        if retries[i].0 <= now {
                            due.push(retries.swap_remove(i).1);
                        } else {
                            i += 1;
                        }
                    }
                    due.sort_by_key(|m| m.seq);
                    for m in due {
                        self.stats.retried.fetch_add(1, Ordering::Relaxed);
                        self.dispatch(m, &mut inflight, &mut fast, &mut retries, &mut outstanding)
                            .await;
                    }
                }
                Step::Command(Some(Command::Publish(m))) => {
                    last_seq = m.seq;
                    outstanding.insert(m.seq);
                    self.dispatch(m, &mut inflight, &mut fast, &mut retries, &mut outstanding)
                        .await;
                    // Take what else is already queued without going back through the select:
                    // one wake-up per burst, not per message.
                    while inflight.len() < self.config.max_in_flight {
                        match rx.try_recv() {
                            Ok(Command::Publish(m)) => {
                                last_seq = m.seq;
                                outstanding.insert(m.seq);
                                self.dispatch(
                                    m,
                                    &mut inflight,
                                    &mut fast,
                                    &mut retries,
                                    &mut outstanding,
                                )
                                .await;
                            }
                            Ok(Command::Flush(tx)) => flushes.push((last_seq, tx)),
                            Ok(Command::Close(tx)) => {
                                closes.push(tx);
                                rx.close();
                            }
                            Err(_) => break,
                        }
                    }
                }
                Step::Command(Some(Command::Flush(tx))) => {
                    if outstanding.range(..=last_seq).next().is_none() {
                        let _ = tx.send(());
                    } else {
                        flushes.push((last_seq, tx));
                    }
                }
                Step::Command(Some(Command::Close(tx))) => {
                    closes.push(tx);
                    rx.close();
                }
                Step::Command(None) => open = false,
            }
        }
    }

    /// Sends a message the way its stream takes it.
    async fn dispatch(
        &self,
        m: Outgoing,
        inflight: &mut VecDeque<AckFuture>,
        fast: &mut Option<Fast>,
        retries: &mut Vec<(Instant, Outgoing)>,
        outstanding: &mut BTreeSet<u64>,
    ) {
        match self.route(&m.subject).await {
            Route::Pipelined => {
                let ack = self.publish(m).await;
                inflight.push_back(ack);
            }
            Route::Fast(stream) => {
                if fast.as_ref().is_some_and(|f| f.stream != stream) {
                    self.close_fast(fast, retries, outstanding).await;
                }
                self.fast_add(stream, m, fast, retries, outstanding).await;
            }
            Route::Unsupported(why) => {
                let mut m = m;
                m.attempts += 1;
                let error = Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "publishing {:?} to {:?} by fast ingest: {why}",
                        m.msg_id, m.subject
                    ),
                );
                self.give_back(m, error, outstanding);
            }
        }
    }

    async fn route(&self, subject: &str) -> Route {
        if self.config.mode == PublishMode::Pipelined {
            return Route::Pipelined;
        }
        if !self.fast_capable {
            return match self.config.mode {
                PublishMode::FastIngest => {
                    Route::Unsupported("the server is older than 2.14".to_owned())
                }
                _ => Route::Pipelined,
            };
        }
        if let Some(route) = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .cache
            .get(subject)
        {
            return route.clone();
        }
        let found = self.lookup_route(subject);
        let found = match found {
            Some(r) => Some(r),
            None => {
                let stale = self
                    .routes
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .listed
                    .is_none_or(|t| t.elapsed() > Duration::from_secs(5));
                if stale {
                    self.list_streams().await;
                }
                self.lookup_route(subject)
            }
        };
        let route = match (found, self.config.mode) {
            (Some((stream, true)), _) => Route::Fast(stream),
            (Some((stream, false)), PublishMode::FastIngest) => Route::Unsupported(format!(
                "stream {stream:?} does not allow batched publishing (allow_batched)"
            )),
            // No known stream: pipelined, and not cached (the stream may appear later).
            (None, _) => return Route::Pipelined,
            _ => Route::Pipelined,
        };
        let mut routes = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if routes.cache.len() >= 10_000 {
            routes.cache.clear();
        }
        routes.cache.insert(subject.to_owned(), route.clone());
        route
    }

    fn lookup_route(&self, subject: &str) -> Option<(String, bool)> {
        let routes = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        routes
            .streams
            .iter()
            .find(|(_, filters, _)| filters.iter().any(|f| subject_matches(f, subject)))
            .map(|(name, _, batched)| (name.clone(), *batched))
    }

    async fn list_streams(&self) {
        let mut streams = Vec::new();
        let mut list = self.js.streams();
        while let Some(info) = list.next().await {
            match info {
                Ok(info) => streams.push((
                    info.config.name.clone(),
                    info.config.subjects.clone(),
                    info.config.allow_batch_publish,
                )),
                Err(e) => {
                    debug!(error = %e, "listing streams for routing; publishing pipelined meanwhile");
                    break;
                }
            }
        }
        let mut routes = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        routes.streams = streams;
        routes.listed = Some(Instant::now());
        routes.cache.clear();
    }

    /// Adds a message to the open fast batch (opening one if needed).
    async fn fast_add(
        &self,
        stream: String,
        mut m: Outgoing,
        fast: &mut Option<Fast>,
        retries: &mut Vec<(Instant, Outgoing)>,
        outstanding: &mut BTreeSet<u64>,
    ) {
        if fast.is_none() {
            // Flow 500 with 3 outstanding acks: measured here 1.45x pipelined at 128 B; the
            // crate's default (flow 100) was slower than pipelining.
            match self
                .js
                .fast_publish()
                .flow(500)
                .max_outstanding_acks(3)
                .ack_timeout(self.config.ack_timeout)
                .gap_mode(GapMode::Fail)
                .build()
            {
                Ok(publisher) => {
                    *fast = Some(Fast {
                        stream,
                        publisher,
                        pending: VecDeque::new(),
                    });
                }
                Err(e) => {
                    m.attempts += 1;
                    let error =
                        Error::with_source(ErrorKind::Other, "opening a fast-ingest batch", e);
                    self.retry_or_give_back(m, error, retries, outstanding);
                    return;
                }
            }
        }
        let Some(f) = fast.as_mut() else { return };
        m.attempts += 1;
        let message = jetstream::message::OutboundMessage {
            subject: m.subject.clone(),
            payload: m.payload.clone(),
            headers: Some(m.headers()),
        };
        match f.publisher.add_message(message).await {
            Ok(ack) => {
                f.pending.push_back((ack.batch_sequence, m));
                self.settle(f, ack.ack_sequence, outstanding);
            }
            Err(e) => {
                f.pending.push_back((u64::MAX, m));
                let error = fast_error(e, "adding to a fast-ingest batch");
                self.fail_fast(fast, error, retries, outstanding);
            }
        }
    }

    /// Everything up to `acked` in the batch is stored (gap mode Fail guarantees no holes).
    fn settle(&self, f: &mut Fast, acked: u64, outstanding: &mut BTreeSet<u64>) {
        while f.pending.front().is_some_and(|(seq, _)| *seq <= acked) {
            if let Some((_, m)) = f.pending.pop_front() {
                self.stats.acked.fetch_add(1, Ordering::Relaxed);
                outstanding.remove(&m.seq);
            }
        }
    }

    /// Commits the open batch: acks everything in it, or on failure re-sends what is unacked.
    async fn close_fast(
        &self,
        fast: &mut Option<Fast>,
        retries: &mut Vec<(Instant, Outgoing)>,
        outstanding: &mut BTreeSet<u64>,
    ) {
        let Some(f) = fast.take() else { return };
        let Fast {
            stream,
            publisher,
            mut pending,
        } = f;
        match publisher.close().await {
            Ok(ack) => {
                debug!(stream = %stream, count = ack.batch_size, "fast batch committed");
                for (_, m) in pending.drain(..) {
                    self.stats.acked.fetch_add(1, Ordering::Relaxed);
                    outstanding.remove(&m.seq);
                }
            }
            Err(e) => {
                let error = fast_error(e, "committing a fast-ingest batch");
                warn!(stream = %stream, unacked = pending.len(), error = %error, "fast batch failed; re-sending its unacked tail");
                for (_, m) in pending.drain(..) {
                    self.retry_or_give_back(
                        m,
                        Error::new(error.kind(), error.to_string()),
                        retries,
                        outstanding,
                    );
                }
            }
        }
    }

    /// A batch failed: whatever it did not ack is re-sent (same message ids: the duplicate
    /// window drops any that were in fact stored) or handed back.
    fn fail_fast(
        &self,
        fast: &mut Option<Fast>,
        error: Error,
        retries: &mut Vec<(Instant, Outgoing)>,
        outstanding: &mut BTreeSet<u64>,
    ) {
        if let Some(mut f) = fast.take() {
            let acked = f.publisher.last_ack_sequence();
            self.settle(&mut f, acked, outstanding);
            warn!(stream = %f.stream, unacked = f.pending.len(), error = %error, "fast batch failed; re-sending its unacked tail");
            for (_, m) in f.pending.drain(..) {
                self.retry_or_give_back(
                    m,
                    Error::new(error.kind(), error.to_string()),
                    retries,
                    outstanding,
                );
            }
        }
    }

    /// Sends one message (in queue order) and returns the future of its ack.
    async fn publish(&self, mut m: Outgoing) -> AckFuture {
        m.attempts += 1;
        let sent = self
            .js
            .publish_with_headers(m.subject.clone(), m.headers(), m.payload.clone())
            .await;
        // The ack deadline runs from the send, not from when this future is first polled: the
        // queue is awaited head first, and a node that dies with thousands of acks owed must
        // cost one ack timeout, not one per message in turn.
        let deadline = Instant::now() + self.config.ack_timeout;
        Box::pin(async move {
            // The context is formatted only for a failure: this runs once per message.
            let context = |m: &Outgoing| {
                format!(
                    "publishing {:?} to {:?} (attempt {})",
                    m.msg_id, m.subject, m.attempts
                )
            };
            let result = match sent {
                Ok(ack) => match tokio::time::timeout_at(deadline, ack).await {
                    Ok(acked) => acked.map_err(|e| from_publish(e, context(&m))),
                    Err(_) => Err(Error::new(
                        ErrorKind::TimedOut,
                        format!("{}: no ack within the ack timeout", context(&m)),
                    )),
                },
                Err(e) => Err(from_publish(e, context(&m))),
            };
            (m, result)
        })
    }

    async fn on_result(
        &self,
        m: Outgoing,
        result: Result<jetstream::publish::PublishAck, Error>,
        retries: &mut Vec<(Instant, Outgoing)>,
        outstanding: &mut BTreeSet<u64>,
    ) {
        let error = match result {
            Ok(ack) => {
                self.stats.acked.fetch_add(1, Ordering::Relaxed);
                if ack.duplicate {
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                outstanding.remove(&m.seq);
                return;
            }
            Err(e) => e,
        };
        if self.is_permanent(&m, &error).await {
            self.give_back(m, error, outstanding);
        } else {
            self.retry_or_give_back(m, error, retries, outstanding);
        }
    }

    fn retry_or_give_back(
        &self,
        m: Outgoing,
        error: Error,
        retries: &mut Vec<(Instant, Outgoing)>,
        outstanding: &mut BTreeSet<u64>,
    ) {
        if m.attempts < self.config.max_attempts {
            let exp = m.attempts.saturating_sub(1).min(16);
            let delay = (self.config.backoff_base * 2u32.pow(exp)).min(self.config.backoff_max);
            debug!(msg_id = %m.msg_id, attempts = m.attempts, ?delay, error = %error, "publish failed, will retry");
            retries.push((Instant::now() + delay, m));
        } else {
            self.give_back(m, error, outstanding);
        }
    }

    #[allow(
        clippy::boxed_local,
        reason = "messages travel boxed through the pump; unboxing here is the last step"
    )]
    fn give_back(&self, m: Outgoing, error: Error, outstanding: &mut BTreeSet<u64>) {
        warn!(msg_id = %m.msg_id, subject = %m.subject, attempts = m.attempts, error = %error, "message not stored; handing it back");
        outstanding.remove(&m.seq);
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        let headers = m.headers();
        let _ = self.failed.send(FailedMessage {
            subject: m.subject.to_string(),
            payload: m.payload,
            headers,
            msg_id: m.msg_id,
            attempts: m.attempts,
            error,
        });
    }

    /// A failure no retry can fix: a precondition header that failed, or a subject that no
    /// stream captures (asked of the server, since a restarting server answers "no stream"
    /// for a moment too).
    async fn is_permanent(&self, m: &Outgoing, error: &Error) -> bool {
        let source = error
            .cause()
            .and_then(|c| c.downcast_ref::<jetstream::context::PublishError>())
            .map(jetstream::context::PublishError::kind);
        match source {
            Some(PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence) => {
                true
            }
            Some(PublishErrorKind::StreamNotFound) => {
                // The server answered the stream-names request: it is up, and if no stream
                // matches, no retry will help.
                let found = self.js.stream_by_subject(m.subject.to_string()).await;
                let none = matches!(&found, Err(e) if e.kind() == jetstream::context::GetStreamByNameErrorKind::NotFound);
                debug!(subject = %m.subject, ?found, none, "is any stream capturing the subject?");
                none
            }
            _ => false,
        }
    }
}

/// The head of the in-flight queue, awaited in place (popped by the caller once it is done).
async fn head(
    inflight: &mut VecDeque<AckFuture>,
) -> (Outgoing, Result<jetstream::publish::PublishAck, Error>) {
    match inflight.front_mut() {
        Some(ack) => ack.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn fast_error(e: jetstream_extra::batch_publish_fast::FastPublishError, context: &str) -> Error {
    use jetstream_extra::batch_publish_fast::FastPublishErrorKind as K;
    let kind = match e.kind() {
        K::Timeout => ErrorKind::TimedOut,
        K::NotEnabled => ErrorKind::Unsupported,
        _ => ErrorKind::Other,
    };
    Error::with_source(kind, context.to_owned(), e)
}

/// NATS subject matching: `*` matches one token, `>` the rest (one token or more).
fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::subject_matches;

    #[test]
    fn subjects_match_filters() {
        let cases = [
            ("orders.>", "orders.created", true),
            ("orders.>", "orders.a.b", true),
            ("orders.>", "orders", false),
            ("orders.*", "orders.created", true),
            ("orders.*", "orders.a.b", false),
            ("orders.created", "orders.created", true),
            ("orders.created", "orders.deleted", false),
            ("*.created", "orders.created", true),
            (">", "anything.at.all", true),
        ];
        for (filter, subject, want) in cases {
            assert_eq!(
                subject_matches(filter, subject),
                want,
                "{filter} ~ {subject}"
            );
        }
    }
}
