//! natty-kv: key/value on NATS JetStream, with *safe* refresh and delete.
//!
//! - Buckets are created on demand by writes ([`Kv::put`], [`Kv::create`]) with the `Kv`'s
//!   default [`BucketConfig`]; reads never create one.
//! - Every conditional write is a compare-and-set on the key's revision, and a lost CAS is
//!   always [`ErrorKind::RevisionMismatch`] — whether the server answered 10071 (R1 bucket)
//!   or 10164 (replicated bucket).
//! - [`Kv::refresh`] re-writes the current value conditioned on the revision it read, so it
//!   never overwrites a newer write nor resurrects a deleted key; it keeps a per-key TTL.
//! - Per-key TTL ([`Kv::create_with_ttl`], server 2.11+) is refused with
//!   [`ErrorKind::Unsupported`] rather than silently dropped; TTLs must be whole seconds.
//! - [`Watch`] streams distinguish put, delete, purge and expiry, resume after a reconnect or
//!   server restart without replaying a revision, end with `BucketNotFound` when the bucket is
//!   deleted and report a re-created bucket ([`EventKind::BucketRecreated`]).
//! - On replicated buckets, answers that say nothing (503 during a stream-leader election,
//!   timeouts) are retried for [`Kv::retry_for`] — consumer creation for listings, history
//!   and watches included; a bucket is "not found" only when the stream info API says so.
//! - Reads never go back: a `Kv` remembers the revision it last wrote to each key, and its
//!   reads of that key are answered by a replica that has it, else by the stream leader;
//!   [`Kv::get_at_least`] takes a floor revision of the caller's. A "nothing to do" that a
//!   write is based on (`delete` of a missing key, `create` over a deleted key) is asked of
//!   the stream leader.
//! - An update or refresh that the server's expiry marker of its base revision removes right
//!   after storing it is reported, never `Ok`.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use futures::StreamExt;
//! use natty_kv::{EventKind, Kv};
//!
//! let client = natty_core::ConnectOptions::new(["nats://127.0.0.1:4222"]).connect().await?;
//! let kv = Kv::new(client);
//! kv.create_with_ttl("sessions", "u42", "token".into(), Duration::from_secs(30)).await?;
//! let mut watch = kv.watch_key("sessions", "u42").await?;
//! kv.refresh("sessions", "u42").await?; // another 30 s
//! while let Some(event) = watch.next().await {
//!     if event?.kind == EventKind::Expired { break; }
//! }
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//! - `serde` (off by default): typed values — `Kv::get_json`, `Kv::put_json`,
//!   `Kv::create_json`, `Kv::update_json`, `Kv::watch_key_json` /
//!   `Kv::watch_bucket_json` (`JsonWatch`); a value that does not decode is a
//!   [`ErrorKind::Decode`] error whose source, a `DecodeError`, keeps the raw bytes.
//! - `metrics` (off by default): the latency of every key operation (`natty_kv_op_seconds`,
//!   labels `op` and `bucket`) and its errors by kind (`natty_kv_op_errors_total`), through
//!   the `metrics` facade; see the README's "Observability" section.

#![cfg_attr(docsrs, feature(doc_cfg))]

// The README (also the crates.io page): its example is compiled.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

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
