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

/// What a handler answers when it could not process a message.
#[derive(Debug)]
pub enum HandlerError {
    /// Try again later: the message is nak'ed with a delay (the consumer's backoff by
    /// delivery count, or this delay) and redelivered, until `max_deliver` is reached.
    Retry {
        /// Why.
        reason: String,
        /// Redeliver after this long instead of the backoff.
        delay: Option<Duration>,
    },
    /// Never: the message is terminated (not redelivered) and sent to the dead-letter subject
    /// when one is configured.
    Permanent {
        /// Why.
        reason: String,
    },
}

impl HandlerError {
    /// A retryable failure.
    pub fn retry(reason: impl fmt::Display) -> Self {
        Self::Retry {
            reason: reason.to_string(),
            delay: None,
        }
    }

    /// A retryable failure, redelivered after `delay`.
    pub fn retry_after(reason: impl fmt::Display, delay: Duration) -> Self {
        Self::Retry {
            reason: reason.to_string(),
            delay: Some(delay),
        }
    }

    /// A permanent failure.
    pub fn permanent(reason: impl fmt::Display) -> Self {
        Self::Permanent {
            reason: reason.to_string(),
        }
    }

    /// The reason given.
    pub fn reason(&self) -> &str {
        match self {
            Self::Retry { reason, .. } | Self::Permanent { reason } => reason,
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Retry { reason, .. } => write!(f, "retryable: {reason}"),
            Self::Permanent { reason } => write!(f, "permanent: {reason}"),
        }
    }
}

impl std::error::Error for HandlerError {}
