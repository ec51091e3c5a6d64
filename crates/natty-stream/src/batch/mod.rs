//! [`BatchPublisher`]: a bounded queue drained by a background task that pipelines publishes,
//! retries with the same `Nats-Msg-Id`, and hands back every message it could not store.
//!
//! What the Go library got wrong, and what this does instead: the queue is bounded (`send`
//! waits: back-pressure); every ack is checked; a timed-out or failed publish is retried with
//! the same message id, only while the stream's duplicate window still recognises it, so a
//! retry never stores a second copy; a message that still fails is returned *with its payload*
//! and whether it may have been stored (error channel, or `close()`'s report) — never dropped;
//! `flush()` and `close()` wait for the acks, and fail if the task died; an idle publisher
//! sleeps.
//!
//! Nothing the server would refuse by closing the connection is queued: `send` checks each
//! message against the server's limits (`max_payload`, headers included — natty's
//! `Nats-Msg-Id` too — and the control line for the subject) and refuses it with `TooLarge`;
//! the pump checks again before every attempt, against the server it is connected to then.
//!
//! Layout: this file is the public face (settings, the handle, what comes back); [`pump`] is
//! the one background task and owns every piece of publishing state; [`route`] says which
//! stream takes a subject and how; [`fast`] is an open fast-ingest batch; [`handback`] holds
//! the failed messages (bounded) and accounts for them to strict flushes.

mod fast;
mod gate;
mod handback;
mod pump;
mod route;
#[cfg(test)]
mod tests;

use std::{
    fmt,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use natty_core::{Client, names};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};
use tracing::{Instrument, debug, info_span, warn};

use self::{gate::Gate, handback::Handback};
use crate::{
    Error, ErrorKind, PublishOptions,
    error::{from_core, too_large},
};

/// The longest timer a [`BatchConfig`] accepts (a day): beyond it `Instant + Duration` could
/// overflow, and no publish needs it.
const MAX_TIMER: Duration = Duration::from_secs(24 * 3600);

/// Settings of a [`BatchPublisher`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchConfig {
    /// Messages that may wait in the queue (default 10,000); `send` waits beyond that.
    pub queue_capacity: usize,
    /// Publishes awaiting their ack at once (default 4096).
    pub max_in_flight: usize,
    /// Attempts per message before it is handed back as failed (default 10). A message that
    /// may already be stored is retried only inside its stream's duplicate window.
    pub max_attempts: u32,
    /// First retry delay, doubled per attempt (default 50 ms; each delay is jittered down to
    /// half of its value, natty's one retry policy) ...
    pub backoff_base: Duration,
    /// ... up to this (default 2 s).
    pub backoff_max: Duration,
    /// How long to wait for one ack (default 5 s).
    pub ack_timeout: Duration,
    /// Prefix of generated `Nats-Msg-Id`s (default: random per publisher). Each publisher
    /// adds a random part of its own, so two publishers (or one restarted) with the same
    /// prefix never share an id.
    pub id_prefix: Option<String>,
    /// How messages are sent (default [`PublishMode::Auto`]).
    pub mode: PublishMode,
    /// Failed messages held for [`BatchPublisher::flush_all`] and `close` until they are taken
    /// (default `None`: as many as `queue_capacity`). With that many held, `send` and
    /// `try_send` fail at once with `Full` (nothing queued) until a flush, a close or
    /// `take_errors` takes them: a producer that never flushes during an outage is told,
    /// instead of running out of memory — and never waits for a flush it would have to make
    /// itself. Not used once the error channel is taken (failures go there; drain it).
    pub max_held_failures: Option<usize>,
}

/// How a [`BatchPublisher`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PublishMode {
    /// Fast ingest to streams that allow it (server 2.14+, `allow_batched`), pipelined
    /// publishes elsewhere — and to a stream that stops allowing batches.
    #[default]
    Auto,
    /// Always one publish per message, up to `max_in_flight` acks outstanding.
    Pipelined,
    /// Fast ingest (ADR-50) only: a message for a stream without `allow_batched` (or on an
    /// older server) is handed back as `Unsupported`. Messages of a batch that failed are
    /// still re-sent one by one, each with its own ack.
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
            max_held_failures: None,
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

    /// Retry delays: `base`, doubled per attempt, at most `max`.
    #[must_use]
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
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

    /// Failed messages held until taken (default: `queue_capacity`).
    #[must_use]
    pub fn max_held_failures(mut self, n: usize) -> Self {
        self.max_held_failures = Some(n);
        self
    }

    /// How many failed messages are held until taken.
    fn held_capacity(&self) -> usize {
        self.max_held_failures.unwrap_or(self.queue_capacity)
    }

    /// Checks the configuration without touching the network.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what: String| {
            Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("batch publisher: {what}"),
            ))
        };
        if self.queue_capacity == 0 {
            return bad("queue_capacity must be at least 1".into());
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight must be at least 1".into());
        }
        if self.max_attempts == 0 {
            return bad("max_attempts must be at least 1".into());
        }
        if self.max_held_failures == Some(0) {
            return bad("max_held_failures must be at least 1".into());
        }
        if self.ack_timeout.is_zero() || self.ack_timeout > MAX_TIMER {
            return bad(format!(
                "ack_timeout must be more than zero and at most {MAX_TIMER:?}, got {:?}",
                self.ack_timeout
            ));
        }
        if self.backoff_max > MAX_TIMER || self.backoff_base > self.backoff_max {
            return bad(format!(
                "backoff must satisfy backoff_base <= backoff_max <= {MAX_TIMER:?}, got {:?} and {:?}",
                self.backoff_base, self.backoff_max
            ));
        }
        if let Some(prefix) = &self.id_prefix
            && (prefix.is_empty() || prefix.len() > 64 || prefix.contains(char::is_control))
        {
            return bad(format!(
                "id_prefix {prefix:?} must be 1 to 64 characters without control characters (CR, LF)"
            ));
        }
        Ok(())
    }
}

/// Whether a message handed back may be in the stream after all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stored {
    /// Certainly not stored: every attempt was refused or never sent.
    No,
    /// Perhaps stored: an attempt went unanswered (timed out, connection lost). Re-sending it
    /// with the same `Nats-Msg-Id` inside the stream's duplicate window is safe; after it, it
    /// may store a second copy.
    Maybe,
}

/// A message the publisher could not store, handed back with everything needed to retry it.
#[derive(Debug)]
#[non_exhaustive]
pub struct FailedMessage {
    /// The subject.
    pub subject: String,
    /// The payload.
    pub payload: Bytes,
    /// The headers it was sent with, `Nats-Msg-Id` included.
    pub headers: Vec<(String, String)>,
    /// Its `Nats-Msg-Id`.
    pub msg_id: String,
    /// How many times it was sent (0: refused before sending).
    pub attempts: u32,
    /// Whether it may be in the stream after all.
    pub stored: Stored,
    /// Why it failed (the last error).
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
    /// Failed messages held now, waiting for `flush_all`, `close` or `take_errors`.
    pub held: u64,
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
            held: 0,
        }
    }
}

/// What `close()` reports.
#[derive(Debug)]
#[non_exhaustive]
pub struct CloseReport {
    /// Final counters.
    pub stats: BatchStats,
    /// Failed messages not already taken by [`BatchPublisher::flush_all`] or through
    /// [`BatchPublisher::take_errors`].
    pub failed: Vec<FailedMessage>,
}

/// Messages that were not stored, or a publisher that failed: what
/// [`BatchPublisher::flush_all`] (and the `natty` facade's `Natty::flush`) returns.
#[derive(Debug)]
#[non_exhaustive]
pub struct FlushError {
    /// The messages not stored, each handed back once.
    pub failed: Vec<FailedMessage>,
    /// Failed messages queued before this flush that were handed out elsewhere while it ran:
    /// to an overlapping `flush_all` or `close`, or through the error channel.
    pub returned_elsewhere: u64,
    /// The publisher itself failed (closed, or its task panicked).
    pub error: Option<Error>,
}

impl FlushError {
    /// A flush error for `failed` messages (and `returned_elsewhere` taken by others).
    pub fn new(failed: Vec<FailedMessage>, returned_elsewhere: u64, error: Option<Error>) -> Self {
        Self {
            failed,
            returned_elsewhere,
            error,
        }
    }
}

impl fmt::Display for FlushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} message(s) not stored", self.failed.len())?;
        if let Some(first) = self.failed.first() {
            write!(f, " (first: {:?}: {})", first.subject, first.error)?;
        }
        if self.returned_elsewhere > 0 {
            write!(
                f,
                "; {} more failed and were returned elsewhere (a concurrent flush or close, or \
                 the error channel)",
                self.returned_elsewhere
            )?;
        }
        if let Some(e) = &self.error {
            write!(f, "; the publisher failed: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FlushError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// One message on its way: everything needed to send it again or hand it back.
#[derive(Debug)]
struct Outgoing {
    /// Order of arrival at the pump (set there): `flush` waits for every lower one.
    seq: u64,
    /// Shared bytes: cloning it for each attempt costs a reference count, not a copy.
    subject: Subject,
    payload: Bytes,
    /// Extra headers the caller gave (usually none); `Nats-Msg-Id` is added when sending.
    extra: Vec<(String, String)>,
    /// `Nats-Msg-Id`: the caller's, or `<prefix>-<instance>-<n>`.
    msg_id: MsgId,
    /// The headers of the next attempt, built by the sender (off the pump's path) and taken by
    /// the first attempt; a retry builds them again.
    ready: Option<HeaderMap>,
    /// The size of those headers on the wire (the same for every attempt).
    headers_len: usize,
    attempts: u32,
    /// When the pump took it (no later than its first send): the duplicate window runs from
    /// at least here.
    first_seen: Instant,
    /// An attempt went unanswered: it may be stored.
    maybe_stored: bool,
    /// Out of a failed fast batch: sent on its own from now on.
    pipelined: bool,
}

impl Outgoing {
    /// The headers of this attempt: those the sender built for the first, then a fresh map
    /// per retry (as cheap as a fresh map: cloning one is not).
    fn headers(&mut self) -> HeaderMap {
        if let Some(ready) = self.ready.take() {
            return ready;
        }
        build_headers(&self.extra, &self.msg_id)
    }

    fn into_failed(self, error: Error) -> FailedMessage {
        let mut headers = self.extra;
        headers.push(("Nats-Msg-Id".to_owned(), self.msg_id.to_string()));
        FailedMessage {
            subject: self.subject.to_string(),
            payload: self.payload,
            headers,
            msg_id: self.msg_id.to_string(),
            attempts: self.attempts,
            stored: if self.maybe_stored {
                Stored::Maybe
            } else {
                Stored::No
            },
            error,
        }
    }
}

/// A message's `Nats-Msg-Id`: the caller's, or a generated one kept as its parts, so a message
/// costs one string (the header's), not two.
#[derive(Clone)]
enum MsgId {
    Given(String),
    /// `<base>-<n>`.
    Generated(Arc<str>, u64),
}

impl MsgId {
    fn to_header(&self) -> String {
        match self {
            Self::Given(id) => id.clone(),
            Self::Generated(base, n) => {
                use std::fmt::Write as _;
                let mut id = String::with_capacity(base.len() + 21);
                let _ = write!(id, "{base}-{n}");
                id
            }
        }
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Given(id) => f.write_str(id),
            Self::Generated(base, n) => write!(f, "{base}-{n}"),
        }
    }
}

impl fmt::Debug for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

/// Decimal digits of `n`.
fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

fn build_headers(extra: &[(String, String)], msg_id: &MsgId) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in extra {
        map.append(k.as_str(), v.as_str());
    }
    map.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.to_header());
    map
}

thread_local! {
    /// The subject this thread sent to last: a publisher mostly sends to a few subjects, and
    /// a shared copy (a reference count) is cheaper than a fresh one per message.
    static LAST_SUBJECT: std::cell::RefCell<Option<Subject>> = const { std::cell::RefCell::new(None) };
}

fn subject_of(subject: &str) -> Subject {
    LAST_SUBJECT.with(|last| {
        let mut last = last.borrow_mut();
        match last.as_ref() {
            Some(s) if s.as_str() == subject => s.clone(),
            _ => {
                let s = Subject::from(subject);
                *last = Some(s.clone());
                s
            }
        }
    })
}

#[derive(Debug)]
enum Command {
    Publish(Outgoing),
    /// Wake me when everything queued before is done (`Some`: the strict flush with this
    /// watch, whose mark the pump sets).
    Flush(oneshot::Sender<()>, Option<u64>),
    Close(oneshot::Sender<()>),
}

/// Publishes in the background, pipelined, losing nothing (Go natty `Publish`).
///
/// Failed messages come back one of two ways:
/// - **held** for [`flush_all`](Self::flush_all) and [`close`](Self::close) (the default): a
///   strict flush returns every message queued before it that was not stored. At most
///   [`max_held_failures`](BatchConfig::max_held_failures) are held; then `send` waits until
///   they are taken.
/// - **a channel** ([`take_errors`](Self::take_errors)): each failure as it happens; drain it.
///
/// ```no_run
/// # async fn example(client: natty_core::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use natty_stream::{BatchConfig, BatchPublisher};
/// let publisher = BatchPublisher::new(client, BatchConfig::default())?;
/// for i in 0..1000u32 {
///     publisher.send("orders.created", i.to_string().into()).await?;
/// }
/// // Every message stored, or each one that was not, with its payload and the reason.
/// if let Err(e) = publisher.flush_all().await {
///     for failed in &e.failed {
///         eprintln!("not stored: {} ({} bytes): {}", failed.subject, failed.payload.len(), failed.error);
///     }
/// }
/// publisher.close().await?; // every message acked or handed back
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct BatchPublisher {
    /// The queue to the pump; its bound is kept by `gate` (a place is reserved before a
    /// message goes in, and freed when the pump takes it).
    tx: mpsc::UnboundedSender<Command>,
    gate: Arc<Gate>,
    /// Failed messages: held for strict flushes and `close`, or sent to the taken channel.
    handback: Arc<Handback>,
    stats: Arc<Counters>,
    /// The connection: what its server accepts is checked on every send.
    client: Client,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    /// How the task ended, once `close()` has seen it end (`Err`: it panicked, and why).
    ended: OnceLock<Result<(), String>>,
    closed: AtomicBool,
    /// A placeholder for [`Outgoing::first_seen`] (the pump sets the real value), so `send`
    /// reads no clock.
    created: Instant,
    /// Generated ids are `<id_base>-<n>`: made by the senders (in parallel), not by the pump.
    id_base: Arc<str>,
    next_id: AtomicU64,
}

impl BatchPublisher {
    /// Starts a publisher (its task runs on the current tokio runtime).
    pub fn new(client: Client, config: BatchConfig) -> Result<Self, Error> {
        config.validate()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let gate = Arc::new(Gate::new(config.queue_capacity));
        let handback = Arc::new(Handback::new(config.held_capacity()));
        let stats = Arc::new(Counters::default());
        // Random per publisher instance, even under a fixed prefix: a restarted process must
        // not re-use ids the stream still remembers (it would drop those messages as
        // duplicates).
        let instance = client.nats().new_inbox().replace("_INBOX.", "");
        let id_base = match &config.id_prefix {
            Some(prefix) => format!("{prefix}-{instance}"),
            None => instance,
        };
        // A context of our own: acks time out after `ack_timeout`, and async-nats' own in-flight
        // limit sits above ours so it never adds a second, hidden wait. From the client's
        // builder: the configured JetStream domain / API prefix applies here too.
        let js = client
            .jetstream_builder()
            .ack_timeout(config.ack_timeout)
            .max_ack_inflight(config.max_in_flight.saturating_mul(2))
            .build(client.nats().clone());
        let span = info_span!("natty.stream.batch_publisher", ids = %id_base);
        let fast_capable = client.server_version().is_some_and(|v| v.at_least(2, 14));
        let pump = pump::Pump::new(
            js,
            client.clone(),
            config,
            fast_capable,
            handback.clone(),
            stats.clone(),
        );
        let task = tokio::spawn(pump.run(rx, gate.clone()).instrument(span));
        Ok(Self::from_parts(
            tx, gate, handback, stats, client, task, id_base,
        ))
    }

    fn from_parts(
        tx: mpsc::UnboundedSender<Command>,
        gate: Arc<Gate>,
        handback: Arc<Handback>,
        stats: Arc<Counters>,
        client: Client,
        task: JoinHandle<()>,
        id_base: String,
    ) -> Self {
        Self {
            tx,
            gate,
            handback,
            stats,
            client,
            task: tokio::sync::Mutex::new(Some(task)),
            ended: OnceLock::new(),
            closed: AtomicBool::new(false),
            created: Instant::now(),
            id_base: id_base.into(),
            next_id: AtomicU64::new(1),
        }
    }

    /// The failed-message channel (once). Failures held until then come first, then each
    /// failure as it happens; from then on [`flush_all`](Self::flush_all) and `close` return
    /// none (a strict flush counts those it covers as returned elsewhere). The channel is not
    /// bounded: drain it. Never taken, `flush_all` and `close()` return the failures.
    pub fn take_errors(&self) -> Option<mpsc::UnboundedReceiver<FailedMessage>> {
        self.handback.take_channel()
    }

    /// Every failed message held now (not taken by a flush, a close or the error channel),
    /// taken. After `close()` failed because the task died, what it had handed back before.
    pub fn take_failed(&self) -> Vec<FailedMessage> {
        self.handback.take_all()
    }

    /// Queues a message, waiting for room in a full queue (back-pressure). It gets a fresh
    /// `Nats-Msg-Id`. `TooLarge` (nothing queued) for a message the server would refuse;
    /// `Full` at once (nothing queued) while as many failed messages are held as
    /// [`max_held_failures`](BatchConfig::max_held_failures) — flush to take them.
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
        // Not a wait: the task that would take the held failures (a flush) is often this one.
        if !self.handback.has_room() {
            return Err(self.failures_held(subject));
        }
        if !self.gate.reserve().await {
            return Err(self.gone(&format!("queueing a message for {subject:?}")));
        }
        self.enqueue(m, subject)
    }

    /// Puts `m` in the queue, in a place already reserved.
    fn enqueue(&self, mut m: Outgoing, subject: &str) -> Result<(), Error> {
        if let MsgId::Generated(base, guess) = &m.msg_id {
            // Numbered only now that it has its place, so that a send refused or cancelled
            // before leaves no gap in the publisher's numbers (the loss audit reads them).
            // `outgoing` checked the size with the number it guessed; the counter only grows,
            // so the real one can only be longer, by the digits it gained.
            let base = base.clone();
            let n = self.next_id.fetch_add(1, Ordering::Relaxed);
            let grown = digits(n).saturating_sub(digits(*guess));
            if grown > 0 {
                m.headers_len += grown;
                if let Err(e) = self
                    .client
                    .limits()
                    .check(subject, m.headers_len, m.payload.len())
                {
                    // Only at a power of ten, for a message within bytes of the limit: this
                    // number is skipped (an audit shows it missing).
                    self.gate.release();
                    return Err(too_large(e, "queueing a message"));
                }
            }
            m.msg_id = MsgId::Generated(base, n);
            if let Some(headers) = m.ready.as_mut() {
                headers.insert(async_nats::header::NATS_MESSAGE_ID, m.msg_id.to_header());
            }
        }
        if self.tx.send(Command::Publish(m)).is_err() {
            self.gate.release();
            return Err(self.gone(&format!("queueing a message for {subject:?}")));
        }
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Queues a message if there is room now; `Full` otherwise (nothing queued).
    pub fn try_send(&self, subject: &str, payload: Bytes) -> Result<(), Error> {
        let m = self.outgoing(subject, payload, PublishOptions::default())?;
        if self.gate.is_closed() {
            return Err(self.gone(&format!("queueing a message for {subject:?}")));
        }
        if !self.handback.has_room() {
            return Err(self.failures_held(subject));
        }
        if !self.gate.try_reserve() {
            return Err(Error::new(
                ErrorKind::Full,
                format!(
                    "queueing a message for {subject:?}: all {} places taken",
                    self.gate.capacity()
                ),
            ));
        }
        self.enqueue(m, subject)
    }

    /// `Full`: as many failed messages are held as the publisher keeps.
    fn failures_held(&self, subject: &str) -> Error {
        self.handback.warn_full();
        Error::new(
            ErrorKind::Full,
            format!(
                "queueing a message for {subject:?}: {} failed messages are held (at most {} \
                 are); take them with flush_all, close or take_errors",
                self.handback.held(),
                self.handback.capacity()
            ),
        )
    }

    fn outgoing(
        &self,
        subject: &str,
        payload: Bytes,
        #[cfg_attr(not(feature = "otel"), allow(unused_mut))] mut options: PublishOptions,
    ) -> Result<Outgoing, Error> {
        names::subject(subject).map_err(from_core)?;
        options.validate()?;
        // The message's own span (debug-level: free when off); its trace context goes in
        // the headers every attempt is sent with.
        let _span = crate::trace::send_span(subject);
        #[cfg(feature = "otel")]
        crate::trace::inject_pairs(&_span, &mut options.headers);
        if self.closed.load(Ordering::Acquire) {
            return Err(self.gone(&format!("queueing a message for {subject:?}")));
        }
        let msg_id = match options.msg_id {
            Some(id) => MsgId::Given(id),
            // The number this message will probably get; the real one is taken when it is
            // queued (`enqueue`).
            None => MsgId::Generated(self.id_base.clone(), self.next_id.load(Ordering::Relaxed)),
        };
        let headers = build_headers(&options.headers, &msg_id);
        let headers_len = natty_core::limits::headers_len(&headers);
        // What the server would refuse by closing the connection (every user of it) is
        // refused here, before anything is queued.
        self.client
            .limits()
            .check(subject, headers_len, payload.len())
            .map_err(|e| too_large(e, "queueing a message"))?;
        Ok(Outgoing {
            seq: 0,
            subject: subject_of(subject),
            payload,
            ready: Some(headers),
            headers_len,
            extra: options.headers,
            msg_id,
            attempts: 0,
            first_seen: self.created,
            maybe_stored: false,
            pipelined: false,
        })
    }

    /// Waits until every message queued before this call (by any task) is acknowledged or
    /// handed back. An error when the publisher is closed or its task died. Failed messages
    /// stay where they were handed back: see [`flush_all`](Self::flush_all) for a flush that
    /// returns them.
    pub async fn flush(&self) -> Result<BatchStats, Error> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Flush(tx, None)).is_err() || rx.await.is_err() {
            return Err(self.gone("flushing the batch publisher"));
        }
        Ok(self.stats())
    }

    /// A strict flush: waits until every message queued before this call (by any task) is
    /// acknowledged or handed back, and returns `Ok` only if every one of them was stored.
    /// Otherwise the error carries each of them that was not (subject, payload, reason), taken
    /// from the held failures, and counts those handed out elsewhere while it ran
    /// ([`FlushError::returned_elsewhere`]: to an overlapping flush or close, or through the
    /// error channel once taken). Each failure is returned once.
    ///
    /// Cancel-safe: dropped half-way, it takes nothing; the failures stay held for the next.
    pub async fn flush_all(&self) -> Result<BatchStats, FlushError> {
        struct Forget<'a>(&'a Handback, u64);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.forget(self.1);
            }
        }
        let span = info_span!("natty.stream.flush_all", ids = %self.id_base);
        async {
            let id = self.handback.watch();
            let watch = Forget(&self.handback, id);
            let (tx, rx) = oneshot::channel();
            let done = self.tx.send(Command::Flush(tx, Some(id))).is_ok() && rx.await.is_ok();
            if !done {
                // The task is gone: whatever it handed back is returned with the error.
                let failed = self.handback.take_all();
                return Err(FlushError::new(
                    failed,
                    0,
                    Some(self.gone("flushing the batch publisher")),
                ));
            }
            let taken = self.handback.finish(id);
            drop(watch);
            if taken.failed.is_empty() && taken.elsewhere == 0 {
                Ok(self.stats())
            } else {
                debug!(
                    failed = taken.failed.len(),
                    returned_elsewhere = taken.elsewhere,
                    "flush: messages not stored"
                );
                Err(FlushError::new(taken.failed, taken.elsewhere, None))
            }
        }
        .instrument(span)
        .await
    }

    /// Flushes, then stops the background task. Failed messages not taken through
    /// [`take_errors`](Self::take_errors) are returned here.
    ///
    /// An error (`Panicked`) when the task died: the messages it held are neither acked nor
    /// handed back; those it had handed back before stay in [`take_errors`](Self::take_errors).
    pub async fn close(&self) -> Result<CloseReport, Error> {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let (tx, rx) = oneshot::channel();
            if self.tx.send(Command::Close(tx)).is_ok() {
                let _ = rx.await;
            }
        }
        {
            // The handle stays in place while awaited: a close() that is dropped half-way
            // leaves it for the next close() to await.
            let mut task = self.task.lock().await;
            if let Some(handle) = task.as_mut() {
                let ended = match handle.await {
                    Ok(()) => Ok(()),
                    Err(e) if e.is_panic() => Err(panic_text(e.into_panic())),
                    Err(e) => Err(e.to_string()),
                };
                let _ = self.ended.set(ended);
                *task = None;
            }
        }
        if let Some(Err(why)) = self.ended.get() {
            return Err(self.died(why, "closing the batch publisher"));
        }
        let failed = self.handback.take_all();
        Ok(CloseReport {
            stats: self.stats(),
            failed,
        })
    }

    /// Current counters.
    pub fn stats(&self) -> BatchStats {
        BatchStats {
            held: self.handback.held() as u64,
            ..self.stats.snapshot()
        }
    }

    /// The error for a publisher that no longer takes commands: closed by the caller, or its
    /// task died.
    fn gone(&self, what: &str) -> Error {
        if self.closed.load(Ordering::Acquire) {
            return Error::new(
                ErrorKind::Closed,
                format!("{what}: the publisher is closed"),
            );
        }
        match self.ended.get() {
            Some(Err(why)) => self.died(why, what),
            _ => self.died("its task ended", what),
        }
    }

    fn died(&self, why: &str, what: &str) -> Error {
        let s = self.stats();
        let lost = s.queued.saturating_sub(s.acked + s.failed);
        Error::new(
            ErrorKind::Panicked,
            format!(
                "{what}: the publisher's background task died ({why}); {lost} queued message(s) \
                 were neither acknowledged nor handed back"
            ),
        )
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => format!("panicked: {s}"),
        Err(payload) => match payload.downcast::<&str>() {
            Ok(s) => format!("panicked: {s}"),
            Err(_) => "panicked".to_owned(),
        },
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
