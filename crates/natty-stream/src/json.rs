//! Typed payloads (feature `serde`): publish a value as JSON, decode a [`Message`] into a type.
//!
//! A payload that does not decode is never dropped: [`DecodeError`] says which subject (and
//! stream sequence) failed and keeps the raw bytes.

use std::fmt;

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    BatchPublisher, Error, ErrorKind, HandlerError, Message, PublishAck, PublishOptions, Publisher,
};

/// The `Content-Type` header every JSON publish carries.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// A payload that is not the JSON expected: which message, its raw bytes, and serde's error.
#[derive(Debug)]
#[non_exhaustive]
pub struct DecodeError {
    /// The subject of the message.
    pub subject: String,
    /// Its sequence in the stream (0 when not known).
    pub stream_sequence: u64,
    /// The raw payload, exactly as stored.
    pub payload: Bytes,
    /// What serde_json reported (line, column, what was expected).
    pub source: serde_json::Error,
}

impl DecodeError {
    /// As a permanent handler failure (a malformed payload will not get better on
    /// redelivery): the message is dead-lettered and terminated. `?` on a `DecodeError`
    /// alone makes it a retry, like any other error.
    pub fn permanent(self) -> HandlerError {
        HandlerError::permanent(&self).with_source(self)
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "decoding the JSON payload of {:?} (stream sequence {}, {} bytes): {}",
            self.subject,
            self.stream_sequence,
            self.payload.len(),
            self.source
        )
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl Message {
    /// The payload decoded from JSON.
    ///
    /// ```
    /// # use natty_stream::{HandlerError, Message};
    /// #[derive(serde::Deserialize)]
    /// struct Order { id: u64 }
    ///
    /// async fn handle(m: Message) -> Result<(), HandlerError> {
    ///     // A malformed payload is given up on (dead-lettered) rather than retried.
    ///     let order: Order = m.json().map_err(|e| e.permanent())?;
    ///     let _ = order.id;
    ///     Ok(())
    /// }
    /// ```
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        serde_json::from_slice(&self.payload).map_err(|source| DecodeError {
            subject: self.subject.clone(),
            stream_sequence: self.stream_sequence,
            payload: self.payload.clone(),
            source,
        })
    }
}

/// `value` as JSON bytes; `Encode` naming the subject when serde refuses it.
pub(crate) fn encode<T: Serialize + ?Sized>(subject: &str, value: &T) -> Result<Bytes, Error> {
    serde_json::to_vec(value).map(Bytes::from).map_err(|e| {
        Error::with_source(
            ErrorKind::Encode,
            format!("encoding the payload for {subject:?} as JSON"),
            e,
        )
    })
}

fn json_options() -> PublishOptions {
    PublishOptions::default().header("Content-Type", JSON_CONTENT_TYPE)
}

impl Publisher {
    /// Publishes `value` as JSON (with `Content-Type: application/json`) and waits for the
    /// stream's ack. `Encode` when the value cannot be serialized; nothing is sent then.
    pub async fn publish_json<T: Serialize + ?Sized>(
        &self,
        subject: &str,
        value: &T,
    ) -> Result<PublishAck, Error> {
        let payload = encode(subject, value)?;
        self.publish_with(subject, payload, &json_options()).await
    }
}

impl BatchPublisher {
    /// Queues `value` as JSON (with `Content-Type: application/json`), like
    /// [`send`](Self::send). `Encode` when the value cannot be serialized; nothing is queued
    /// then.
    pub async fn send_json<T: Serialize + ?Sized>(
        &self,
        subject: &str,
        value: &T,
    ) -> Result<(), Error> {
        let payload = encode(subject, value)?;
        self.send_with(subject, payload, json_options()).await
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, error::Error as _, time::SystemTime};

    use super::*;

    #[derive(Debug, PartialEq, serde::Deserialize, serde::Serialize)]
    struct Order {
        id: u64,
    }

    fn message(payload: &'static [u8]) -> Message {
        Message {
            subject: "orders.eu".into(),
            payload: Bytes::from_static(payload),
            headers: vec![],
            delivered: 1,
            stream_sequence: 7,
            consumer_sequence: 7,
            published: SystemTime::UNIX_EPOCH,
            pending: 0,
            stream: "ORDERS".into(),
            consumer: "c".into(),
        }
    }

    #[test]
    fn decodes_a_payload() {
        assert_eq!(
            message(br#"{"id":3}"#).json::<Order>().unwrap(),
            Order { id: 3 }
        );
    }

    #[test]
    fn a_bad_payload_names_the_subject_and_keeps_the_bytes() {
        for raw in [&b"{\"id\":\"x\"}"[..], b"not json", b""] {
            let m = message(Box::leak(raw.to_vec().into_boxed_slice()));
            let e = m.json::<Order>().unwrap_err();
            assert_eq!(e.subject, "orders.eu");
            assert_eq!(e.stream_sequence, 7);
            assert_eq!(&e.payload[..], raw);
            assert!(e.to_string().contains("\"orders.eu\""), "{e}");
            assert!(e.source().is_some());
        }
    }

    #[test]
    fn a_decode_error_becomes_a_retry_with_question_mark_or_a_permanent_failure() {
        fn with_question_mark(m: &Message) -> Result<Order, HandlerError> {
            Ok(m.json::<Order>()?)
        }
        let m = message(b"nope");
        let retry = with_question_mark(&m).unwrap_err();
        assert_eq!(retry.retry_delay(), Some(None));
        let cause = retry.source().and_then(|s| s.downcast_ref::<DecodeError>());
        assert_eq!(cause.map(|d| &d.payload[..]), Some(&b"nope"[..]));
        let permanent = m.json::<Order>().unwrap_err().permanent();
        assert!(permanent.is_permanent());
        assert!(permanent.reason().contains("orders.eu"));
    }

    #[test]
    fn a_value_serde_refuses_is_an_encode_error_naming_the_subject() {
        let mut map = BTreeMap::new();
        map.insert((1, 2), "tuple keys are not JSON object keys");
        let e = encode("orders.eu", &map).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Encode);
        assert!(e.to_string().contains("orders.eu"), "{e}");
        assert_eq!(&encode("s", &Order { id: 1 }).unwrap()[..], br#"{"id":1}"#);
    }
}
