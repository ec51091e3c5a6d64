//! Reading a key's last stored message: from any replica, from any replica that is not behind
//! a known revision (read-after-write), or from the stream leader.
//!
//! Read-after-write: a read that must not be older than revision `min` asks any replica (direct
//! get) and accepts its answer only if the message it returns is at `min` or later: a replica
//! that holds such a message has applied `min`. Any other answer ("no such key", an older
//! message) may come from a replica that lags, so the stream leader answers instead. The
//! request also carries `min_last_seq` (the ADR "JetStream Read-after-Write"): nats-server 2.12
//! removed it again before its release (nats-server#7285) and 2.12 to 2.15 ignore it, so the
//! check above is what guarantees the floor; a server that implements it lets a lagging
//! follower redirect the request to the leader itself, or answers `412` (retried).

use async_nats::{
    StatusCode,
    jetstream::{message::StreamMessage, stream::LastRawMessageErrorKind},
};
use bytes::Bytes;
use natty_core::error::{codes, is_transient};
use tracing::debug;

use crate::{
    Error, ErrorKind, Kv,
    bucket::Bucket,
    error::from_request,
    retry::{Deadline, Outcome},
};

/// Who answers a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadFrom {
    /// Any replica (direct get, when the bucket allows it): fast, spreads the load, but a
    /// follower may not have applied the latest write yet.
    AnyReplica,
    /// Any replica that has applied this revision (stream sequence), else the stream leader:
    /// never older than that revision, and as fast as [`AnyReplica`](Self::AnyReplica) when
    /// the replica asked is not behind.
    AtLeast(u64),
    /// The stream leader (the message-get API): sees every acknowledged write. For reads that
    /// a write is based on.
    Leader,
}

impl ReadFrom {
    /// `AtLeast(floor)`, or `AnyReplica` without a floor.
    pub(crate) fn at_least(floor: Option<u64>) -> Self {
        floor.map_or(Self::AnyReplica, Self::AtLeast)
    }
}

/// Which message a read asks for.
#[derive(Debug, Clone, Copy)]
enum Target<'a> {
    /// The last message of a key.
    LastOf(&'a str),
    /// The message stored at a stream sequence (a revision), whatever its key.
    At(u64),
    /// The first message of a key at or after a stream sequence.
    FirstOf(&'a str, u64),
}

impl Kv {
    /// The last stored message of a key (a value or a delete/purge/expiry marker); `None` when
    /// the key has none. `BucketNotFound` only when the stream info API says so.
    pub(crate) async fn last_message(
        &self,
        b: &Bucket,
        key: &str,
        from: ReadFrom,
    ) -> Result<Option<StreamMessage>, Error> {
        self.read(b, Target::LastOf(key), from).await
    }

    /// The message stored at `revision`, asked of the stream leader.
    pub(crate) async fn message_at(
        &self,
        b: &Bucket,
        revision: u64,
    ) -> Result<Option<StreamMessage>, Error> {
        self.read(b, Target::At(revision), ReadFrom::Leader).await
    }

    /// The first message of `key` stored at `revision` or later, asked of the stream leader.
    pub(crate) async fn first_message_from(
        &self,
        b: &Bucket,
        key: &str,
        revision: u64,
    ) -> Result<Option<StreamMessage>, Error> {
        self.read(b, Target::FirstOf(key, revision), ReadFrom::Leader)
            .await
    }

    /// The message stored at `revision`, from any replica that has it (a message at a
    /// sequence never changes), else from the stream leader.
    pub(crate) async fn stored_at(
        &self,
        b: &Bucket,
        revision: u64,
    ) -> Result<Option<StreamMessage>, Error> {
        self.read(b, Target::At(revision), ReadFrom::AtLeast(revision))
            .await
    }

    async fn read(
        &self,
        b: &Bucket,
        target: Target<'_>,
        from: ReadFrom,
    ) -> Result<Option<StreamMessage>, Error> {
        let key = match target {
            Target::LastOf(key) | Target::FirstOf(key, _) => key.to_owned(),
            Target::At(revision) => format!("at revision {revision}"),
        };
        let key = key.as_str();
        let deadline = Deadline::after(self.retry_for);
        let mut attempts = deadline.attempts();
        // The bucket as last seen: a 503 makes us look it up, and it may have been
        // re-configured (without direct get) or re-created since it was cached.
        let mut b = b.clone();
        loop {
            let b = &mut b;
            let outcome = match from {
                ReadFrom::AnyReplica if b.allow_direct => direct(self, b, target, key, None).await,
                ReadFrom::AtLeast(min) if b.allow_direct => {
                    match direct(self, b, target, key, Some(min)).await {
                        Outcome::Done(Ok(Some(m))) if m.sequence >= min => {
                            Outcome::Done(Ok(Some(m)))
                        }
                        // Nothing at `min` or later: the replica may lag behind it.
                        Outcome::Done(Ok(found)) => {
                            debug!(
                                min,
                                found = ?found.map(|m| m.sequence),
                                "the replica's answer is older than the floor; asking the \
                                 stream leader"
                            );
                            leader(b, target, key).await
                        }
                        other => other,
                    }
                }
                _ => leader(b, target, key).await,
            };
            let failure = match outcome {
                Outcome::Done(result) => {
                    if let Err(e) = &result
                        && e.kind() == ErrorKind::BucketNotFound
                    {
                        self.buckets.evict(&b.name);
                    }
                    return result;
                }
                Outcome::Retry(e) => e,
                Outcome::Unavailable(e) => match self.buckets.lookup_once(&b.name).await {
                    Outcome::Done(Ok(None)) => {
                        return Err(Error::with_source(
                            ErrorKind::BucketNotFound,
                            context(b, key),
                            e,
                        ));
                    }
                    Outcome::Done(Err(lookup)) => return Err(lookup),
                    found => {
                        if let Outcome::Done(Ok(Some(fresh))) = found {
                            *b = fresh;
                        }
                        Error::with_source(
                            ErrorKind::TimedOut,
                            format!(
                                "{}: no replica answered (no stream leader) until the deadline \
                                 ({:?})",
                                context(b, key),
                                self.retry_for
                            ),
                            e,
                        )
                    }
                },
            };
            if !attempts.pause(&failure).await {
                return Err(failure);
            }
        }
    }
}

fn context(b: &Bucket, key: &str) -> String {
    format!("reading key {key:?} in bucket {:?}", b.name)
}

/// A direct get (answered by any replica), sent by hand: async-nats 0.48 cannot add
/// `min_last_seq` to the request.
async fn direct(
    kv: &Kv,
    b: &Bucket,
    target: Target<'_>,
    key: &str,
    min_last_seq: Option<u64>,
) -> Outcome<Option<StreamMessage>> {
    let prefix = kv.client.jetstream_api_prefix();
    let stream = crate::bucket::stream_name(&b.name);
    // Only servers that know the request field get it (2.12+); the others would parse it as
    // unknown and ignore it, but there is nothing to gain.
    let min_last_seq =
        min_last_seq.filter(|_| kv.client.supports(natty_core::Feature::AtomicBatch));
    let (subject, body) = match target {
        // With a floor, the request form that takes a body on every server version (the
        // `DIRECT.GET.<stream>.<subject>` form may refuse one: "expects no payload"). A KV
        // subject needs no JSON escaping (key characters are `-/_=.` and alphanumerics).
        Target::LastOf(k) => match min_last_seq {
            Some(min) => (
                format!("{prefix}.DIRECT.GET.{stream}"),
                format!(
                    r#"{{"last_by_subj":"{}","min_last_seq":{min}}}"#,
                    b.subject(k)
                ),
            ),
            None => (
                format!("{prefix}.DIRECT.GET.{stream}.{}", b.subject(k)),
                String::new(),
            ),
        },
        Target::At(revision) => (
            format!("{prefix}.DIRECT.GET.{stream}"),
            match min_last_seq {
                Some(min) => format!(r#"{{"seq":{revision},"min_last_seq":{min}}}"#),
                None => format!(r#"{{"seq":{revision}}}"#),
            },
        ),
        // Keys are validated: no character of theirs needs escaping in JSON.
        Target::FirstOf(k, revision) => (
            format!("{prefix}.DIRECT.GET.{stream}"),
            match min_last_seq {
                Some(min) => format!(
                    r#"{{"seq":{revision},"next_by_subj":"{}","min_last_seq":{min}}}"#,
                    b.subject(k)
                ),
                None => format!(r#"{{"seq":{revision},"next_by_subj":"{}"}}"#, b.subject(k)),
            },
        ),
    };
    let request = kv.client.nats().request(subject, Bytes::from(body));
    let reply = match tokio::time::timeout(kv.client.request_timeout(), request).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => {
            return match e.kind() {
                async_nats::RequestErrorKind::NoResponders => {
                    Outcome::Unavailable(from_request(e, context(b, key)))
                }
                async_nats::RequestErrorKind::TimedOut => {
                    Outcome::Retry(from_request(e, context(b, key)))
                }
                async_nats::RequestErrorKind::InvalidSubject
                | async_nats::RequestErrorKind::Other => {
                    Outcome::Done(Err(from_request(e, context(b, key))))
                }
            };
        }
        Err(_) => {
            return Outcome::Retry(Error::new(
                ErrorKind::TimedOut,
                format!(
                    "{}: no answer within {:?}",
                    context(b, key),
                    kv.client.request_timeout()
                ),
            ));
        }
    };
    match reply.status {
        None | Some(StatusCode::OK) => match StreamMessage::try_from(reply) {
            Ok(m) => Outcome::Done(Ok(Some(m))),
            Err(e) => Outcome::Done(Err(Error::with_source(
                ErrorKind::Other,
                format!("{}: unreadable direct get reply", context(b, key)),
                e,
            ))),
        },
        Some(StatusCode::NOT_FOUND) => Outcome::Done(Ok(None)),
        Some(StatusCode::NO_RESPONDERS) => Outcome::Unavailable(Error::new(
            ErrorKind::TimedOut,
            format!("{}: no responders", context(b, key)),
        )),
        // A replica (a mirror, or a deposed leader) that has not reached `min_last_seq`.
        Some(status) if status.as_u16() == MIN_LAST_SEQUENCE => Outcome::Retry(Error::new(
            ErrorKind::TimedOut,
            format!(
                "{}: the replica asked is behind the revision the read needs ({})",
                context(b, key),
                reply.description.as_deref().unwrap_or("412")
            ),
        )),
        Some(status) => Outcome::Done(Err(Error::new(
            ErrorKind::Other,
            format!(
                "{}: direct get answered {status} {}",
                context(b, key),
                reply.description.as_deref().unwrap_or_default()
            ),
        ))),
    }
}

/// The status of a direct get that a replica behind `min_last_seq` answers (nats-server with
/// read-after-write); the message-get API answers error code 10180 with the same status.
const MIN_LAST_SEQUENCE: u16 = 412;

async fn leader(b: &Bucket, target: Target<'_>, key: &str) -> Outcome<Option<StreamMessage>> {
    let got = match target {
        Target::LastOf(k) => {
            b.stream
                .get_last_raw_message_by_subject(&b.subject(k))
                .await
        }
        Target::At(revision) => b.stream.get_raw_message(revision).await,
        Target::FirstOf(k, revision) => {
            b.stream
                .raw_message_builder()
                .sequence(revision)
                .next_by_subject(b.subject(k))
                .send()
                .await
        }
    };
    match got {
        Ok(m) => Outcome::Done(Ok(Some(m))),
        Err(e) => match e.kind() {
            LastRawMessageErrorKind::NoMessageFound => Outcome::Done(Ok(None)),
            LastRawMessageErrorKind::JetStream(js) => match js.error_code().0 {
                codes::NO_MESSAGE_FOUND => Outcome::Done(Ok(None)),
                // A 404 can also be the stream's: that is a missing bucket, not a missing key.
                codes::STREAM_NOT_FOUND => Outcome::Done(Err(Error::with_source(
                    ErrorKind::BucketNotFound,
                    context(b, key),
                    e,
                ))),
                codes::TEMPORARILY_UNAVAILABLE => Outcome::Retry(from_request(e, context(b, key))),
                _ if js.code() == 503 || js.code() == usize::from(MIN_LAST_SEQUENCE) => {
                    Outcome::Retry(from_request(e, context(b, key)))
                }
                _ => Outcome::Done(Err(from_request(e, context(b, key)))),
            },
            _ if is_transient(&e) => Outcome::Retry(from_request(e, context(b, key))),
            _ => Outcome::Done(Err(from_request(e, context(b, key)))),
        },
    }
}

/// `KeyNotFound` for an operation on a key that has no value.
pub(crate) fn key_not_found(bucket: &str, key: &str, op: &str) -> Error {
    Error::new(
        ErrorKind::KeyNotFound,
        format!("{op} key {key:?} in bucket {bucket:?}"),
    )
}
