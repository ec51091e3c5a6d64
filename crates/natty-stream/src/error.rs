//! natty-stream's error kinds.

use std::fmt;

use async_nats::jetstream::context::PublishErrorKind;

/// natty-stream's error: branch on `kind()`.
pub type Error = natty_core::error::Error<ErrorKind>;

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A stream, consumer or subject name broke a naming rule. Nothing was sent.
    InvalidName,
    /// A configuration value is out of range. Nothing was sent.
    InvalidConfig,
    /// The stream does not exist.
    StreamNotFound,
    /// The durable consumer does not exist.
    ConsumerNotFound,
    /// No stream captures the subject published to.
    NoStreamForSubject,
    /// The stream or consumer exists with an incompatible configuration.
    ConfigMismatch,
    /// The server did not answer in time.
    TimedOut,
    /// The publisher was closed.
    Closed,
    /// The publisher's queue is full (`try_send`).
    Full,
    /// The server lacks a feature (fast ingest needs 2.14 and `allow_batched`).
    Unsupported,
    /// Anything else the server or client reported.
    Other,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidName => "invalid name",
            Self::InvalidConfig => "invalid configuration",
            Self::StreamNotFound => "stream not found",
            Self::ConsumerNotFound => "consumer not found",
            Self::NoStreamForSubject => "no stream captures the subject",
            Self::ConfigMismatch => "exists with another configuration",
            Self::TimedOut => "timed out",
            Self::Closed => "publisher closed",
            Self::Full => "publisher queue full",
            Self::Unsupported => "not supported by this server or stream",
            Self::Other => "failed",
        })
    }
}

pub(crate) fn from_core(err: natty_core::Error) -> Error {
    err.map_kind(|k| match k {
        natty_core::ErrorKind::InvalidName => ErrorKind::InvalidName,
        natty_core::ErrorKind::InvalidConfig => ErrorKind::InvalidConfig,
        natty_core::ErrorKind::TimedOut => ErrorKind::TimedOut,
        _ => ErrorKind::Other,
    })
}

pub(crate) fn from_publish(
    err: async_nats::jetstream::context::PublishError,
    context: String,
) -> Error {
    let kind = match err.kind() {
        PublishErrorKind::StreamNotFound => ErrorKind::NoStreamForSubject,
        PublishErrorKind::TimedOut => ErrorKind::TimedOut,
        _ => ErrorKind::Other,
    };
    Error::with_source(kind, context, err)
}

pub(crate) use natty_core::error::jetstream_code as server_code;

pub(crate) const STREAM_NOT_FOUND: u64 = 10059;
pub(crate) const CONSUMER_NOT_FOUND: u64 = 10014;
