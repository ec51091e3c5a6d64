//! natty-election's error kinds. Losing leadership is an event, not an error.

use std::fmt;

/// natty-election's error: branch on `kind()`.
pub type Error = natty_core::error::Error<ErrorKind>;

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration is unsafe or out of range (ttl < 1 s, renew interval not below
    /// ttl - margin). Nothing was sent.
    InvalidConfig,
    /// The bucket or key name broke a naming rule. Nothing was sent.
    InvalidName,
    /// The bucket exists with an entry TTL different from the election's, and the server
    /// lacks per-key TTL (Go natty's `ErrBucketTTLMismatch`).
    BucketTtlMismatch,
    /// `run` was called while this `Election` (or a clone of it) was already running.
    AlreadyRunning,
    /// The server did not answer in time while setting up; for a fenced write: no answer came,
    /// so whether it was applied is unknown (all of it or none of it was).
    TimedOut,
    /// A fenced write was refused: this node no longer leads in the write's term (another
    /// node took the lease, or leadership ended). None of it was applied.
    Deposed,
    /// The server lacks what the operation needs (fenced writes: atomic batches, 2.12+),
    /// named with the server's version. Nothing was applied.
    Unsupported,
    /// A fenced write that cannot be sent (empty, more than [`MAX_FENCED_WRITES`] writes, or
    /// larger than the server's max payload). Nothing was sent.
    ///
    /// [`MAX_FENCED_WRITES`]: crate::MAX_FENCED_WRITES
    InvalidWrite,
    /// Anything else the KV layer reported while setting up.
    Other,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidConfig => "invalid election configuration",
            Self::InvalidName => "invalid name",
            Self::BucketTtlMismatch => "bucket TTL does not match the election TTL",
            Self::AlreadyRunning => "election already running",
            Self::TimedOut => "timed out",
            Self::Deposed => "deposed: no longer the leader",
            Self::Unsupported => "not supported by this server",
            Self::InvalidWrite => "invalid fenced write",
            Self::Other => "failed",
        })
    }
}

pub(crate) fn from_kv(err: natty_kv::Error) -> Error {
    err.map_kind(|k| match k {
        natty_kv::ErrorKind::InvalidName => ErrorKind::InvalidName,
        natty_kv::ErrorKind::InvalidConfig => ErrorKind::InvalidConfig,
        natty_kv::ErrorKind::TimedOut => ErrorKind::TimedOut,
        natty_kv::ErrorKind::Unsupported => ErrorKind::Unsupported,
        _ => ErrorKind::Other,
    })
}
