//! [`Error`]: one error for everything the facade does, keeping each crate's kind.

use std::fmt;

use crate::CloseError;

/// Any natty error: `?` turns each crate's error into it, so one function can mix KV, stream
/// and election calls. Each variant keeps its crate's error (and kind) whole; the accessors
/// ([`kv_kind`](Self::kv_kind), [`stream_kind`](Self::stream_kind), …) say what to branch on
/// without a `match`.
///
/// ```
/// # #[cfg(all(feature = "kv", feature = "stream"))]
/// async fn copy_setting(natty: &natty::Natty) -> Result<(), natty::Error> {
///     let value = natty.get("config", "feature.x").await?; // natty_kv::Error
///     if let Some(entry) = value {
///         natty.publish("audit.settings", entry.value).await?; // natty_stream::Error
///     }
///     natty.flush().await?; // natty_stream::FlushError
///     Ok(())
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Connecting, configuration or names (natty-core).
    Core(natty_core::Error),
    /// A key/value operation.
    #[cfg(feature = "kv")]
    Kv(natty_kv::Error),
    /// A stream operation (admin, publish, consume).
    #[cfg(feature = "stream")]
    Stream(natty_stream::Error),
    /// [`Natty::flush`](crate::Natty::flush): messages not stored.
    #[cfg(feature = "stream")]
    Flush(natty_stream::FlushError),
    /// An election.
    #[cfg(feature = "election")]
    Election(natty_election::Error),
    /// A consumer group (natty-group).
    #[cfg(feature = "group")]
    Group(natty_group::Error),
    /// [`Natty::close`](crate::Natty::close) or
    /// [`Natty::delete_publisher`](crate::Natty::delete_publisher).
    Close(CloseError),
}

impl Error {
    /// The natty-core kind, for a `Core` error.
    pub fn core_kind(&self) -> Option<natty_core::ErrorKind> {
        match self {
            Self::Core(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// The natty-kv kind, for a `Kv` error.
    #[cfg(feature = "kv")]
    pub fn kv_kind(&self) -> Option<natty_kv::ErrorKind> {
        match self {
            Self::Kv(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// The natty-stream kind, for a `Stream` error (or the publisher's own failure in a
    /// `Flush` or `Close` error).
    #[cfg(feature = "stream")]
    pub fn stream_kind(&self) -> Option<natty_stream::ErrorKind> {
        match self {
            Self::Stream(e) => Some(e.kind()),
            Self::Flush(e) => e.error.as_ref().map(natty_stream::Error::kind),
            Self::Close(CloseError::Publisher { error, .. }) => Some(error.kind()),
            _ => None,
        }
    }

    /// The natty-election kind, for an `Election` error.
    #[cfg(feature = "election")]
    pub fn election_kind(&self) -> Option<natty_election::ErrorKind> {
        match self {
            Self::Election(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// The natty-group kind, for a `Group` error.
    #[cfg(feature = "group")]
    pub fn group_kind(&self) -> Option<natty_group::ErrorKind> {
        match self {
            Self::Group(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// Whether the server did not answer in time (whichever crate reported it): the
    /// operation may or may not have happened, and retrying may help.
    pub fn is_timed_out(&self) -> bool {
        match self {
            Self::Core(e) => e.kind() == natty_core::ErrorKind::TimedOut,
            #[cfg(feature = "kv")]
            Self::Kv(e) => e.kind() == natty_kv::ErrorKind::TimedOut,
            #[cfg(feature = "stream")]
            Self::Stream(e) => e.kind() == natty_stream::ErrorKind::TimedOut,
            #[cfg(feature = "stream")]
            Self::Flush(_) => false,
            #[cfg(feature = "election")]
            Self::Election(e) => e.kind() == natty_election::ErrorKind::TimedOut,
            // The group reports what failed (stream, KV, election), not timeouts apart.
            #[cfg(feature = "group")]
            Self::Group(_) => false,
            Self::Close(_) => false,
        }
    }

    /// Whether the request was refused before anything was sent (a bad name or
    /// configuration, or a message or key the server would refuse as too large): fix the
    /// call, do not retry it.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            Self::Core(e) => matches!(
                e.kind(),
                natty_core::ErrorKind::InvalidName
                    | natty_core::ErrorKind::InvalidConfig
                    | natty_core::ErrorKind::TooLarge
            ),
            #[cfg(feature = "kv")]
            Self::Kv(e) => matches!(
                e.kind(),
                natty_kv::ErrorKind::InvalidName
                    | natty_kv::ErrorKind::InvalidConfig
                    | natty_kv::ErrorKind::TooLarge
            ),
            #[cfg(feature = "stream")]
            Self::Stream(e) => matches!(
                e.kind(),
                natty_stream::ErrorKind::InvalidName
                    | natty_stream::ErrorKind::InvalidConfig
                    | natty_stream::ErrorKind::TooLarge
            ),
            #[cfg(feature = "stream")]
            Self::Flush(_) => false,
            #[cfg(feature = "election")]
            Self::Election(e) => matches!(
                e.kind(),
                natty_election::ErrorKind::InvalidName | natty_election::ErrorKind::InvalidConfig
            ),
            #[cfg(feature = "group")]
            Self::Group(e) => matches!(
                e.kind(),
                natty_group::ErrorKind::InvalidName | natty_group::ErrorKind::InvalidConfig
            ),
            Self::Close(_) => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Core(e) => e.fmt(f),
            #[cfg(feature = "kv")]
            Self::Kv(e) => e.fmt(f),
            #[cfg(feature = "stream")]
            Self::Stream(e) => e.fmt(f),
            #[cfg(feature = "stream")]
            Self::Flush(e) => write!(f, "flushing the publisher: {e}"),
            #[cfg(feature = "election")]
            Self::Election(e) => e.fmt(f),
            #[cfg(feature = "group")]
            Self::Group(e) => e.fmt(f),
            Self::Close(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // Transparent: the wrapped error's own cause, so a report does not print it twice.
        match self {
            Self::Core(e) => std::error::Error::source(e),
            #[cfg(feature = "kv")]
            Self::Kv(e) => std::error::Error::source(e),
            #[cfg(feature = "stream")]
            Self::Stream(e) => std::error::Error::source(e),
            #[cfg(feature = "stream")]
            Self::Flush(e) => std::error::Error::source(e),
            #[cfg(feature = "election")]
            Self::Election(e) => std::error::Error::source(e),
            #[cfg(feature = "group")]
            Self::Group(e) => std::error::Error::source(e),
            Self::Close(e) => std::error::Error::source(e),
        }
    }
}

macro_rules! from {
    ($($(#[$cfg:meta])* $ty:ty => $variant:ident),* $(,)?) => {$(
        $(#[$cfg])*
        impl From<$ty> for Error {
            fn from(e: $ty) -> Self {
                Self::$variant(e)
            }
        }
    )*};
}

from!(
    natty_core::Error => Core,
    #[cfg(feature = "kv")] natty_kv::Error => Kv,
    #[cfg(feature = "stream")] natty_stream::Error => Stream,
    #[cfg(feature = "stream")] natty_stream::FlushError => Flush,
    #[cfg(feature = "election")] natty_election::Error => Election,
    #[cfg(feature = "group")] natty_group::Error => Group,
    CloseError => Close,
);

#[cfg(test)]
mod tests;
