#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod admin;
pub mod audit;
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

// What the README's example needs, so a crate depending only on natty-stream (and tokio) can
// connect without naming natty-core.
pub use natty_core::{Client, ConnectOptions};
