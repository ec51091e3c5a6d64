//! Fenced writes: a leader's writes that the server itself refuses once it is deposed.
//!
//! A fenced write is one ADR-50 **atomic batch** to the election's bucket (its stream): the
//! leader's writes, then the lease key re-written conditioned on the revision this leader holds
//! (`Nats-Expected-Last-Subject-Sequence`). If anyone else wrote the lease key since — a new
//! leader, an expiry marker — the server refuses the whole batch; otherwise it stores all of
//! it, and the lease's re-write is a renew. The driver sends it as the machine's
//! [`Request::Fence`](crate::machine::Request::Fence), one lease request at a time, so a renew
//! never races it. The batch protocol is jetstream-extra's (`batch_publish`); nothing of it is
//! written here.
//!
//! Where the keys live: key `k` of the election on key `lease` is stored in the election's
//! bucket under `lease.fenced.k` ([`Election::fenced_key`](crate::Election::fenced_key)), so
//! any KV reader gets it with `Kv::get(bucket, "lease.fenced.k")`.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use jetstream_extra::batch_publish::{BatchPublishError, BatchPublishErrorKind, BatchPublishExt};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::{Error, ErrorKind, Leadership, Term};

/// The most writes one fenced transaction may carry (an atomic batch holds at most 1,000
/// messages; one of them is the lease).
pub const MAX_FENCED_WRITES: usize = 999;

/// The key that fenced key `key` of the election on `lease_key` is stored under.
pub(crate) fn fenced_key(lease_key: &str, key: &str) -> String {
    format!("{lease_key}.fenced.{key}")
}

/// The subject KV key `key` of `bucket` is stored under (natty-kv's layout, ADR-8).
fn kv_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}

/// One write of a fenced transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Put { key: String, value: Bytes },
    Delete { key: String },
}

impl Op {
    fn key(&self) -> &str {
        match self {
            Self::Put { key, .. } | Self::Delete { key } => key,
        }
    }

    fn size(&self) -> usize {
        match self {
            Self::Put { key, value } => key.len() + value.len(),
            Self::Delete { key } => key.len(),
        }
    }

    /// The KV message for this write (a delete is a `KV-Operation: DEL` marker).
    fn message(&self, bucket: &str, lease_key: &str) -> jetstream::message::OutboundMessage {
        let subject = kv_subject(bucket, &fenced_key(lease_key, self.key()));
        match self {
            Self::Put { value, .. } => PublishMessage::build()
                .payload(value.clone())
                .outbound_message(subject),
            Self::Delete { .. } => PublishMessage::build()
                .header("KV-Operation", "DEL")
                .outbound_message(subject),
        }
    }
}

/// A fenced write on its way to the driver, answered through `reply`.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) term: Term,
    pub(crate) ops: Vec<Op>,
    pub(crate) reply: oneshot::Sender<Result<(), Error>>,
}

impl Job {
    pub(crate) fn answer(self, result: Result<(), Error>) {
        // The caller may have stopped waiting (its future was dropped): nothing to tell.
        let _ = self.reply.send(result);
    }

    pub(crate) fn deposed(self, why: &str) {
        let term = self.term;
        self.answer(Err(deposed(term, why)));
    }
}

pub(crate) fn deposed(term: Term, why: &str) -> Error {
    Error::new(
        ErrorKind::Deposed,
        format!("fenced write of term {term}: {why}; nothing was written"),
    )
}

/// A fenced write whose outcome is unknown (all of it or none was applied).
pub(crate) fn unknown(term: Term, why: &str) -> Error {
    Error::new(
        ErrorKind::TimedOut,
        format!(
            "fenced write of term {term}: {why}; whether it was applied (all of it or none) is \
             unknown"
        ),
    )
}

/// Checks a transaction before anything is sent: keys, count, size.
pub(crate) fn check(ops: &[Op], lease_key: &str, max_payload: usize) -> Result<(), Error> {
    if ops.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidWrite,
            "a fenced transaction needs at least one write",
        ));
    }
    if ops.len() > MAX_FENCED_WRITES {
        return Err(Error::new(
            ErrorKind::InvalidWrite,
            format!(
                "a fenced transaction holds at most {MAX_FENCED_WRITES} writes, got {}",
                ops.len()
            ),
        ));
    }
    for op in ops {
        let stored = fenced_key(lease_key, op.key());
        natty_core::names::key(op.key())
            .and_then(|_| natty_core::names::key(&stored))
            .map_err(|e| {
                Error::new(
                    ErrorKind::InvalidName,
                    format!("fenced key {:?}: {e}", op.key()),
                )
            })?;
        if op.size() + stored.len() > max_payload {
            return Err(Error::new(
                ErrorKind::InvalidWrite,
                format!(
                    "fenced write of key {:?}: {} bytes, over the server's max payload of {max_payload}",
                    op.key(),
                    op.size()
                ),
            ));
        }
    }
    Ok(())
}

/// A fenced write as sent: the writes, then the lease re-written at `revision`.
pub(crate) struct Batch<'a> {
    pub(crate) bucket: &'a str,
    pub(crate) lease_key: &'a str,
    /// The lease key's new value.
    pub(crate) lease: Bytes,
    /// The lease revision this leader holds: the batch's condition.
    pub(crate) revision: u64,
    /// The lease's per-key TTL, if the bucket has per-key TTL.
    pub(crate) ttl: Option<Duration>,
    pub(crate) ops: &'a [Op],
}

impl Batch<'_> {
    /// Sends the batch, the lease last (the commit). Returns the lease key's new revision.
    pub(crate) async fn commit(
        self,
        js: &jetstream::Context,
        timeout: Duration,
    ) -> Result<u64, BatchPublishError> {
        // No flow-control ack on the first message: one round trip for the whole batch.
        let mut batch = js.batch_publish().ack_first(false).timeout(timeout).build();
        for op in self.ops {
            batch
                .add_message(op.message(self.bucket, self.lease_key))
                .await?;
        }
        let mut message = PublishMessage::build()
            .payload(self.lease)
            .expected_last_subject_sequence(self.revision);
        if let Some(ttl) = self.ttl {
            message = message.ttl(ttl);
        }
        let subject = kv_subject(self.bucket, self.lease_key);
        let ack = batch
            .commit_message(message.outbound_message(subject))
            .await?;
        // The lease is the batch's last message: its revision is the batch's sequence.
        Ok(ack.sequence)
    }
}

/// Whether the server refused the batch because the lease key moved on (its
/// expected-last-subject-sequence check failed).
pub(crate) fn is_refused(e: &BatchPublishError) -> bool {
    use natty_core::error::codes;
    matches!(
        natty_core::error::jetstream_code(e),
        Some(codes::WRONG_LAST_SEQUENCE | codes::WRONG_LAST_SEQUENCE_REPLICATED)
    )
}

/// Whether the bucket does not allow atomic batches (yet).
pub(crate) fn is_not_enabled(e: &BatchPublishError) -> bool {
    e.kind() == BatchPublishErrorKind::BatchPublishNotEnabled
}

/// Whether the batch may have been applied without our hearing of it: the commit's answer
/// did not come (a timeout, a lost connection). "No responders" is not that: nothing took it.
pub(crate) fn outcome_unknown(e: &BatchPublishError) -> bool {
    matches!(
        e.kind(),
        BatchPublishErrorKind::Request | BatchPublishErrorKind::Publish
    ) && !is_no_responders(e)
}

/// Whether nobody took the batch (no stream listens on the bucket's subjects: a 503).
pub(crate) fn is_no_responders(e: &BatchPublishError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<async_nats::RequestError>()
            .is_some_and(|r| r.kind() == async_nats::RequestErrorKind::NoResponders)
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// A fenced transaction: writes applied together with the lease check, all or none. Built
/// with [`Leadership::txn`].
///
/// ```no_run
/// # async fn example(leadership: natty_election::Leadership) -> Result<(), natty_election::Error> {
/// leadership
///     .txn()
///     .put("balance.alice", "90")
///     .put("balance.bob", "110")
///     .delete("pending.t-17")
///     .commit()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a transaction does nothing until committed"]
pub struct Txn {
    leadership: Leadership,
    ops: Vec<Op>,
}

impl Txn {
    /// Writes `value` to fenced key `key`.
    pub fn put(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.ops.push(Op::Put {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Deletes fenced key `key`.
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.ops.push(Op::Delete { key: key.into() });
        self
    }

    /// Applies every write, together with the lease check, or none of them. Errors:
    /// [`ErrorKind::Deposed`] (this node no longer leads in its term: nothing applied),
    /// [`ErrorKind::TimedOut`] (no answer: all or nothing was applied, which is unknown),
    /// [`ErrorKind::InvalidName`] / [`ErrorKind::InvalidWrite`] (nothing sent),
    /// [`ErrorKind::Unsupported`] (server older than 2.12).
    ///
    /// Writes go out one batch at a time, in the order they were committed (concurrent callers
    /// are queued). Dropping this future does not withdraw the write: once handed to the
    /// election it may still be applied.
    pub async fn commit(self) -> Result<(), Error> {
        self.leadership.fenced(self.ops).await
    }
}

/// Where the leader's work sends its fenced writes: the running election's driver.
pub(crate) type Sender = mpsc::UnboundedSender<Job>;

/// The driver's end of [`Sender`].
pub(crate) type Receiver = mpsc::UnboundedReceiver<Job>;

impl Leadership {
    /// Writes `value` to fenced key `key` — only while this node leads in this term, as
    /// judged by the server. A successful fenced write also renews the lease. Errors as
    /// for [`Txn::commit`].
    pub async fn put(&self, key: impl Into<String>, value: impl Into<Bytes>) -> Result<(), Error> {
        self.txn().put(key, value).commit().await
    }

    /// Deletes fenced key `key`, fenced as [`put`](Self::put).
    pub async fn delete(&self, key: impl Into<String>) -> Result<(), Error> {
        self.txn().delete(key).commit().await
    }

    /// A fenced transaction: several writes applied all or none, fenced as
    /// [`put`](Self::put).
    pub fn txn(&self) -> Txn {
        Txn {
            leadership: self.clone(),
            ops: Vec::new(),
        }
    }

    async fn fenced(&self, ops: Vec<Op>) -> Result<(), Error> {
        let span = tracing::debug_span!(
            "natty.election.fenced_write",
            term = %self.term,
            writes = ops.len()
        );
        self.send_fenced(ops).instrument(span).await
    }

    async fn send_fenced(&self, ops: Vec<Op>) -> Result<(), Error> {
        if self.lost.is_cancelled() {
            return Err(deposed(self.term, "leadership was lost"));
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            term: self.term,
            ops,
            reply,
        };
        if self.fences.send(job).is_err() {
            return Err(deposed(self.term, "the election has stopped"));
        }
        answer.await.unwrap_or_else(|_| {
            Err(unknown(
                self.term,
                "the election stopped with it queued or in flight",
            ))
        })
    }
}
