//! natty-kv's error kinds, and how server and client errors map onto them.

use std::fmt;

pub(crate) use natty_core::error::jetstream_code as server_code;

use async_nats::jetstream::{self, context::PublishErrorKind};
use natty_core::error::codes;

/// natty-kv's error: branch on [`Error::kind`](natty_core::error::Error::kind).
pub type Error = natty_core::error::Error<ErrorKind>;

/// What went wrong in a KV operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A bucket name or key broke a naming rule. Nothing was sent.
    InvalidName,
    /// A configuration value (TTL, history, replicas) is out of range. Nothing was sent.
    InvalidConfig,
    /// The bucket does not exist.
    BucketNotFound,
    /// `create_bucket` on a bucket that exists.
    BucketExists,
    /// The key does not exist (or was deleted, purged or expired).
    KeyNotFound,
    /// `create` on a key that exists.
    KeyExists,
    /// A compare-and-set lost: the key's revision is no longer the one expected
    /// (server error 10071 on R1 buckets, 10164 on replicated ones).
    RevisionMismatch,
    /// The bucket exists with a different configuration than the one asked for.
    BucketConfigMismatch,
    /// The server or bucket lacks a feature (per-key TTL needs server 2.11+ and a bucket with
    /// limit markers).
    Unsupported,
    /// The value is larger than the server takes (`max_payload`, headers included), or the
    /// key makes the subject `$KV.<bucket>.<key>` longer than the server's control line allows.
    /// Nothing was sent: the server would have closed the connection every other user shares.
    TooLarge,
    /// The server did not answer in time.
    TimedOut,
    /// A value could not be encoded as JSON (feature `serde`). Nothing was sent.
    Encode,
    /// A stored payload is not the JSON expected (feature `serde`); the error's source is a
    /// `DecodeError` carrying the subject or key and the raw bytes.
    Decode,
    /// Anything else the server or client reported.
    Other,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidName => "invalid name",
            Self::InvalidConfig => "invalid configuration",
            Self::BucketNotFound => "bucket not found",
            Self::BucketExists => "bucket already exists",
            Self::KeyNotFound => "key not found",
            Self::KeyExists => "key already exists",
            Self::RevisionMismatch => "revision mismatch (someone else wrote the key)",
            Self::BucketConfigMismatch => "bucket exists with another configuration",
            Self::Unsupported => "not supported by this server or bucket",
            Self::TooLarge => "too large for the server",
            Self::TimedOut => "timed out",
            Self::Encode => "could not encode as JSON",
            Self::Decode => "could not decode the stored JSON",
            Self::Other => "failed",
        })
    }
}

/// Our kind for a core error (name and config validation, mostly).
pub(crate) fn from_core(err: natty_core::Error) -> Error {
    err.map_kind(|k| match k {
        natty_core::ErrorKind::InvalidName => ErrorKind::InvalidName,
        natty_core::ErrorKind::InvalidConfig => ErrorKind::InvalidConfig,
        natty_core::ErrorKind::TimedOut => ErrorKind::TimedOut,
        natty_core::ErrorKind::TooLarge => ErrorKind::TooLarge,
        _ => ErrorKind::Other,
    })
}

/// Maps a publish (write) error. Both CAS codes are `RevisionMismatch`: async-nats maps only
/// 10071 to `WrongLastSequence` and returns 10164 as `Other`. async-nats' `StreamNotFound` is
/// a 503 / no responders, which does not say the bucket is gone (the write path asks the
/// stream info API); only the server's 10059 does.
pub(crate) fn from_publish(err: jetstream::context::PublishError, context: String) -> Error {
    let kind = match err.kind() {
        PublishErrorKind::WrongLastSequence => ErrorKind::RevisionMismatch,
        PublishErrorKind::TimedOut => ErrorKind::TimedOut,
        _ => match server_code(&err) {
            Some(codes::WRONG_LAST_SEQUENCE | codes::WRONG_LAST_SEQUENCE_REPLICATED) => {
                ErrorKind::RevisionMismatch
            }
            Some(codes::STREAM_NOT_FOUND) => ErrorKind::BucketNotFound,
            Some(codes::MESSAGE_TTL_DISABLED) => ErrorKind::Unsupported,
            Some(codes::MESSAGE_TTL_INVALID) => ErrorKind::InvalidConfig,
            _ => ErrorKind::Other,
        },
    };
    Error::with_source(kind, context, err)
}

/// Whether a client error is, somewhere in its chain, a request that timed out.
fn timed_out(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(cause) = source {
        if let Some(e) = cause.downcast_ref::<jetstream::context::RequestError>()
            && e.kind() == jetstream::context::RequestErrorKind::TimedOut
        {
            return true;
        }
        if let Some(e) = cause.downcast_ref::<async_nats::RequestError>()
            && e.kind() == async_nats::RequestErrorKind::TimedOut
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Maps any other request error: a missing stream is `BucketNotFound`, a timeout `TimedOut`.
pub(crate) fn from_request<E>(err: E, context: String) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    let kind = if timed_out(&err) {
        ErrorKind::TimedOut
    } else if server_code(&err) == Some(codes::STREAM_NOT_FOUND) {
        ErrorKind::BucketNotFound
    } else {
        ErrorKind::Other
    };
    Error::with_source(kind, context, err)
}
