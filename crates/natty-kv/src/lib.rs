#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod bucket;
mod config;
mod entry;
mod error;
mod expiry;
#[cfg(feature = "serde")]
mod json;
mod kv;
mod obs;
mod read;
mod retry;
mod scan;
mod watch;
mod write;
mod written;

#[cfg(test)]
mod fuzz;

pub use bucket::BucketStatus;
pub use config::{
    BucketConfig, DEFAULT_MARKER_TTL, MAX_HISTORY, MAX_KEY_TTL, Storage, validate_key_ttl,
};
pub use entry::{Entry, Event, EventKind};
pub use error::{Error, ErrorKind};
#[cfg(feature = "serde")]
pub use json::{DecodeError, JsonEvent, JsonWatch};
pub use kv::{DEFAULT_RETRY_FOR, Kv};
pub use watch::Watch;

// What the README's example needs, so a crate depending only on natty-kv (and tokio) can
// connect without naming natty-core.
pub use natty_core::{Client, ConnectOptions};
