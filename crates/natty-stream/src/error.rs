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
    /// The publisher's queue is full (`try_send`), or it holds as many failed messages as it
    /// may until they are taken.
    Full,
    /// The message is larger than the server takes (`max_payload`, headers included), or its
    /// subject longer than the server's control line allows. Nothing was sent: the server
    /// would have closed the connection every other user shares.
    TooLarge,
    /// The server lacks a feature (fast ingest needs 2.14 and `allow_batched`).
    Unsupported,
    /// The stream refused this message for what it is (over `max_msg_size`, headers too
    /// large, a failed `Nats-Expected-*` check, a sealed stream): retrying will not help.
    Rejected,
    /// A publisher's background task died (panicked): what it held is neither acknowledged
    /// nor handed back.
    Panicked,
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
            Self::StreamNotFound => "stream not found",
            Self::ConsumerNotFound => "consumer not found",
            Self::NoStreamForSubject => "no stream captures the subject",
            Self::ConfigMismatch => "exists with another configuration",
            Self::TimedOut => "timed out",
            Self::Closed => "publisher closed",
            Self::Full => "publisher queue full",
            Self::TooLarge => "too large for the server",
            Self::Unsupported => "not supported by this server or stream",
            Self::Rejected => "refused by the stream",
            Self::Panicked => "publisher task died",
            Self::Encode => "could not encode as JSON",
            Self::Decode => "could not decode the stored JSON",
            Self::Other => "failed",
        })
    }
}

pub(crate) fn from_core(err: natty_core::Error) -> Error {
    err.map_kind(|k| match k {
        natty_core::ErrorKind::InvalidName => ErrorKind::InvalidName,
        natty_core::ErrorKind::InvalidConfig => ErrorKind::InvalidConfig,
        natty_core::ErrorKind::TimedOut => ErrorKind::TimedOut,
        natty_core::ErrorKind::TooLarge => ErrorKind::TooLarge,
        _ => ErrorKind::Other,
    })
}

/// The error for a message the server would refuse (by closing the connection).
pub(crate) fn too_large(exceeded: natty_core::limits::Exceeded, what: &str) -> Error {
    Error::new(ErrorKind::TooLarge, format!("{what}: {exceeded}"))
}

pub(crate) fn from_publish(
    err: async_nats::jetstream::context::PublishError,
    context: String,
) -> Error {
    let kind = match err.kind() {
        PublishErrorKind::StreamNotFound => ErrorKind::NoStreamForSubject,
        PublishErrorKind::TimedOut => ErrorKind::TimedOut,
        PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
            ErrorKind::Rejected
        }
        _ if server_code(&err).is_some_and(permanent_code) => ErrorKind::Rejected,
        _ => ErrorKind::Other,
    };
    Error::with_source(kind, context, err)
}

pub(crate) use natty_core::error::jetstream_code as server_code;

/// JetStream error codes that refuse a publish for what the message is or expects, so no
/// retry can succeed: message too big (10054), headers too big (10097), wrong expected
/// stream (10060), sealed stream (10109), wrong last message id (10070), wrong last sequence
/// (10071 on R1, 10164 on replicated streams).
pub(crate) fn permanent_code(code: u64) -> bool {
    matches!(code, 10054 | 10097 | 10060 | 10109 | 10070 | 10071 | 10164)
}

pub(crate) const STREAM_NOT_FOUND: u64 = 10059;
pub(crate) const CONSUMER_NOT_FOUND: u64 = 10014;
