//! natty-group's error kinds.

use std::fmt;

/// natty-group's error: branch on `kind()`.
pub type Error = natty_core::error::Error<ErrorKind>;

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration is out of range (no partitions, a TTL the election refuses). Nothing
    /// was sent.
    InvalidConfig,
    /// A group, stream, subject or key name broke a naming rule. Nothing was sent.
    InvalidName,
    /// A partition's durable could not be created or read (the server did not answer, a
    /// later term's durable exists).
    Stream,
    /// The stream does not exist (`join`: it was deleted and not re-created within the
    /// consume options' `consumer_gone_grace`).
    StreamNotFound,
    /// The NATS client is closed (drained or closed): nothing more can be done with it.
    Closed,
    /// The membership or lease bucket could not be set up.
    Kv,
    /// A partition's election could not run (a bucket TTL mismatch, bad names).
    Election,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidConfig => "invalid group configuration",
            Self::InvalidName => "invalid name",
            Self::Stream => "stream or consumer failure",
            Self::StreamNotFound => "stream not found",
            Self::Closed => "client closed",
            Self::Kv => "membership bucket failure",
            Self::Election => "partition election failure",
        })
    }
}

pub(crate) fn from_stream(e: natty_stream::Error) -> Error {
    e.map_kind(|k| match k {
        natty_stream::ErrorKind::InvalidName => ErrorKind::InvalidName,
        natty_stream::ErrorKind::InvalidConfig => ErrorKind::InvalidConfig,
        natty_stream::ErrorKind::StreamNotFound => ErrorKind::StreamNotFound,
        natty_stream::ErrorKind::Closed => ErrorKind::Closed,
        _ => ErrorKind::Stream,
    })
}

pub(crate) fn from_kv(e: natty_kv::Error) -> Error {
    e.map_kind(|k| match k {
        natty_kv::ErrorKind::InvalidName => ErrorKind::InvalidName,
        natty_kv::ErrorKind::InvalidConfig => ErrorKind::InvalidConfig,
        _ => ErrorKind::Kv,
    })
}

pub(crate) fn from_election(e: natty_election::Error) -> Error {
    e.map_kind(|k| match k {
        natty_election::ErrorKind::InvalidName => ErrorKind::InvalidName,
        natty_election::ErrorKind::InvalidConfig => ErrorKind::InvalidConfig,
        _ => ErrorKind::Election,
    })
}
