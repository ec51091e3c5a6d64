//! [`Watch`]: a stream of KV changes that survives reconnects and server restarts, and never
//! replays or silently skips.
//!
//! async-nats' own KV watch is an ordered consumer that may stop for good after a server
//! restart (nats.rs#1596) and folds expiry into "purge". This one runs the ordered consumer
//! in a task, decodes the marker reason (so expiry is its own event), and when the consumer
//! ends or errors, re-creates it from the revision after the last one delivered. Besides:
//!
//! - An ordered consumer that re-creates itself before it delivered anything starts from
//!   revision 1 (deliver-all): events at or below the last revision delivered are dropped.
//! - The bucket's stream is checked whenever the consumer is re-created and after every
//!   [`CHECK_AFTER`] without a message: a bucket that is gone ends the watch with
//!   `BucketNotFound` (async-nats would retry re-creating its consumer forever), and a bucket
//!   deleted and created again (its stream's creation time changed) is reported as
//!   [`EventKind::BucketRecreated`] before the new bucket's current values.

use std::{
    pin::Pin,
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
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{Instrument, debug, warn};

use crate::{
    Error, ErrorKind,
    bucket::{Bucket, Buckets, not_found},
    entry::{self, Event, EventKind},
    error::{from_request, server_code},
    retry::Outcome,
};

/// How many events may wait for the reader before the watch task waits too.
const BUFFER: usize = 256;
/// The pause before each re-creation of the watch consumer: from about 50 ms, doubling up to
/// 2 s while it fails, with jitter, so the watches of many clients do not all re-create at the
/// same instant after a server restart.
const RECREATE: RetryPolicy = RetryPolicy::new(Duration::from_millis(50), Duration::from_secs(2));
/// How long a watch may go without a message before it asks the server whether its bucket
/// is still the same (one stream info request per idle period).
pub(crate) const CHECK_AFTER: Duration = Duration::from_secs(10);

/// A stream of [`Event`]s from a bucket or key. Ends only if the bucket is deleted (after one
/// `BucketNotFound` error item) or the `Watch` is dropped; otherwise it resumes by itself.
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
            resume_from_start: matches!(start, Start::From(_)),
            caught_up: false,
            pending_at_open: 0,
        };
        // The first consumer is made here so that errors (bucket gone, no permission) reach
        // the caller, and so that no event written after this call returns can be missed.
        let first = watcher.open().await?;
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
    /// Start from `last_revision + 1` even when nothing was delivered yet.
    resume_from_start: bool,
    /// Whether the caught-up marker was sent (for the current bucket).
    caught_up: bool,
    /// How many messages the last consumer had to deliver when it was made.
    pending_at_open: u64,
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

    async fn open(&mut self) -> Result<Messages, Error> {
        let deliver_policy = match self.last_revision {
            Some(rev) => DeliverPolicy::ByStartSequence {
                start_sequence: rev + 1,
            },
            None if self.resume_from_start => DeliverPolicy::All,
            None => DeliverPolicy::LastPerSubject,
        };
        let context = self.context();
        let consumer = self
            .bucket
            .stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.client.nats().new_inbox(),
                filter_subject: self.filter.clone(),
                deliver_policy,
                replay_policy: jetstream::consumer::ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                let mut err = from_request(e, context.clone());
                if server_code(&err) == Some(natty_core::error::codes::STREAM_NOT_FOUND) {
                    err = Error::new(ErrorKind::BucketNotFound, context.clone());
                }
                err
            })?;
        self.pending_at_open = consumer.cached_info().num_pending;
        consumer
            .messages()
            .await
            .map_err(|e| from_request(e, context))
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
        self.resume_from_start = false;
        self.caught_up = false;
        tx.send(Ok(marker(EventKind::BucketRecreated, 0)))
            .await
            .is_ok()
    }

    async fn run(mut self, first: Messages, tx: mpsc::Sender<Result<Event, Error>>) {
        let mut messages = Some(first);
        let mut backoff = RECREATE.backoff();
        loop {
            let mut current = match messages.take() {
                Some(m) => m,
                None => {
                    let pause = backoff.next_delay();
                    debug!(retry_in = ?pause, "re-creating the watch consumer");
                    tokio::select! {
                        () = tx.closed() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                    match self.check().await {
                        Some(Check::Gone(e)) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                        Some(Check::Recreated(b)) => {
                            if !self.recreated(*b, &tx).await {
                                return;
                            }
                        }
                        Some(Check::Same) | None => {}
                    }
                    match self.open().await {
                        Ok(m) => {
                            debug!(from = ?self.last_revision, "watch resumed");
                            backoff.reset();
                            m
                        }
                        Err(e) if e.kind() == ErrorKind::BucketNotFound => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                        Err(e) => {
                            // The next turn waits a longer (jittered) pause first.
                            warn!(error = %e, "watch could not resume yet; retrying with back-off");
                            continue;
                        }
                    }
                }
            };
            if !self.caught_up && self.pending_at_open == 0 && !self.caught_up(&tx).await {
                // Nothing to catch up with.
                return;
            }
            loop {
                let next = tokio::select! {
                    () = tx.closed() => return,
                    next = current.next() => next,
                    () = tokio::time::sleep(CHECK_AFTER) => {
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
