//! The error shape every natty crate shares: a kind to branch on, a sentence of context that
//! says what was attempted on what, and the underlying cause.
//!
//! Each crate defines its own non-exhaustive `ErrorKind` and aliases
//! `pub type Error = natty_core::error::Error<ErrorKind>;` (the async-nats `Error<Kind>` shape).

use std::fmt;

/// A boxed error used as the cause of a natty error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error of kind `K`, with context and an optional cause.
pub struct Error<K> {
    kind: K,
    context: String,
    source: Option<BoxError>,
}

impl<K: Copy + fmt::Display> Error<K> {
    /// An error of `kind` with a sentence saying what was attempted, on what.
    pub fn new(kind: K, context: impl Into<String>) -> Self {
        Self {
            kind,
            context: context.into(),
            source: None,
        }
    }

    /// An error of `kind` caused by `source`.
    pub fn with_source(kind: K, context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// What kind of failure this is: the thing to branch on.
    pub fn kind(&self) -> K {
        self.kind
    }

    /// What was attempted, on what.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The same error seen as another crate's kind (used when one natty crate passes on another's
    /// error), keeping its context and cause.
    pub fn map_kind<L: Copy + fmt::Display>(self, f: impl FnOnce(K) -> L) -> Error<L> {
        Error {
            kind: f(self.kind),
            context: self.context,
            source: self.source,
        }
    }

    /// The cause, for downcasting.
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }
}

impl<K: fmt::Display> fmt::Display for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.kind)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl<K: fmt::Debug> fmt::Debug for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("context", &self.context)
            .field("source", &self.source)
            .finish()
    }
}

impl<K: fmt::Debug + fmt::Display> std::error::Error for Error<K> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// What went wrong in natty-core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A subject, stream, consumer, bucket or key name broke a naming rule. Nothing was sent.
    InvalidName,
    /// A configuration value is out of range or contradicts another. Nothing was sent.
    InvalidConfig,
    /// Every server refused the TCP connection (nothing listening).
    Refused,
    /// The TLS handshake failed (unknown CA, bad certificate, TLS required on one side only).
    Tls,
    /// The server rejected the credentials.
    Auth,
    /// The server did not answer in time.
    TimedOut,
    /// Connecting failed for some other reason (DNS, I/O, protocol).
    Connect,
    /// A file (CA, certificate, key, credentials) could not be read or parsed.
    Io,
    /// Anything else the server or client reported.
    Other,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidName => "invalid name",
            Self::InvalidConfig => "invalid configuration",
            Self::Refused => "connection refused",
            Self::Tls => "TLS handshake failed",
            Self::Auth => "authentication failed",
            Self::TimedOut => "timed out",
            Self::Connect => "could not connect",
            Self::Io => "could not read file",
            Self::Other => "failed",
        })
    }
}
