//! [`Publisher`]: one message at a time, acknowledged by the stream.

use async_nats::HeaderMap;
use bytes::Bytes;
use natty_core::{Client, names};
use tracing::{Instrument, debug, info_span};

use crate::{
    Error, ErrorKind,
    error::{from_core, from_publish, too_large},
};

/// The stream's acknowledgement of a stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishAck {
    /// The stream that stored it.
    pub stream: String,
    /// Its sequence in the stream.
    pub sequence: u64,
    /// The stream had already stored a message with this `Nats-Msg-Id` (within its duplicate
    /// window): this one was dropped, the earlier one stands.
    pub duplicate: bool,
}

impl From<async_nats::jetstream::publish::PublishAck> for PublishAck {
    fn from(a: async_nats::jetstream::publish::PublishAck) -> Self {
        Self {
            stream: a.stream,
            sequence: a.sequence,
            duplicate: a.duplicate,
        }
    }
}

/// Headers and de-duplication id for one publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishOptions {
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// `Nats-Msg-Id`: a retry with the same id within the stream's duplicate window is stored
    /// once.
    pub msg_id: Option<String>,
}

impl PublishOptions {
    /// With a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// With a message id.
    #[must_use]
    pub fn msg_id(mut self, id: impl Into<String>) -> Self {
        self.msg_id = Some(id.into());
        self
    }

    /// Checks header names and values before anything is sent (async-nats panics on a name
    /// with control characters or `:`, or a value with CR/LF).
    pub fn validate(&self) -> Result<(), Error> {
        for (name, value) in &self.headers {
            if name.is_empty() || name.contains(|c: char| c == ':' || !(c.is_ascii_graphic())) {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!("header name {name:?}: must be printable ASCII without spaces or ':'"),
                ));
            }
            if value.contains(['\r', '\n']) {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!("header {name:?} value {value:?}: must not contain CR or LF"),
                ));
            }
        }
        if let Some(id) = &self.msg_id
            && (id.is_empty() || id.contains(['\r', '\n']))
        {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("message id {id:?}: must be non-empty and without CR or LF"),
            ));
        }
        Ok(())
    }

    pub(crate) fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in &self.headers {
            map.append(k.as_str(), v.as_str());
        }
        if let Some(id) = &self.msg_id {
            map.insert("Nats-Msg-Id", id.as_str());
        }
        map
    }
}

/// Publishes single messages and waits for the stream's ack.
#[derive(Debug, Clone)]
pub struct Publisher {
    client: Client,
}

impl Publisher {
    /// A publisher on `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// Publishes `payload` to `subject`; `NoStreamForSubject` when no stream captures it;
    /// `TooLarge` at once, nothing sent, for a message the server would refuse by closing the
    /// connection (headers and payload over its `max_payload`, or a subject longer than its
    /// control line allows).
    pub async fn publish(&self, subject: &str, payload: Bytes) -> Result<PublishAck, Error> {
        self.publish_with(subject, payload, &PublishOptions::default())
            .await
    }

    /// Publishes with headers and/or a message id.
    pub async fn publish_with(
        &self,
        subject: &str,
        payload: Bytes,
        options: &PublishOptions,
    ) -> Result<PublishAck, Error> {
        names::subject(subject).map_err(from_core)?;
        options.validate()?;
        let span = info_span!(
            "natty.stream.publish",
            subject,
            bytes = payload.len(),
            otel.name = %format_args!("send {subject}"),
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.operation.type = "send",
            messaging.destination.name = subject,
        );
        #[cfg_attr(not(feature = "otel"), allow(unused_mut))]
        let mut headers = options.header_map();
        #[cfg(feature = "otel")]
        crate::trace::inject_headers(&span, &mut headers);
        // What the server would refuse by closing the connection (every user of it) is
        // refused here, before anything is sent.
        let headers_len = natty_core::limits::headers_len(&headers);
        self.client
            .limits()
            .check(subject, headers_len, payload.len())
            .map_err(|e| too_large(e, "publishing"))?;
        async {
            let context = || format!("publishing to {subject:?}");
            let timer = crate::obs::Timer::start();
            let single = crate::obs::Via::Single;
            let ack = async {
                self.client
                    .jetstream()
                    .publish_with_headers(subject.to_owned(), headers, payload)
                    .await?
                    .await
            }
            .await
            .map_err(|e| {
                // The stream is only known from an ack: a failed publish counts under "".
                crate::obs::published("", single);
                crate::obs::failed("", single);
                from_publish(e, context())
            })?;
            crate::obs::published(&ack.stream, single);
            crate::obs::acked(&ack.stream, single, timer);
            debug!(stream = %ack.stream, sequence = ack.sequence, "published");
            Ok(ack.into())
        }
        .instrument(span)
        .await
    }
}
