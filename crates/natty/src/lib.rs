//! natty: an opinionated library over NATS JetStream — durable Kafka-like streams, a simple
//! key/value store, and leader election — built to be *correct* where the usual tools are not.
//!
//! This facade re-exports the natty crates as modules and offers [`Natty`], one handle with
//! the whole Go natty `INatty` surface in Rust naming. Depend on `natty-kv` or
//! `natty-election` alone if that is all you need.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let natty = natty::Natty::connect(natty::ConnectOptions::new(["nats://127.0.0.1:4222"])).await?;
//! natty.put("config", "feature.x", "on".into()).await?;
//! assert_eq!(natty.get("config", "feature.x").await?.unwrap().value, "on");
//! natty.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//! - `stream` (default): [`stream`] — publish/consume.
//! - `kv` (default): [`kv`] — key/value.
//! - `election` (default, implies `kv`): [`election`] — leader election.

#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

mod builder;
mod error;
mod handle;

#[doc(inline)]
pub use natty_core as core;
pub use natty_core::{Client, ConnectOptions, ConnectionEvent, async_nats};
#[cfg(feature = "election")]
#[doc(inline)]
pub use natty_election as election;
#[cfg(feature = "election")]
pub use natty_election::{CancellationToken, Election, ElectionConfig, LeaderInfo, Leadership};
#[cfg(feature = "kv")]
#[doc(inline)]
pub use natty_kv as kv;
#[cfg(feature = "kv")]
pub use natty_kv::{BucketConfig, Entry, Event, EventKind, Kv};
#[cfg(feature = "stream")]
#[doc(inline)]
pub use natty_stream as stream;
#[cfg(feature = "stream")]
pub use natty_stream::{
    BatchConfig, BatchPublisher, ConsumeOptions, Consumer, ConsumerConfig, HandlerError, Message,
    PublishAck, StreamConfig,
};

pub use builder::NattyBuilder;
pub use error::Error;
#[cfg(feature = "stream")]
pub use handle::Consume;
pub use handle::{CloseError, CloseReport, Natty};
