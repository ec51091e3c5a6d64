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
/// error's kind (e.g. `GetStreamErrorKind::JetStream(..)`): both are looked for, by type, on
/// every error in the chain. Only for an async-nats error type not listed here is the code
/// read from the error's text (`error code NNNNN`), the last resort.
pub fn jetstream_code(err: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let mut source = Some(err);
    while let Some(cause) = source {
        if let Some(code) = code_of(cause) {
            return Some(code);
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

/// The code of one error (not its causes), by type.
fn code_of(e: &(dyn std::error::Error + 'static)) -> Option<u64> {
    use async_nats::jetstream::{context as c, stream as s};
    if let Some(js) = e.downcast_ref::<async_nats::jetstream::Error>() {
        return Some(js.error_code().0);
    }
    macro_rules! in_kind {
        ($($ty:ty => $kind:path),* $(,)?) => {$(
            if let Some(err) = e.downcast_ref::<$ty>() {
                return match err.kind() {
                    $kind(js) => Some(js.error_code().0),
                    _ => None,
                };
            }
        )*};
    }
    in_kind!(
        c::GetStreamError => c::GetStreamErrorKind::JetStream,
        c::GetStreamByNameError => c::GetStreamByNameErrorKind::JetStream,
        c::CreateStreamError => c::CreateStreamErrorKind::JetStream,
        c::ConsumerInfoError => c::ConsumerInfoErrorKind::JetStream,
        c::AccountError => c::AccountErrorKind::JetStream,
        s::ConsumerError => s::ConsumerErrorKind::JetStream,
        s::ConsumerUpdateError => s::ConsumerUpdateErrorKind::JetStream,
        s::ConsumerCreateStrictError => s::ConsumerCreateStrictErrorKind::JetStream,
        s::DeleteMessageError => s::DeleteMessageErrorKind::JetStream,
        s::PurgeError => s::PurgeErrorKind::JetStream,
        s::LastRawMessageError => s::LastRawMessageErrorKind::JetStream,
    );
    None
}

fn code_in_text(text: &str) -> Option<u64> {
    let (_, rest) = text.split_once("error code ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Whether an async-nats error is, anywhere in its chain, a request that timed out: decided on
/// the error kinds (`TimedOut`), never on the text.
pub fn timed_out(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if is_timeout(e) {
            return true;
        }
        source = e.source();
    }
    false
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    use async_nats::jetstream::{context as c, stream as s};
    macro_rules! timed_out_kind {
        ($($ty:ty => $kind:path),* $(,)?) => {$(
            if let Some(err) = e.downcast_ref::<$ty>() {
                return matches!(err.kind(), $kind);
            }
        )*};
    }
    timed_out_kind!(
        async_nats::RequestError => async_nats::RequestErrorKind::TimedOut,
        async_nats::ConnectError => async_nats::ConnectErrorKind::TimedOut,
        c::RequestError => c::RequestErrorKind::TimedOut,
        c::PublishError => c::PublishErrorKind::TimedOut,
        c::CreateStreamError => c::CreateStreamErrorKind::TimedOut,
        c::ConsumerInfoError => c::ConsumerInfoErrorKind::TimedOut,
        c::AccountError => c::AccountErrorKind::TimedOut,
        c::CreateKeyValueError => c::CreateKeyValueErrorKind::TimedOut,
        s::ConsumerError => s::ConsumerErrorKind::TimedOut,
        s::ConsumerUpdateError => s::ConsumerUpdateErrorKind::TimedOut,
        s::ConsumerCreateStrictError => s::ConsumerCreateStrictErrorKind::TimedOut,
        s::DirectGetError => s::DirectGetErrorKind::TimedOut,
        s::DeleteMessageError => s::DeleteMessageErrorKind::TimedOut,
        s::PurgeError => s::PurgeErrorKind::TimedOut,
    );
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        return io.kind() == std::io::ErrorKind::TimedOut;
    }
    false
}

/// What went wrong in natty-core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A subject, stream, consumer, bucket or key name broke a naming rule. Nothing was sent.
    InvalidName,
    /// A configuration value is out of range or contradicts another. Nothing was sent.
    InvalidConfig,
    /// A message is larger than the server takes (`max_payload`, headers included), or its
    /// subject longer than the server's control line allows (see [`crate::limits`]). Nothing
    /// was sent: the server would have closed the connection.
    TooLarge,
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
            Self::TooLarge => "too large for the server",
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
    use async_nats::jetstream::{context as c, stream as s};

    use super::{code_in_text, jetstream_code, timed_out};

    /// A JetStream API error as the server sends it.
    fn server_error(code: u64, description: &str) -> async_nats::jetstream::Error {
        let json = format!(r#"{{"code":400,"err_code":{code},"description":"{description}"}}"#);
        serde_json::from_str(&json).expect("a JetStream error")
    }

    #[test]
    fn timeouts_are_found_by_kind_not_by_text() {
        let timeouts: Vec<Box<dyn std::error::Error + Send + Sync>> = vec![
            Box::new(s::ConsumerError::new(s::ConsumerErrorKind::TimedOut)),
            Box::new(c::CreateStreamError::new(
                c::CreateStreamErrorKind::TimedOut,
            )),
            Box::new(c::GetStreamError::with_source(
                c::GetStreamErrorKind::Request,
                c::RequestError::new(c::RequestErrorKind::TimedOut),
            )),
            Box::new(c::PublishError::new(c::PublishErrorKind::TimedOut)),
        ];
        for e in &timeouts {
            assert!(timed_out(e.as_ref()), "{e}");
        }
        // A server error that merely says "timed out" is not a timeout of ours.
        let said = s::ConsumerError::new(s::ConsumerErrorKind::JetStream(server_error(
            10012,
            "timed out waiting for the meta leader",
        )));
        assert!(!timed_out(&said), "{said}");
        let other = c::GetStreamError::with_source(
            c::GetStreamErrorKind::Request,
            std::io::Error::other("request timed out"),
        );
        assert!(!timed_out(&other), "{other}");
    }

    #[test]
    fn codes_are_read_from_the_error_kind() {
        let e = s::ConsumerError::new(s::ConsumerErrorKind::JetStream(server_error(
            10148,
            "consumer already exists",
        )));
        assert_eq!(jetstream_code(&e), Some(10148));
        let e = c::GetStreamError::new(c::GetStreamErrorKind::JetStream(server_error(
            10059,
            "stream not found",
        )));
        assert_eq!(jetstream_code(&e), Some(10059));
        let e = s::ConsumerError::new(s::ConsumerErrorKind::TimedOut);
        assert_eq!(jetstream_code(&e), None);
    }

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
