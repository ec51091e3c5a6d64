#![doc = include_str!("../README.md")]
//!
//! # Feature flags
//! - `stream` (default): [`stream`] — publish/consume.
//! - `kv` (default): [`kv`] — key/value.
//! - `election` (default, implies `kv`): [`election`] — leader election.
//! - `group` (off, implies `stream` and `election`): `group` — consumer groups (natty-group):
//!   per-key order, partitions leased and balanced across processes. Off by default while it
//!   is new; `cargo xtask chaos` runs it under member freezes, kills and network cuts.
//! - `serde` (off): typed payloads — `Natty::publish_json`, `Message::json`,
//!   `Natty::get_json` / `put_json` / `create_json`, `watch_key_json` / `watch_bucket_json`.
//! - `metrics` (off): stream, KV and election metrics through the `metrics` facade (names in
//!   `docs/observability.md`).
//! - `otel` (off): W3C trace context carried in message headers from publish to handler
//!   (`docs/observability.md` and `examples/observability.rs`).
//!
//! [`CancellationToken`], [`shutdown_signal`] and [`cancel_on_shutdown_signal`] are there
//! with any set of features.

#![cfg_attr(docsrs, feature(doc_cfg))]

// The guides in docs/: every Rust block in them is compiled (they use every feature).
#[cfg(all(
    doctest,
    feature = "stream",
    feature = "kv",
    feature = "election",
    feature = "group",
    feature = "serde",
    feature = "metrics",
    feature = "otel"
))]
mod guides {
    #[doc = include_str!("../../../docs/natty.md")]
    struct Natty;
    #[doc = include_str!("../../../docs/connect.md")]
    struct Connect;
    #[doc = include_str!("../../../docs/stream.md")]
    struct Stream;
    #[doc = include_str!("../../../docs/kv.md")]
    struct Kv;
    #[doc = include_str!("../../../docs/election.md")]
    struct Election;
    #[doc = include_str!("../../../docs/group.md")]
    struct Group;
    #[doc = include_str!("../../../docs/observability.md")]
    struct Observability;
    #[doc = include_str!("../../../docs/testing.md")]
    struct Testing;
}

mod builder;
mod error;
mod handle;
#[cfg(feature = "serde")]
mod json;

#[doc(inline)]
pub use natty_core as core;
pub use natty_core::{Client, ConnectOptions, ConnectionEvent, async_nats};
#[cfg(feature = "election")]
#[doc(inline)]
pub use natty_election as election;
#[cfg(feature = "election")]
pub use natty_election::{Election, ElectionConfig, LeaderInfo, Leadership};
#[cfg(feature = "group")]
#[doc(inline)]
pub use natty_group as group;
#[cfg(feature = "group")]
pub use natty_group::{ConsumerGroup, GroupConfig};
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
/// Stops `consume`, `run` and `as_leader` loops gracefully (tokio-util's token, the same type
/// every natty crate takes).
pub use tokio_util::sync::CancellationToken;

/// Waits until the process is asked to stop: Ctrl-C (SIGINT) or, on Unix, SIGTERM (what
/// `docker stop`, systemd and Kubernetes send).
///
/// The handlers are installed when the future is first polled; a signal that arrives before
/// that still ends the process the default way. Use [`cancel_on_shutdown_signal`] to install
/// them at once. Once installed they stay, so after the first signal a **second** one ends the
/// process at once (exit status 130): a graceful stop that hangs can still be forced.
/// Must run inside a tokio runtime. Errors only if a handler cannot be installed.
///
/// ```no_run
/// # async fn example() -> std::io::Result<()> {
/// natty::shutdown_signal().await?;
/// // ... cancel work, flush, close ...
/// # Ok(()) }
/// ```
pub async fn shutdown_signal() -> std::io::Result<()> {
    let mut signals = ShutdownSignals::install()?;
    signals.next().await;
    tokio::spawn(signals.exit_on_next());
    Ok(())
}

/// A token cancelled on the first Ctrl-C (SIGINT) or SIGTERM, with the handlers installed
/// before this returns: pass it (or child tokens) to `consume`, `run` and `as_leader` for a
/// graceful stop — running handlers finish, acks are flushed, a leader resigns. A second
/// signal ends the process at once (exit status 130), so a stop that hangs can be forced.
///
/// Must be called inside a tokio runtime (it spawns the task that waits for the signals).
/// Errors only if a handler cannot be installed.
///
/// ```no_run
/// # async fn example() -> std::io::Result<()> {
/// let cancel = natty::cancel_on_shutdown_signal()?;
/// // natty.consume(cancel.clone(), ...).await?;
/// # let _ = cancel; Ok(()) }
/// ```
pub fn cancel_on_shutdown_signal() -> std::io::Result<CancellationToken> {
    let mut signals = ShutdownSignals::install()?;
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        signals.next().await;
        on_signal.cancel();
        signals.exit_on_next().await;
    });
    Ok(cancel)
}

/// The installed signal handlers.
struct ShutdownSignals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }
}

impl ShutdownSignals {
    /// Waits for the next signal and logs it.
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            let name = tokio::select! {
                _ = self.terminate.recv() => "SIGTERM",
                _ = self.interrupt.recv() => "SIGINT",
            };
            tracing::info!(
                signal = name,
                "shutdown requested (a second signal exits at once)"
            );
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => tracing::info!(
                    signal = "Ctrl-C",
                    "shutdown requested (a second signal exits at once)"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot wait for Ctrl-C; never signalling shutdown");
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// After the first signal our handlers would swallow every later one: the next ends the
    /// process, as an unhandled Ctrl-C would have.
    async fn exit_on_next(mut self) {
        self.next().await;
        tracing::warn!("second shutdown signal: exiting without waiting for the graceful stop");
        std::process::exit(130);
    }
}
