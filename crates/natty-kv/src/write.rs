//! The write path: one [`Write`] described once, published with the headers that make it
//! conditional, retried within the `Kv`'s deadline when the server's answer says nothing.
//!
//! - A 503 / no responders is "no stream leader right now" *or* "bucket gone": the stream info
//!   API decides ([`Buckets::lookup_once`](crate::bucket::Buckets::lookup_once)).
//! - A timeout or a broken connection leaves the outcome unknown. A conditional write carries
//!   a unique `Nats-Msg-Id`, so its retry is usually answered from the stream's duplicate map
//!   with the first attempt's revision. When such a retry loses its compare-and-set instead,
//!   the stream leader's messages of the key are read (`Kv::after_lost_answer`): ours is
//!   success, a proven conflict is `RevisionMismatch`; when reading cannot tell, the
//!   duplicate map is believed within its window and the outcome is `TimedOut` (unknown)
//!   after it. An unconditional put or delete retried after such a failure may be stored
//!   twice (the same value or marker).
//! - Every stored revision is remembered by the handle ([`written`](crate::written)) so its
//!   later reads of the key are not older; an update or refresh acknowledged as its base
//!   revision expired is checked against the server's expiry-marker race
//!   ([`expiry`](crate::expiry)).
//! - A per-key TTL that the cached bucket cannot take is checked with the server first.
//! - A write the server would refuse by closing the connection (value and headers over its
//!   `max_payload`, or a key that makes `$KV.<bucket>.<key>` longer than its control line) is
//!   `TooLarge` before anything is sent — no bucket created, no request made.

use std::{fmt, time::Duration};

use async_nats::{
    HeaderMap,
    jetstream::{
        context::{PublishError, PublishErrorKind},
        message::StreamMessage,
    },
};
use bytes::Bytes;
use natty_core::error::codes;
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span};

use crate::{
    Error, ErrorKind, Kv,
    bucket::{Bucket, not_found},
    entry::{self, KeyTtl},
    error::{from_publish, server_code},
    expiry::{self, Base, Guard, Verdict},
    read::ReadFrom,
    retry::{Deadline, Outcome},
    written::{Expiry, Mark},
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
    /// When the revision this write is conditioned on expires, if the caller read it.
    base: Option<Base>,
}

/// A write the server acknowledged.
#[derive(Debug)]
struct Stored {
    revision: u64,
    /// The bucket it was written to.
    bucket: Bucket,
    /// When its first attempt was sent: it was stored after this instant.
    first_sent: Instant,
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
            base: None,
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

    /// The expiry of the revision this write is conditioned on (as the caller read it).
    pub(crate) fn base(mut self, base: Base) -> Self {
        self.base = Some(base);
        self
    }

    /// When the value this write stores expires at the earliest.
    fn expiry(&self, stored: &Stored) -> Expiry {
        let ttl = match self.ttl {
            Some(KeyTtl::Never) => None,
            Some(KeyTtl::Secs(secs)) => Some(Duration::from_secs(secs)),
            None => expiry::bucket_ttl(&stored.bucket),
        };
        ttl.map_or(Expiry::Never, |ttl| {
            Expiry::NotBefore(
                stored
                    .first_sent
                    .checked_add(ttl)
                    .unwrap_or(stored.first_sent),
            )
        })
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
    /// revision stored, which the handle remembers (its later reads of the key are not older).
    /// An update or refresh that an expiry marker of its base revision removed right after it
    /// was stored is reported as such ([`expiry`](crate::expiry)).
    pub(crate) async fn write(&self, w: &Write, if_missing: IfMissing) -> Result<u64, Error> {
        let span = info_span!(
            "natty.kv.write",
            op = %w.op,
            bucket = %w.bucket,
            key = %w.key,
            expected = w.expected,
        );
        async {
            let guard = self.guard_for(w).await?;
            let stored = self.write_inner(w, if_missing).await?;
            self.written.record(
                &stored.bucket,
                &w.key,
                Mark {
                    revision: stored.revision,
                    expiry: w.expiry(&stored),
                },
            );
            let Some(guard) = guard else {
                return Ok(stored.revision);
            };
            match self
                .confirm_kept(&stored.bucket, &w.key, stored.revision, guard)
                .await?
            {
                Verdict::Kept => Ok(stored.revision),
                Verdict::Wiped => Err(Error::new(
                    if w.op == Op::Refresh {
                        ErrorKind::KeyNotFound
                    } else {
                        ErrorKind::RevisionMismatch
                    },
                    format!(
                        "{}: stored as revision {} as the base revision expired, and removed by \
                         its expiry marker right after: the key has expired",
                        w.context(),
                        stored.revision
                    ),
                )),
            }
        }
        .instrument(span)
        .await
    }

    /// What [`confirm_kept`](Self::confirm_kept) needs to know before an update or refresh.
    async fn guard_for(&self, w: &Write) -> Result<Option<Guard>, Error> {
        let (Some(expected), Op::Update | Op::Refresh) = (w.expected, w.op) else {
            return Ok(None);
        };
        let Some(b) = self
            .buckets
            .find(&w.bucket, &Deadline::after(self.retry_for))
            .await?
        else {
            return Ok(None);
        };
        self.expiry_guard(&b, &w.key, expected, w.base).await
    }

    async fn write_inner(&self, w: &Write, if_missing: IfMissing) -> Result<Stored, Error> {
        let deadline = Deadline::after(self.retry_for);
        let mut attempts = deadline.attempts();
        // Conditional writes are made idempotent: a retry is answered with the first
        // attempt's revision if that one was stored after all.
        let msg_id = w.expected.map(|_| self.unique_id());
        // Every attempt sends these same headers: checked once, before anything is sent.
        let headers = w.headers(msg_id.as_deref());
        self.check_limits(w, &headers)?;
        let mut recreated = false;
        // When the first attempt whose outcome is unknown (no answer) was sent.
        let mut unknown_since: Option<Instant> = None;
        let mut first_sent: Option<Instant> = None;
        loop {
            let b = match if_missing {
                IfMissing::CreateBucket => {
                    self.buckets
                        .find_or_create(
                            &self.buckets.config_for(&w.bucket, &self.defaults),
                            &deadline,
                        )
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
            let first_sent = *first_sent.get_or_insert(sent);
            let stored = |revision| Stored {
                revision,
                bucket: b.clone(),
                first_sent,
            };
            let failure = match publish_once(self, &b, w, headers.clone()).await {
                Outcome::Done(result) => {
                    return match result {
                        Err(e) if e.kind() == ErrorKind::RevisionMismatch => match unknown_since {
                            Some(since) => self
                                .after_lost_answer(w, msg_id.as_deref(), since, e, &deadline)
                                .await
                                .map(stored),
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
                        Ok(revision) => Ok(stored(revision)),
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
    /// attempt: was the earlier one stored? Its retries carry the same `Nats-Msg-Id`, and the
    /// server answers a retry of a stored write from its duplicate map — but the map forgets
    /// after the duplicate window, and a stream replica rebuilds it from the messages still
    /// stored when it recovers (restart, snapshot), where ours may be gone (history 1, a later
    /// write). So the stream leader's messages of the key are read first:
    ///
    /// - our message (same message id) is the key's last, or the first after the revision the
    ///   write was conditioned on: it was stored (its revision);
    /// - the base revision is still stored and the key's first message after it is someone
    ///   else's: ours was not stored, the conflict is real (`RevisionMismatch`) — had ours been
    ///   stored it would be that first message, and nothing after a stored message is removed
    ///   before it (a per-key TTL shorter than this check could, in a bucket keeping 3+
    ///   revisions);
    /// - otherwise the reading cannot tell (the base is gone — with history 1 any later write
    ///   removes it — or the write was a `create`): within the duplicate window the server's
    ///   map is believed (`RevisionMismatch`), after it the outcome is unknown (`TimedOut`).
    ///
    /// Never an `Ok` for a write not stored.
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
        let ours = |m: &Option<StreamMessage>| match (m, msg_id) {
            (Some(m), Some(id)) if m.headers.get(entry::MSG_ID).map(|v| v.as_str()) == Some(id) => {
                Some(m.sequence)
            }
            _ => None,
        };
        let last = self.last_message(&b, &w.key, ReadFrom::Leader).await?;
        if let Some(revision) = ours(&last) {
            debug!(revision, "an attempt whose answer was lost was stored");
            return Ok(revision);
        }
        let base = w.expected.unwrap_or_default();
        let after = self.first_message_from(&b, &w.key, base.saturating_add(1)).await?;
        if let Some(revision) = ours(&after) {
            debug!(
                revision,
                "an attempt whose answer was lost was stored, then overwritten"
            );
            return Ok(revision);
        }
        let base_stored = base > 0
            && self
                .message_at(&b, base)
                .await?
                .is_some_and(|m| m.subject.as_str() == b.subject(&w.key));
        if base_stored && after.is_some() {
            debug!("the conflict is real: the key's first message after the base is not ours");
            return Err(mismatch);
        }
        let window = b.stream.cached_info().config.duplicate_window;
        if since.elapsed() < window {
            // The retry was checked against the duplicate map, which would have known ours.
            return Err(mismatch);
        }
        Err(Error::with_source(
            ErrorKind::TimedOut,
            format!(
                "{}: an attempt got no answer and a retry {:?} later, after the bucket's \
                 duplicate window ({window:?}), lost its compare-and-set; no stored message of \
                 the key is ours and {}, so whether the first attempt was stored (and \
                 overwritten or expired since) is unknown (the key's last revision is now {})",
                w.context(),
                since.elapsed(),
                if base == 0 {
                    "a create has no base revision to check".to_owned()
                } else if base_stored {
                    format!("revision {base} is still the key's last")
                } else {
                    format!("revision {base} is no longer stored")
                },
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

    /// `TooLarge` for a write the server would refuse by closing the connection (every other
    /// user of it, watches and leases included, would blip and the write time out).
    fn check_limits(&self, w: &Write, headers: &HeaderMap) -> Result<(), Error> {
        let subject = crate::bucket::subject(&w.bucket, &w.key);
        let headers_len = natty_core::limits::headers_len(headers);
        self.client
            .limits()
            .check(&subject, headers_len, w.value.len())
            .map_err(|e| {
                let what = match e.limit_kind() {
                    natty_core::limits::LimitKind::MaxControlLine => "the key is too long",
                    _ => "the value is too large",
                };
                Error::new(
                    ErrorKind::TooLarge,
                    format!(
                        "{} key of {} bytes in bucket {:?}: {what}: {e}",
                        w.op,
                        w.key.len(),
                        w.bucket
                    ),
                )
            })
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

impl Write {
    /// The headers every attempt of this write carries (with `msg_id`, a conditional write's).
    fn headers(&self, msg_id: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(expected) = self.expected {
            headers.insert(
                entry::EXPECTED_LAST_SUBJECT_SEQUENCE,
                expected.to_string().as_str(),
            );
        }
        if let Some(ttl) = self.ttl {
            headers.insert(entry::TTL, ttl.header_value().as_str());
        }
        match self.marker {
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
        headers
    }
}

async fn publish_once(kv: &Kv, b: &Bucket, w: &Write, headers: HeaderMap) -> Outcome<u64> {
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
