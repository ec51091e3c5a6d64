#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod clock;
mod config;
mod driver;
mod error;
mod fence;
mod lease;
mod obs;
mod store;

#[cfg(test)]
mod fuzz;

pub use config::{DEFAULT_TTL, ElectionConfig};
pub use driver::{Election, ElectionEvent, LeaderInfo, Leadership};
pub use error::{Error, ErrorKind};
pub use fence::{MAX_FENCED_WRITES, Txn};
/// The election as a pure state machine (no runtime, no I/O, no clock): the
/// [natty-election-proto](https://docs.rs/natty-election-proto) crate, which [`Election`]
/// drives on tokio.
#[doc(inline)]
pub use natty_election_proto as machine;
pub use natty_election_proto::{LostReason, Term};
pub use tokio_util::sync::CancellationToken;

// What the README's example needs, so a crate depending only on natty-election (and tokio)
// can connect and make the `Kv` an election runs on without naming natty-core or natty-kv.
pub use natty_core::{Client, ConnectOptions};
pub use natty_kv::{BucketConfig, Kv};
