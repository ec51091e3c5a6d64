//! [`Message`] (what a handler gets) and [`HandlerError`] (what it may answer).

use std::{
    fmt,
    time::{Duration, SystemTime},
};

use bytes::Bytes;

/// A message delivered by a durable consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// The subject it was published to.
    pub subject: String,
    /// The payload.
    pub payload: Bytes,
    /// Headers, in order (a name may repeat).
    pub headers: Vec<(String, String)>,
    /// How many times it has been delivered, this time included (1 = first delivery).
    pub delivered: u64,
    /// Its sequence in the stream.
    pub stream_sequence: u64,
    /// Its sequence for this consumer.
    pub consumer_sequence: u64,
    /// When the stream stored it (server clock).
    pub published: SystemTime,
    /// Messages still pending for the consumer after this one.
    pub pending: u64,
    /// The stream.
    pub stream: String,
    /// The durable consumer.
    pub consumer: String,
}

impl Message {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn from_jetstream(m: &async_nats::jetstream::Message) -> Self {
        let headers = m
            .headers
            .as_ref()
            .map(|h| {
                h.iter()
                    .flat_map(|(k, vs)| {
                        vs.iter()
                            .map(move |v| (k.to_string(), v.as_str().to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (delivered, stream_sequence, consumer_sequence, published, pending, stream, consumer) =
            match m.info() {
                Ok(i) => (
                    u64::try_from(i.delivered).unwrap_or(1),
                    i.stream_sequence,
                    i.consumer_sequence,
                    SystemTime::from(i.published),
                    i.pending,
                    i.stream.to_owned(),
                    i.consumer.to_owned(),
                ),
                Err(_) => (
                    1,
                    0,
                    0,
                    SystemTime::UNIX_EPOCH,
                    0,
                    String::new(),
                    String::new(),
                ),
            };
        Self {
            subject: m.subject.to_string(),
            payload: m.payload.clone(),
            headers,
            delivered,
            stream_sequence,
            consumer_sequence,
            published,
            pending,
            stream,
            consumer,
        }
    }
}

/// A boxed error, the cause a [`HandlerError`] may carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a handler answers when it could not process a message.
///
/// Any error converts into a retryable one, so `?` works in handlers:
///
/// ```
/// # use natty_stream::{HandlerError, Message};
/// async fn handle(m: Message) -> Result<(), HandlerError> {
///     let text = std::str::from_utf8(&m.payload)?; // a retry; its cause is kept
///     let n: u64 = text
///         .parse()
///         .map_err(|e| HandlerError::permanent(format!("not a number: {e}")))?;
///     # let _ = n;
///     Ok(())
/// }
/// ```
///
/// Like `anyhow::Error`, it does not implement `std::error::Error` itself (that would make the
/// blanket conversion overlap with `From<T> for T`); [`ConsumeError`](crate::ConsumeError) does,
/// with the handler's cause as its `source()`.
#[derive(Debug)]
pub struct HandlerError {
    permanent: bool,
    reason: String,
    delay: Option<Duration>,
    source: Option<BoxError>,
}

impl HandlerError {
    /// A retryable failure: the message is nak'ed with a delay growing with its failure
    /// count and redelivered, until its handler failed the consumer's `max_deliver` times.
    pub fn retry(reason: impl fmt::Display) -> Self {
        Self {
            permanent: false,
            reason: reason.to_string(),
            delay: None,
            source: None,
        }
    }

    /// A retryable failure, redelivered after `delay` instead of the growing delay (at most
    /// 24 hours: a longer delay is clamped).
    pub fn retry_after(reason: impl fmt::Display, delay: Duration) -> Self {
        Self {
            delay: Some(delay),
            ..Self::retry(reason)
        }
    }

    /// A permanent failure: the message is dead-lettered (when a dead-letter subject is
    /// configured) and terminated, never redelivered.
    pub fn permanent(reason: impl fmt::Display) -> Self {
        Self {
            permanent: true,
            ..Self::retry(reason)
        }
    }

    /// The same failure, with `source` as its cause.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The reason given.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Whether the message is given up on at once.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// For a retryable failure, `Some(delay asked for, if any)`; `None` for a permanent one.
    pub fn retry_delay(&self) -> Option<Option<Duration>> {
        (!self.permanent).then_some(self.delay)
    }

    /// The underlying error, if any.
    pub fn source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }
}

/// Any error (or a `String`/`&str`) becomes a retryable failure with it as its cause.
impl<E: Into<BoxError>> From<E> for HandlerError {
    fn from(e: E) -> Self {
        let source: BoxError = e.into();
        Self::retry(&source).with_source(source)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.permanent {
            "permanent"
        } else {
            "retryable"
        };
        write!(f, "{kind}: {}", self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<u64, HandlerError> {
        Ok(text.parse::<u64>()?)
    }

    #[test]
    fn question_mark_turns_any_error_into_a_retry_with_its_cause() {
        let e = parse("x").unwrap_err();
        assert_eq!(e.retry_delay(), Some(None));
        assert!(e.source().is_some());
        assert_eq!(e.to_string(), "retryable: invalid digit found in string");
        let e: HandlerError = "plain text".into();
        assert_eq!(e.reason(), "plain text");
        assert!(HandlerError::permanent("no").is_permanent());
        assert_eq!(HandlerError::permanent("no").retry_delay(), None);
    }
}
