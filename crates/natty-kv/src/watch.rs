//! [`Watch`]: a stream of KV changes that survives reconnects and server restarts.
//!
//! async-nats' own KV watch is an ordered consumer that may stop for good after a server
//! restart (nats.rs#1596) and folds expiry into "purge". This one runs the ordered consumer
//! in a task, decodes the marker reason (so expiry is its own event), and when the consumer
//! ends or errors, re-creates it from the revision after the last one delivered.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, push},
};
use futures::{Stream, StreamExt};
use natty_core::Client;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{Instrument, debug, warn};

use crate::{
    Error, ErrorKind,
    bucket::Bucket,
    entry::{self, Event},
    error::{from_request, server_code},
};

/// How many events may wait for the reader before the watch task waits too.
const BUFFER: usize = 256;
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A stream of [`Event`]s from a bucket or key. Ends only if the bucket is deleted (after one
/// `BucketNotFound` error item) or the `Watch` is dropped; otherwise it resumes by itself.
///
/// Cancel safety: dropping a `Watch` stops its task; polling `next()` in a `select!` loses
/// nothing (events wait in the channel).
#[derive(Debug)]
pub struct Watch {
    events: mpsc::Receiver<Result<Event, Error>>,
    task: JoinHandle<()>,
}

impl Watch {
    pub(crate) async fn start(
        client: Client,
        bucket: Bucket,
        filter: String,
    ) -> Result<Self, Error> {
        let watcher = Watcher {
            client,
            bucket,
            filter,
            last_revision: None,
        };
        // The first consumer is made here so that errors (bucket gone, no permission) reach
        // the caller, and so that no event written after this call returns can be missed.
        let first = watcher.open().await?;
        let (tx, rx) = mpsc::channel(BUFFER);
        let span = tracing::info_span!("natty.kv.watch", bucket = %watcher.bucket.name, filter = %watcher.filter);
        let task = tokio::spawn(watcher.run(first, tx).instrument(span));
        Ok(Self { events: rx, task })
    }
}

impl Stream for Watch {
    type Item = Result<Event, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
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
    bucket: Bucket,
    filter: String,
    last_revision: Option<u64>,
}

impl Watcher {
    async fn open(&self) -> Result<Messages, Error> {
        let deliver_policy = match self.last_revision {
            None => DeliverPolicy::LastPerSubject,
            Some(rev) => DeliverPolicy::ByStartSequence {
                start_sequence: rev + 1,
            },
        };
        let context = || {
            format!(
                "watching {:?} in bucket {:?}",
                self.filter, self.bucket.name
            )
        };
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
                let mut err = from_request(e, context());
                if server_code(&err) == Some(natty_core::error::codes::STREAM_NOT_FOUND) {
                    err = Error::new(ErrorKind::BucketNotFound, context());
                }
                err
            })?;
        consumer
            .messages()
            .await
            .map_err(|e| from_request(e, context()))
    }

    async fn run(mut self, first: Messages, tx: mpsc::Sender<Result<Event, Error>>) {
        let mut messages = Some(first);
        let mut backoff = Duration::from_millis(50);
        loop {
            let mut current = match messages.take() {
                Some(m) => m,
                None => match self.open().await {
                    Ok(m) => {
                        debug!(from = ?self.last_revision, "watch resumed");
                        backoff = Duration::from_millis(50);
                        m
                    }
                    Err(e) if e.kind() == ErrorKind::BucketNotFound => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    Err(e) => {
                        warn!(error = %e, retry_in = ?backoff, "watch could not resume yet");
                        tokio::select! {
                            () = tx.closed() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                },
            };
            loop {
                let next = tokio::select! {
                    () = tx.closed() => return,
                    next = current.next() => next,
                };
                match next {
                    Some(Ok(message)) => {
                        let Some(event) = entry::event_of(&message, &self.bucket.name) else {
                            continue;
                        };
                        self.last_revision = Some(event.revision);
                        if tx.send(Ok(event)).await.is_err() {
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
