//! natty-stream: durable, Kafka-like streams on NATS JetStream that lose nothing.
//!
//! - Admin: [`ensure_stream`], [`delete_stream`], [`ensure_consumer`], [`delete_consumer`]
//!   (durable pull consumers with explicit ack only).
//! - [`Publisher`]: one message, acknowledged by the stream.
//! - [`BatchPublisher`]: a bounded queue and a background task that pipelines publishes with
//!   thousands of acks in flight; every message carries a `Nats-Msg-Id`, and retries stay
//!   inside the stream's duplicate window, so a retry after a timeout or reconnect is stored
//!   once; a message that still fails comes back with its payload and whether it may be
//!   stored ([`Stored`]). `flush()` / `close()` wait for the acks.
//! - [`Consumer::consume`]: blocks until cancelled, calling a handler per message; `Ok` acks,
//!   a retryable error naks with a delay, a permanent one terminates (and dead-letters).
//!
//! Patterns: several processes consuming with the *same* durable name share the messages (a
//! queue); each process with its *own* durable name sees every message (a broadcast).
//!
//! Delivery: at-least-once. A message is acked only after its handler returned `Ok`; a
//! process that dies mid-handler has its messages redelivered after `ack_wait`.
//!
//! # Feature flags
//! - `serde` (off by default): typed payloads — `Publisher::publish_json`,
//!   `BatchPublisher::send_json`, `Message::json`; a payload that does not decode comes
//!   back as a `DecodeError` naming the subject and keeping the raw bytes.
//! - `metrics` (off by default): counters, histograms and the consumer lag gauge through the
//!   `metrics` facade; names in the README's "Observability" section.
//! - `otel` (off by default): trace propagation. Publishing writes the current span's W3C
//!   `traceparent` / `tracestate` into the message headers (OpenTelemetry's
//!   `TraceContextPropagator`); the consumer runs each handler in a `debug`-level span
//!   `natty.stream.process` that continues that trace, with OpenTelemetry messaging attributes.
//!   Install a `tracing-opentelemetry` layer that lets `natty_stream=debug` through.

#![cfg_attr(docsrs, feature(doc_cfg))]

// The README (also the crates.io page): its example is compiled.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod admin;
mod batch;
mod consumer;
mod error;
#[cfg(feature = "serde")]
mod json;
mod message;
mod obs;
mod publisher;
mod trace;

#[cfg(test)]
mod fuzz;

pub use admin::{
    ConsumerConfig, DeliverFrom, Storage, StreamConfig, delete_consumer, delete_stream,
    ensure_consumer, ensure_stream, resume_sequence,
};
pub use batch::{
    BatchConfig, BatchPublisher, BatchStats, CloseReport, FailedMessage, FlushError, PublishMode,
    Stored,
};
pub use consumer::{Action, ConsumeError, ConsumeOptions, Consumer, ConsumerStats, OrderKey};
pub use error::{Error, ErrorKind};
#[cfg(feature = "serde")]
pub use json::{DecodeError, JSON_CONTENT_TYPE};
pub use message::{BoxError, HandlerError, Message};
pub use publisher::{PublishAck, PublishOptions, Publisher};
pub use tokio_util::sync::CancellationToken;
