//! The write path: one [`Write`] described once, published with the headers that make it
//! conditional, retried within the `Kv`'s deadline when the server's answer says nothing.
//!
//! - A 503 / no responders is "no stream leader right now" *or* "bucket gone": the stream info
//!   API decides ([`Buckets::lookup_once`](crate::bucket::Buckets::lookup_once)).
//! - A timeout or a broken connection leaves the outcome unknown. A conditional write carries
//!   a unique `Nats-Msg-Id`, so its retry is answered from the stream's duplicate window with
//!   the first attempt's revision instead of a false `RevisionMismatch`. When the retry comes
//!   after the window (a short bucket TTL shortens it) and loses its compare-and-set, the
//!   stream leader's last message of the key decides: ours (same message id) is success,
//!   anything else is `TimedOut` (outcome unknown), never a `RevisionMismatch` that may be
//!   false. An unconditional put or delete retried after such a failure may be stored twice
//!   (the same value or marker).
//! - A per-key TTL that the cached bucket cannot take is checked with the server first.

use std::fmt;

use async_nats::{
    HeaderMap,
    jetstream::context::{PublishError, PublishErrorKind},
};
use bytes::Bytes;
use natty_core::error::codes;
use tokio::time::Instant;
use tracing::{Instrument, debug, debug_span};

use crate::{
    Error, ErrorKind, Kv,
    bucket::{Bucket, not_found},
    entry::{self, KeyTtl},
    error::{from_publish, server_code},
    read::ReadFrom,
    retry::{Deadline, Outcome},
};

/// What a write is, for spans and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Put,
    Create,
    Update,
    Refresh,
    Delete,
    Purge,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Put => "put",
            Self::Create => "create",
            Self::Update => "update",
            Self::Refresh => "refresh",
            Self::Delete => "delete",
            Self::Purge => "purge",
        })
    }
}

/// What a write does when its bucket does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfMissing {
    /// Create it with the `Kv`'s defaults (put, create).
    CreateBucket,
    /// Fail with `BucketNotFound` (conditional writes, deletes).
    Fail,
}

/// The marker a write stores instead of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Delete,
    Purge,
}

/// One write to a key, described once so a retry repeats it exactly.
#[derive(Debug, Clone)]
pub(crate) struct Write {
    pub(crate) op: Op,
    pub(crate) bucket: String,
    pub(crate) key: String,
    value: Bytes,
    pub(crate) expected: Option<u64>,
    ttl: Option<KeyTtl>,
    marker: Option<Marker>,
}

impl Write {
    pub(crate) fn new(op: Op, bucket: &str, key: &str, value: Bytes) -> Self {
        Self {
            op,
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            value,
            expected: None,
            ttl: None,
            marker: None,
        }
    }

    /// A delete marker (history kept).
    pub(crate) fn delete(bucket: &str, key: &str) -> Self {
        Self {
            marker: Some(Marker::Delete),
            ..Self::new(Op::Delete, bucket, key, Bytes::new())
        }
    }

    /// A purge marker: the key's earlier revisions are removed.
    pub(crate) fn purge(bucket: &str, key: &str) -> Self {
        Self {
            marker: Some(Marker::Purge),
            ..Self::new(Op::Purge, bucket, key, Bytes::new())
        }
    }

    /// Stored only if the key's last revision is `revision` (0: the key has no message).
    pub(crate) fn expect(mut self, revision: u64) -> Self {
        self.expected = Some(revision);
        self
    }

    pub(crate) fn ttl(mut self, ttl: Option<KeyTtl>) -> Self {
        self.ttl = ttl;
        self
    }

    fn context(&self) -> String {
        let cond = self
            .expected
            .map_or(String::new(), |r| format!(" expecting revision {r}"));
        format!(
            "{} key {:?} in bucket {:?}{cond}",
            self.op, self.key, self.bucket
        )
    }
}

impl Kv {
    /// Performs `w`, retrying answers that say nothing until the `Kv`'s deadline. Returns the
    /// revision stored.
    pub(crate) async fn write(&self, w: &Write, if_missing: IfMissing) -> Result<u64, Error> {
        let span = debug_span!(
            "natty.kv.write",
            op = %w.op,
            bucket = %w.bucket,
            key = %w.key,
            expected = w.expected,
        );
        self.write_inner(w, if_missing).instrument(span).await
    }

    async fn write_inner(&self, w: &Write, if_missing: IfMissing) -> Result<u64, Error> {
        let deadline = Deadline::after(self.retry_for);
        let mut attempts = deadline.attempts();
        // Conditional writes are made idempotent: a retry is answered with the first
        // attempt's revision if that one was stored after all.
        let msg_id = w.expected.map(|_| self.unique_id());
        let mut recreated = false;
        // When the first attempt whose outcome is unknown (no answer) was sent.
        let mut unknown_since: Option<Instant> = None;
        loop {
            let b = match if_missing {
                IfMissing::CreateBucket => {
                    self.buckets
                        .find_or_create(&self.defaults.with_name(&w.bucket), &deadline)
                        .await?
                }
                IfMissing::Fail => {
                    self.buckets
                        .require(&w.bucket, &w.op.to_string(), &deadline)
                        .await?
                }
            };
            let b = self.check_ttl(b, w, &deadline).await?;
            let sent = Instant::now();
            let failure = match publish_once(self, &b, w, msg_id.as_deref()).await {
                Outcome::Done(result) => {
                    return match result {
                        Err(e) if e.kind() == ErrorKind::RevisionMismatch => match unknown_since {
                            Some(since) => {
                                self.after_lost_answer(w, msg_id.as_deref(), since, e, &deadline)
                                    .await
                            }
                            None => Err(e),
                        },
                        Err(e) => {
                            if matches!(
                                e.kind(),
                                ErrorKind::BucketNotFound | ErrorKind::Unsupported
                            ) {
                                // What the cache says about the bucket is out of date.
                                self.buckets.evict(&w.bucket);
                            }
                            Err(e)
                        }
                        ok => ok,
                    };
                }
                Outcome::Retry(e) => {
                    unknown_since.get_or_insert(sent);
                    e
                }
                Outcome::Unavailable(e) => match self.buckets.lookup_once(&w.bucket).await {
                    Outcome::Done(Ok(None)) => {
                        // Deleted behind our back. A write that may create buckets creates it
                        // again (once); others say so.
                        if if_missing == IfMissing::Fail || recreated {
                            return Err(Error::with_source(
                                ErrorKind::BucketNotFound,
                                w.context(),
                                e,
                            ));
                        }
                        debug!("bucket vanished, re-creating it");
                        recreated = true;
                        continue;
                    }
                    Outcome::Done(Err(lookup)) => return Err(lookup),
                    // It exists (or we cannot tell yet): it has no leader right now.
                    _ => Error::with_source(
                        ErrorKind::TimedOut,
                        format!(
                            "{}: the bucket's stream answered no responders (no leader) until the \
                             deadline ({:?})",
                            w.context(),
                            self.retry_for
                        ),
                        e,
                    ),
                },
            };
            if !attempts.pause(&failure).await {
                return Err(failure);
            }
        }
    }

    /// A write whose earlier attempt got no answer lost its compare-and-set on a later
    /// attempt. Its retries carry the same `Nats-Msg-Id`, so if the first one had been stored
    /// the server would have answered the retry from its duplicate window, unless that window
    /// had passed (a short bucket TTL shortens it): then the conflict may be with our own
    /// write. Our write is proven stored when the key's last message (asked of the stream
    /// leader) carries our message id; otherwise the outcome is unknown (`TimedOut`): it may
    /// have been stored and then expired or overwritten. Never a `RevisionMismatch` that
    /// may be false, never an `Ok` for a write that was not stored.
    async fn after_lost_answer(
        &self,
        w: &Write,
        msg_id: Option<&str>,
        since: Instant,
        mismatch: Error,
        deadline: &Deadline,
    ) -> Result<u64, Error> {
        let Some(b) = self.buckets.lookup(&w.bucket, deadline).await? else {
            return Err(Error::with_source(
                ErrorKind::BucketNotFound,
                w.context(),
                mismatch,
            ));
        };
        let window = b.stream.cached_info().config.duplicate_window;
        let elapsed = since.elapsed();
        if elapsed < window {
            // A stored first attempt would have been recognised: the conflict is real.
            return Err(mismatch);
        }
        let last = self.last_message(&b, &w.key, ReadFrom::Leader).await?;
        if let (Some(m), Some(id)) = (&last, msg_id)
            && m.headers.get(entry::MSG_ID).map(|v| v.as_str()) == Some(id)
        {
            debug!(
                revision = m.sequence,
                "an attempt whose answer was lost was stored"
            );
            return Ok(m.sequence);
        }
        Err(Error::with_source(
            ErrorKind::TimedOut,
            format!(
                "{}: an attempt got no answer and its retry came {elapsed:?} later, after the \
                 bucket's duplicate window ({window:?}); whether it was stored is unknown (the \
                 key's last revision is now {})",
                w.context(),
                last.map_or_else(|| "none".to_owned(), |m| m.sequence.to_string())
            ),
            mismatch,
        ))
    }

    /// The bucket to write `w` to: a write with a per-key TTL that the cached bucket says it
    /// cannot take asks the server first (the bucket may have been re-created with per-key
    /// TTL behind our back); `Unsupported` only from the server's answer.
    async fn check_ttl(&self, b: Bucket, w: &Write, deadline: &Deadline) -> Result<Bucket, Error> {
        if w.ttl.is_none() || b.per_key_ttl {
            return Ok(b);
        }
        let b = self
            .buckets
            .lookup(&w.bucket, deadline)
            .await?
            .ok_or_else(|| not_found(&w.bucket, &w.op.to_string()))?;
        if b.per_key_ttl {
            return Ok(b);
        }
        Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "{} key {:?} with a per-key TTL: bucket {:?} has no per-key TTL (needs server 2.11+ \
                 and a bucket created with per_key_ttl; this server is {})",
                w.op,
                w.key,
                w.bucket,
                self.client.server_version_text()
            ),
        ))
    }

    /// A unique message id (the NUID of a fresh inbox: unique per process and connection,
    /// without another dependency).
    fn unique_id(&self) -> String {
        let inbox = self.client.nats().new_inbox();
        match inbox.rsplit_once('.') {
            Some((_, id)) => id.to_owned(),
            None => inbox,
        }
    }
}

async fn publish_once(kv: &Kv, b: &Bucket, w: &Write, msg_id: Option<&str>) -> Outcome<u64> {
    let mut headers = HeaderMap::new();
    if let Some(expected) = w.expected {
        headers.insert(
            entry::EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected.to_string().as_str(),
        );
    }
    if let Some(ttl) = w.ttl {
        headers.insert(entry::TTL, ttl.header_value().as_str());
    }
    match w.marker {
        Some(Marker::Delete) => headers.insert(entry::KV_OPERATION, "DEL"),
        Some(Marker::Purge) => {
            headers.insert(entry::KV_OPERATION, "PURGE");
            headers.insert(entry::ROLLUP, "sub");
        }
        None => {}
    }
    if let Some(id) = msg_id {
        headers.insert(entry::MSG_ID, id);
    }
    let ack = match kv
        .client
        .jetstream()
        .publish_with_headers(b.subject(&w.key), headers, w.value.clone())
        .await
    {
        Ok(ack) => ack.await,
        Err(e) => Err(e),
    };
    match ack {
        Ok(ack) => {
            debug!(
                revision = ack.sequence,
                duplicate = ack.duplicate,
                "written"
            );
            Outcome::Done(Ok(ack.sequence))
        }
        Err(e) => classify(e, w),
    }
}

fn classify(e: PublishError, w: &Write) -> Outcome<u64> {
    match e.kind() {
        // async-nats' name for a 503 / no responders status.
        PublishErrorKind::StreamNotFound => Outcome::Unavailable(from_publish(e, w.context())),
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
            Outcome::Retry(from_publish(e, w.context()))
        }
        _ if server_code(&e) == Some(codes::TEMPORARILY_UNAVAILABLE) => {
            Outcome::Retry(from_publish(e, w.context()))
        }
        _ => Outcome::Done(Err(from_publish(e, w.context()))),
    }
}
