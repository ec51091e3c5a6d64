//! Reading a key's last stored message, from any replica or from the stream leader.

use async_nats::jetstream::{
    message::StreamMessage,
    stream::{DirectGetErrorKind, LastRawMessageErrorKind},
};
use natty_core::error::{codes, is_transient};

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
    /// The stream leader (the message-get API): sees every acknowledged write. For reads that
    /// a write is based on.
    Leader,
}

/// Which message a read asks for.
#[derive(Debug, Clone, Copy)]
enum Target<'a> {
    /// The last message of a key.
    LastOf(&'a str),
    /// The message stored at a stream sequence (a revision), whatever its key.
    At(u64),
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

    async fn read(
        &self,
        b: &Bucket,
        target: Target<'_>,
        from: ReadFrom,
    ) -> Result<Option<StreamMessage>, Error> {
        let key = match target {
            Target::LastOf(key) => key.to_owned(),
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
            let outcome = if from == ReadFrom::AnyReplica && b.allow_direct {
                direct(b, target, key).await
            } else {
                leader(b, target, key).await
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

async fn direct(b: &Bucket, target: Target<'_>, key: &str) -> Outcome<Option<StreamMessage>> {
    let got = match target {
        Target::LastOf(k) => b.stream.direct_get_last_for_subject(b.subject(k)).await,
        Target::At(revision) => b.stream.direct_get(revision).await,
    };
    match got {
        Ok(m) => Outcome::Done(Ok(Some(m))),
        Err(e) => match e.kind() {
            DirectGetErrorKind::NotFound => Outcome::Done(Ok(None)),
            DirectGetErrorKind::ErrorResponse(status, _) if status.as_u16() == 503 => {
                Outcome::Unavailable(from_request(e, context(b, key)))
            }
            DirectGetErrorKind::TimedOut => Outcome::Retry(from_request(e, context(b, key))),
            _ if is_transient(&e) => Outcome::Retry(from_request(e, context(b, key))),
            _ => Outcome::Done(Err(from_request(e, context(b, key)))),
        },
    }
}

async fn leader(b: &Bucket, target: Target<'_>, key: &str) -> Outcome<Option<StreamMessage>> {
    let got = match target {
        Target::LastOf(k) => {
            b.stream
                .get_last_raw_message_by_subject(&b.subject(k))
                .await
        }
        Target::At(revision) => b.stream.get_raw_message(revision).await,
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
                _ if js.code() == 503 => Outcome::Retry(from_request(e, context(b, key))),
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
