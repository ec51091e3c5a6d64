//! natty-core: connecting to NATS (several servers, TLS including mutual TLS, auth), name
//! validation, and the error shape shared by the natty crates.
//!
//! ```no_run
//! # async fn example() -> Result<(), natty_core::Error> {
//! let client = natty_core::ConnectOptions::new(["nats://127.0.0.1:4222"])
//!     .name("my-service")
//!     .connect()
//!     .await?;
//! // Anything natty does not wrap is one call away:
//! let _raw: &natty_core::async_nats::Client = client.nats();
//! client.drain().await?;
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//! None: natty-core always builds with TLS (rustls, ring) and nkeys.

#![cfg_attr(docsrs, feature(doc_cfg))]

// The README (also the crates.io page): its example is compiled.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod client;
mod connect;
pub mod error;
pub mod limits;
pub mod names;
mod options;
pub mod retry;
mod tls;

/// The async-nats client natty is built on: the escape hatch for anything natty does not wrap.
/// Re-exported so that upgrading it is not a natty breaking change for code that avoids it.
pub use async_nats;
pub use client::{Client, Feature, ServerVersion};
pub use connect::{ConnectFailure, ServerAttempt};
pub use error::ErrorKind;
pub use options::{
    ConnectOptions, ConnectionEvent, DEFAULT_CONNECT_TIMEOUT, DEFAULT_PING_INTERVAL,
    DEFAULT_REQUEST_TIMEOUT,
};
pub use tls::Pem;

/// natty-core's error: see [`ErrorKind`] for what to branch on.
pub type Error = error::Error<ErrorKind>;
