//! Metrics (feature `metrics`, through the `metrics` facade): the latency of every key
//! operation, and its errors by kind. Without the feature [`timed`] only awaits the operation.
//!
//! Names (see the docs/observability.md): `natty_kv_op_seconds` (histogram, labels
//! `op` and `bucket`, every call whatever its outcome) and `natty_kv_op_errors_total`
//! (counter, labels `op`, `bucket` and `kind`, the [`ErrorKind`](crate::ErrorKind) name).
//! Input refused before anything is sent (a bad key) is not counted.

use std::future::Future;

use crate::Error;

/// Runs one key operation `op` on `bucket`, recording its latency and error kind.
#[cfg(feature = "metrics")]
pub(crate) async fn timed<T>(
    op: &'static str,
    bucket: &str,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let start = std::time::Instant::now();
    let result = work.await;
    let seconds = start.elapsed().as_secs_f64();
    metrics::histogram!("natty_kv_op_seconds", "op" => op, "bucket" => bucket.to_owned())
        .record(seconds);
    if let Err(e) = &result {
        metrics::counter!(
            "natty_kv_op_errors_total",
            "op" => op,
            "bucket" => bucket.to_owned(),
            "kind" => format!("{:?}", e.kind())
        )
        .increment(1);
    }
    result
}

/// Runs one key operation (nothing recorded without feature `metrics`).
#[cfg(not(feature = "metrics"))]
#[allow(
    clippy::inline_always,
    reason = "the point: this compiles to the bare await"
)]
#[inline(always)]
pub(crate) async fn timed<T>(
    _op: &'static str,
    _bucket: &str,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    work.await
}
