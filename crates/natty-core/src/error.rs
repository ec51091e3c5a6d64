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

/// The JetStream API error code (e.g. 10071) in an async-nats error, if the server sent one.
///
/// async-nats carries it either as a `jetstream::Error` in the source chain or inside the
/// error's kind (e.g. `DeleteStreamErrorKind::JetStream(..)`), which no generic code can reach;
/// both print `error code NNNNN`, so the text is the fallback.
pub fn jetstream_code(err: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let mut source = Some(err);
    while let Some(cause) = source {
        if let Some(js) = cause.downcast_ref::<async_nats::jetstream::Error>() {
            return Some(js.error_code().0);
        }
        source = cause.source();
    }
    code_in_text(&err.to_string())
}

/// JetStream API error codes the natty crates branch on.
pub mod codes {
    /// Stream not found (HTTP-like code 404).
    pub const STREAM_NOT_FOUND: u64 = 10059;
    /// No message found (a message get by sequence or subject; code 404).
    pub const NO_MESSAGE_FOUND: u64 = 10037;
    /// Wrong last sequence, on an R1 stream.
    pub const WRONG_LAST_SEQUENCE: u64 = 10071;
    /// Wrong last sequence, on a replicated stream (checked before the raft proposal).
    pub const WRONG_LAST_SEQUENCE_REPLICATED: u64 = 10164;
    /// Invalid per-message TTL.
    pub const MESSAGE_TTL_INVALID: u64 = 10165;
    /// Per-message TTL is disabled on this stream.
    pub const MESSAGE_TTL_DISABLED: u64 = 10166;
    /// JetStream temporarily unavailable (code 503): no leader yet, try again.
    pub const TEMPORARILY_UNAVAILABLE: u64 = 10008;
}

/// Whether an async-nats error says the server could not serve the request *right now*: no
/// responders (status 503, e.g. a replicated stream between two leaders), a request timeout,
/// or a JetStream API error with code 503. Such a failure says nothing about whether the
/// stream exists: ask the stream info API before concluding it is gone.
pub fn is_transient(err: &(dyn std::error::Error + 'static)) -> bool {
    use async_nats::jetstream::context::RequestErrorKind as JsRequest;
    let mut source = Some(err);
    while let Some(cause) = source {
        if let Some(e) = cause.downcast_ref::<async_nats::jetstream::context::RequestError>()
            && matches!(e.kind(), JsRequest::NoResponders | JsRequest::TimedOut)
        {
            return true;
        }
        if let Some(e) = cause.downcast_ref::<async_nats::RequestError>()
            && matches!(
                e.kind(),
                async_nats::RequestErrorKind::NoResponders | async_nats::RequestErrorKind::TimedOut
            )
        {
            return true;
        }
        if let Some(js) = cause.downcast_ref::<async_nats::jetstream::Error>()
            && (js.code() == 503 || js.error_code().0 == codes::TEMPORARILY_UNAVAILABLE)
        {
            return true;
        }
        source = cause.source();
    }
    false
}

fn code_in_text(text: &str) -> Option<u64> {
    let (_, rest) = text.split_once("error code ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
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

#[cfg(test)]
mod tests {
    use super::code_in_text;

    #[test]
    fn error_codes_are_found_in_text() {
        assert_eq!(
            code_in_text("JetStream error: stream not found (code 404, error code 10059)"),
            Some(10059)
        );
        assert_eq!(
            code_in_text("wrong last sequence: 3 (error code 10164)"),
            Some(10164)
        );
        assert_eq!(code_in_text("timed out"), None);
    }
}
