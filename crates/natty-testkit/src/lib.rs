//! natty-testkit: real NATS servers for natty's integration suites, in local containers.
//!
//! - [`Nats::start`]: one server with JetStream; [`Nats::start_tls`] with certificates made for
//!   the test by rcgen; [`Nats::start_with`] for auth and extra flags.
//! - [`NatsCluster::start`]: three (or more) JetStream nodes on their own Docker network.
//! - Fault hooks on every server: stop, kill, start again (same storage and port), pause,
//!   unpause, and for cluster nodes disconnect/reconnect from the cluster network.
//! - [`proxy::Proxy`]: a NATS-aware TCP proxy that swallows one chosen client message (a
//!   fault exactly between two protocol messages).
//! - [`procs`]: multi-process tests — spawn, signal, and a typed JSON-line protocol with
//!   monotonic timestamps; [`group`]: the consumer-group judge on such lines.
//!
//! The image is found or built by [`setup`] (see [`image`]); containers are removed when their
//! handle drops. Integration tests are `#[ignore]`d so a plain `cargo test` passes without
//! Docker; `cargo xtask integration` runs them.
//!
//! # Feature flags
//! - `containers` (default): everything above. Without it only [`setup`] is built — finding,
//!   installing and starting a NATS server with nothing but `std` — which is all `cargo xtask`
//!   needs, so `cargo xtask help` compiles a handful of crates, not testcontainers.
//! - `metrics`: `Recorded`, a `metrics` recorder for tests that reads back what was recorded.

#[cfg(feature = "containers")]
pub mod certs;
#[cfg(feature = "containers")]
mod cluster;
#[cfg(feature = "containers")]
pub mod group;
#[cfg(feature = "containers")]
pub mod image;
#[cfg(feature = "containers")]
pub mod procs;
#[cfg(feature = "containers")]
pub mod proxy;
#[cfg(feature = "metrics")]
pub mod recorded;
#[cfg(feature = "containers")]
mod server;
pub use natty_test::setup;

#[cfg(feature = "containers")]
pub use certs::TestCerts;
#[cfg(feature = "containers")]
pub use cluster::NatsCluster;
#[cfg(feature = "metrics")]
pub use recorded::{Described, Recorded, Totals};
#[cfg(feature = "containers")]
pub use server::{Nats, ServerAuth, ServerOptions, TlsFiles, TlsMode, unique_name};

#[cfg(feature = "containers")]
/// Sets up `tracing` output for a test once (`RUST_LOG` filters; off by default).
pub fn init_tracing() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
    });
}

#[cfg(feature = "containers")]
/// Waits until `check` returns `Some`, polling every 20 ms, or fails after `timeout` saying
/// what was awaited.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: std::time::Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
