#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

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
