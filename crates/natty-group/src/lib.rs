#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod durables;
mod error;
mod group;
mod health;
mod members;
mod obs;

pub use config::{GroupConfig, MAX_PARTITIONS, partition_of};
pub use error::{Error, ErrorKind};
pub use group::{ConsumerGroup, GroupEvent, Partition};
pub use health::{Area, Health, Problem};
pub use natty_election::Term;
pub use tokio_util::sync::CancellationToken;

// What the README's example needs, so a crate depending only on natty-group (and tokio) can
// connect, set up the stream and write handlers without naming another natty crate.
pub use natty_core::{Client, ConnectOptions};
pub use natty_stream as stream;
pub use natty_stream::{ConsumeOptions, HandlerError, Message};
