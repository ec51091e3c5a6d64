//! [`Watch`]: a stream of KV changes that survives reconnects and server restarts, and never
//! replays or silently skips.
//!
//! async-nats' own KV watch is an ordered consumer that may stop for good after a server
//! restart (nats.rs#1596) and folds expiry into "purge". This one runs the ordered consumer
//! in a task, decodes the marker reason (so expiry is its own event), and when the consumer
//! ends or errors, re-creates it itself. Besides:
//!
//! - async-nats re-creates an ordered consumer by itself after a reconnect or a sequence gap,
//!   from its own last stream sequence: from revision 1 (deliver-all) if it had delivered
//!   nothing yet, mid-way through the current values otherwise (delivering values that were
//!   overwritten before the watch started), and on whatever stream now has the bucket's
//!   name. Such a consumer is never used: a reconnect (the client's connect count) or a
//!   consumer sequence that starts over makes the watch drop it and create its own, from
//!   where it is, after asking the stream info API whether the bucket is still the same.
//! - Events at or below the last revision delivered are dropped.
//! - The bucket's stream is checked after every consumer the watch creates, and every
//!   [`CHECK_AFTER`] however busy the watch is: a bucket that is gone ends the watch with
//!   `BucketNotFound` (async-nats would retry re-creating its consumer forever), and a bucket
//!   deleted and created again (its stream's creation time changed) is reported as
//!   [`EventKind::BucketRecreated`] before the new bucket's current values.
//! - The bucket a watch starts on is the one the server has when its first consumer exists,
//!   not the one a (possibly stale) cache remembers.
//! - A consumer that cannot be re-created for good (bucket gone, consumer limit, no
//!   permission: see [`Watch`]) ends the watch with that error, never a retry loop that only
//!   logs.

use std::{
    pin::Pin,
    sync::atomic::Ordering,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, push},
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use natty_core::Client;
use natty_core::retry::RetryPolicy;
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};
use tracing::{Instrument, debug, warn};

use crate::{
    Error, ErrorKind,
    bucket::{Bucket, Buckets, not_found},
    entry::{self, Event, EventKind},
    retry::{Deadline, Outcome},
    scan,
};

/// How many events may wait for the reader before the watch task waits too.
const BUFFER: usize = 256;
/// The pause before each re-creation of the watch consumer: from about 50 ms, doubling up to
/// 2 s while it fails, with jitter, so the watches of many clients do not all re-create at the
/// same instant after a server restart.
const RECREATE: RetryPolicy = RetryPolicy::new(Duration::from_millis(50), Duration::from_secs(2));
/// How often a watch asks the server whether its bucket is still the same (one stream info
/// request per period, busy or idle).
pub(crate) const CHECK_AFTER: Duration = Duration::from_secs(10);
/// The least time a watch keeps trying to resume while connected (the `Kv`'s `retry_for` if
/// longer).
pub(crate) const MIN_RESUME_FOR: Duration = Duration::from_secs(30);

/// A stream of [`Event`]s from a bucket or key. It resumes by itself after a reconnect, a
/// server restart or a stream-leader election (a 503 or a timeout while it re-creates its
/// consumer is retried), and ends — after one error item, never silently — only when it
/// cannot resume:
///
/// - `BucketNotFound`: the bucket was deleted;
/// - the JetStream API's refusal (the account's consumer limit, JetStream disabled, ...);
///
/// When it could not re-create its consumer for [`Kv::retry_for`](crate::Kv::retry_for) (at
/// least 30 s) while connected — no permission to create consumers (the server drops such
/// requests without an answer), or no JetStream leader (a partition, a lost quorum) — it sends
/// one `TimedOut` item that is *not* the end and goes on trying: the next items are the
/// resumed events. Time spent disconnected does not count.
///
/// The first consumer is made by `watch_*` itself, which retries 503s and timeouts within
/// `retry_for` and returns any other failure.
///
/// Guarantees: events come in revision order, each revision at most once (nothing is
/// replayed after a reconnect), and nothing is skipped while the bucket exists — except the
/// delete/expiry markers removed by the server while the watch was disconnected for longer
/// than the bucket's [`marker_ttl`](crate::BucketConfig::marker_ttl). A bucket deleted and
/// created again is reported as one [`EventKind::BucketRecreated`] event (revision 0), then
/// the new bucket's current values.
///
/// Cancel safety: dropping a `Watch` stops its task; polling `next()` in a `select!` loses
/// nothing (events wait in the channel).
#[derive(Debug)]
pub struct Watch {
    events: mpsc::Receiver<Result<Event, Error>>,
    task: JoinHandle<()>,
    caught_up_events: bool,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    /// The current value of each key, then every change.
    Current,
    /// Every change from this revision on (inclusive).
    From(u64),
}

impl Watch {
    pub(crate) async fn start(
        client: Client,
        buckets: Buckets,
        bucket: Bucket,
        filter: String,
        start: Start,
        deadline: Deadline,
        resume_for: Duration,
    ) -> Result<Self, Error> {
        let mut watcher = Watcher {
            client,
            buckets,
            bucket,
            filter,
            last_revision: match start {
                Start::Current | Start::From(0) => None,
                Start::From(revision) => Some(revision - 1),
            },
            start,
            caught_up: false,
            resume_for: resume_for.max(MIN_RESUME_FOR),
            pending_at_open: 0,
            connects_at_open: 0,
            next_consumer_sequence: 1,
        };
        // The first consumer is made here so that errors (bucket gone, no permission) reach
        // the caller, and so that no event written after this call returns can be missed.
        // It is on the bucket the server has now, whatever the cache remembered.
        let mut attempts = deadline.attempts();
        let first = loop {
            let first = match watcher.open().await {
                Outcome::Done(opened) => opened?,
                Outcome::Retry(e) | Outcome::Unavailable(e) => {
                    if attempts.pause(&e).await {
                        continue;
                    }
                    return Err(e);
                }
            };
            match watcher
                .buckets
                .lookup(&watcher.bucket.name, &deadline)
                .await?
            {
                Some(b) if b.created == watcher.bucket.created => break first,
                Some(b) if Instant::now() < deadline.at() => {
                    debug!("the cached bucket was re-created since; watching the one there is");
                    watcher.bucket = b;
                }
                Some(_) => {
                    return Err(Error::new(
                        ErrorKind::TimedOut,
                        format!("{}: the bucket kept being re-created", watcher.context()),
                    ));
                }
                None => return Err(not_found(&watcher.bucket.name, "watching")),
            }
        };
        let (tx, rx) = mpsc::channel(BUFFER);
        let span = tracing::info_span!("natty.kv.watch", bucket = %watcher.bucket.name, filter = %watcher.filter);
        let task = tokio::spawn(watcher.run(first, tx).instrument(span));
        Ok(Self {
            events: rx,
            task,
            caught_up_events: false,
        })
    }

    /// Also yield an [`EventKind::CaughtUp`] event (empty key, the revision of the last event
    /// before it) once the values that existed when the watch started have been delivered —
    /// and again after an [`EventKind::BucketRecreated`]. Off by default.
    #[must_use]
    pub fn with_caught_up_events(mut self) -> Self {
        self.caught_up_events = true;
        self
    }
}

impl Stream for Watch {
    type Item = Result<Event, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match self.events.poll_recv(cx) {
                Poll::Ready(Some(Ok(e)))
                    if e.kind == EventKind::CaughtUp && !self.caught_up_events => {}
                other => return other,
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Messages = push::Ordered;

struct Watcher {
    client: Client,
    buckets: Buckets,
    bucket: Bucket,
    filter: String,
    /// The revision of the last event delivered (or the one before the requested start).
    last_revision: Option<u64>,
    /// Where the watch started (on the current bucket).
    start: Start,
    /// Whether the caught-up marker was sent (for the current bucket).
    caught_up: bool,
    /// How long the watch tries to resume while connected before it ends with `TimedOut`.
    resume_for: Duration,
    /// How many messages the last consumer had to deliver when it was made.
    pending_at_open: u64,
    /// The client's connect count when the last consumer was made: after a reconnect,
    /// async-nats re-creates the consumer on its own terms.
    connects_at_open: u64,
    /// The consumer sequence the next message of our consumer has; one that starts over
    /// comes from a consumer async-nats re-created.
    next_consumer_sequence: u64,
}

/// What a check of the bucket's stream found.
enum Check {
    Same,
    Gone(Error),
    Recreated(Box<Bucket>),
}

impl Watcher {
    fn context(&self) -> String {
        format!(
            "watching {:?} in bucket {:?}",
            self.filter, self.bucket.name
        )
    }

    /// Creates an ordered consumer from where the watch is: the current values while they
    /// are being delivered (those at or below the last revision delivered are dropped), else
    /// every change after the last revision delivered.
    async fn open(&mut self) -> Outcome<Messages> {
        let deliver_policy = match (self.last_revision, self.start) {
            (None, Start::Current) => DeliverPolicy::LastPerSubject,
            (None, Start::From(_)) => DeliverPolicy::All,
            (Some(_), Start::Current) if !self.caught_up => DeliverPolicy::LastPerSubject,
            (Some(rev), _) => DeliverPolicy::ByStartSequence {
                start_sequence: rev + 1,
            },
        };
        self.connects_at_open = self.connects();
        self.next_consumer_sequence = 1;
        let context = self.context();
        let opened = scan::ordered(
            &self.bucket,
            push::OrderedConfig {
                deliver_subject: self.client.nats().new_inbox(),
                filter_subject: self.filter.clone(),
                deliver_policy,
                replay_policy: jetstream::consumer::ReplayPolicy::Instant,
                ..Default::default()
            },
            &context,
        )
        .await;
        match opened {
            Outcome::Done(Ok((pending, messages))) => {
                self.pending_at_open = pending;
                Outcome::Done(Ok(messages))
            }
            Outcome::Done(Err(e)) => Outcome::Done(Err(e)),
            Outcome::Retry(e) => Outcome::Retry(e),
            Outcome::Unavailable(e) => Outcome::Unavailable(e),
        }
    }

    fn connects(&self) -> u64 {
        self.client
            .nats()
            .statistics()
            .connects
            .load(Ordering::Relaxed)
    }

    /// Whether `message` comes from a consumer that async-nats re-created by itself (after a
    /// reconnect, or a gap in the consumer sequence) rather than from ours.
    fn replaced(&mut self, message: &jetstream::Message) -> bool {
        let Ok(info) = message.info() else {
            return false;
        };
        if self.connects() != self.connects_at_open
            || info.consumer_sequence != self.next_consumer_sequence
        {
            return true;
        }
        self.next_consumer_sequence += 1;
        false
    }

    /// Creates a consumer on the bucket as the stream info API sees it just after: a bucket
    /// re-created meanwhile is reported first. `None` when the watch ends (reader gone, or
    /// bucket gone: the error was sent).
    async fn reopen(&mut self, tx: &mpsc::Sender<Result<Event, Error>>) -> Option<Messages> {
        let mut backoff = RECREATE.backoff();
        // Since when the watch fails to resume while the connection is up.
        let mut stalled_since: Option<Instant> = None;
        // The reader was told of this stall.
        let mut told = false;
        loop {
            let pause = backoff.next_delay();
            match self.open().await {
                Outcome::Done(Ok(m)) => match self.check().await {
                    Some(Check::Same) => {
                        debug!(from = ?self.last_revision, "watch resumed");
                        return Some(m);
                    }
                    Some(Check::Recreated(b)) => {
                        if !self.recreated(*b, tx).await {
                            return None;
                        }
                        continue;
                    }
                    Some(Check::Gone(e)) => {
                        let _ = tx.send(Err(e)).await;
                        return None;
                    }
                    None => {
                        debug!(retry_in = ?pause, "cannot tell yet whether the bucket is the same")
                    }
                },
                // Bucket gone, consumer limit, no permission in the account, JetStream
                // disabled: retrying cannot help. The reader gets the error, the watch ends.
                Outcome::Done(Err(e)) => {
                    warn!(error = %e, "watch cannot resume; ending it");
                    let _ = tx.send(Err(e)).await;
                    return None;
                }
                Outcome::Retry(e) | Outcome::Unavailable(e) => {
                    if !self.connected() {
                        stalled_since = None;
                    } else if let Some(since) = stalled_since {
                        if since.elapsed() >= self.resume_for && !told {
                            // Silence is not a refusal: a partition or a lost quorum heals, a
                            // missing permission does not. The reader is told once per stall
                            // (an error item that is not the end) and the watch goes on trying.
                            let e = Error::with_source(
                                ErrorKind::TimedOut,
                                format!(
                                    "{}: could not resume for {:?} although connected (no \
                                     permission to create consumers on the bucket's stream, or no \
                                     JetStream leader); still trying",
                                    self.context(),
                                    since.elapsed()
                                ),
                                e,
                            );
                            warn!(error = %e, "watch cannot resume yet; telling the reader");
                            told = true;
                            if tx.send(Err(e)).await.is_err() {
                                return None;
                            }
                            continue;
                        }
                    } else {
                        stalled_since = Some(Instant::now());
                    }
                    warn!(error = %e, retry_in = ?pause, "watch could not resume yet");
                }
            }
            tokio::select! {
                () = tx.closed() => return None,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    fn connected(&self) -> bool {
        self.client.nats().connection_state() == async_nats::connection::State::Connected
    }

    /// Asks the stream info API whether the bucket is still the one we watch.
    async fn check(&self) -> Option<Check> {
        match self.buckets.lookup_once(&self.bucket.name).await {
            Outcome::Done(Ok(Some(b))) if b.created != self.bucket.created => {
                Some(Check::Recreated(Box::new(b)))
            }
            Outcome::Done(Ok(Some(_))) => Some(Check::Same),
            Outcome::Done(Ok(None)) => Some(Check::Gone(not_found(&self.bucket.name, "watching"))),
            // Cannot tell now (no leader, timeout, disconnected): look again later.
            _ => None,
        }
    }

    /// Sends `event` unless it is a replay; `false` when the reader is gone.
    async fn deliver(&mut self, event: Event, tx: &mpsc::Sender<Result<Event, Error>>) -> bool {
        if !admit(&mut self.last_revision, event.revision) {
            debug!(revision = event.revision, "dropping a replayed revision");
            return true;
        }
        tx.send(Ok(event)).await.is_ok()
    }

    async fn caught_up(&mut self, tx: &mpsc::Sender<Result<Event, Error>>) -> bool {
        self.caught_up = true;
        tx.send(Ok(marker(
            EventKind::CaughtUp,
            self.last_revision.unwrap_or(0),
        )))
        .await
        .is_ok()
    }

    /// Handles a re-created bucket: report it, then watch the new one from its current values.
    async fn recreated(&mut self, b: Bucket, tx: &mpsc::Sender<Result<Event, Error>>) -> bool {
        warn!("bucket deleted and created again; watching the new one");
        self.bucket = b;
        self.last_revision = None;
        self.start = Start::Current;
        self.caught_up = false;
        tx.send(Ok(marker(EventKind::BucketRecreated, 0)))
            .await
            .is_ok()
    }

    async fn run(mut self, first: Messages, tx: mpsc::Sender<Result<Event, Error>>) {
        let mut messages = Some(first);
        let mut checks = tokio::time::interval_at(Instant::now() + CHECK_AFTER, CHECK_AFTER);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut current = match messages.take() {
                Some(m) => m,
                None => match self.reopen(&tx).await {
                    Some(m) => m,
                    None => return,
                },
            };
            if !self.caught_up && self.pending_at_open == 0 && !self.caught_up(&tx).await {
                // Nothing to catch up with.
                return;
            }
            loop {
                let next = tokio::select! {
                    () = tx.closed() => return,
                    next = current.next() => next,
                    _ = checks.tick() => {
                        match self.check().await {
                            Some(Check::Gone(e)) => {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                            Some(Check::Recreated(b)) => {
                                if !self.recreated(*b, &tx).await {
                                    return;
                                }
                                break;
                            }
                            Some(Check::Same) | None => continue,
                        }
                    }
                };
                match next {
                    Some(Ok(message)) => {
                        if self.replaced(&message) {
                            debug!("async-nats re-created the consumer; re-creating our own");
                            break;
                        }
                        let pending = message.info().map(|i| i.pending).ok();
                        let Some(event) = entry::event_of(&message, &self.bucket.name) else {
                            continue;
                        };
                        if !self.deliver(event, &tx).await {
                            return;
                        }
                        if !self.caught_up && pending == Some(0) && !self.caught_up(&tx).await {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, "watch consumer failed; re-creating it");
                        break;
                    }
                    None => {
                        warn!("watch consumer ended; re-creating it");
                        break;
                    }
                }
            }
        }
    }
}

/// Whether a revision is new (above the last one delivered); if so it becomes the last one.
/// An ordered consumer re-created before it delivered anything starts over from revision 1,
/// so revisions come again; they are dropped here.
fn admit(last_revision: &mut Option<u64>, revision: u64) -> bool {
    if last_revision.is_some_and(|last| revision <= last) {
        return false;
    }
    *last_revision = Some(revision);
    true
}

/// An event that is about the watch, not a key.
fn marker(kind: EventKind, revision: u64) -> Event {
    Event {
        key: String::new(),
        kind,
        value: Bytes::new(),
        revision,
        created: SystemTime::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::admit;

    #[test]
    fn replayed_revisions_are_dropped() {
        // Started from revision 3 (last = 2); the consumer restarts from 1 after a reconnect.
        let mut last = Some(2);
        let admitted: Vec<u64> = [1, 2, 3, 4, 1, 2, 3, 4, 5]
            .into_iter()
            .filter(|&r| admit(&mut last, r))
            .collect();
        assert_eq!(admitted, [3, 4, 5]);
        let mut fresh = None;
        assert!(admit(&mut fresh, 7) && !admit(&mut fresh, 7) && admit(&mut fresh, 8));
    }
}
