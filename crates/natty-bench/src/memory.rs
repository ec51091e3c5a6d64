//! Peak memory of a BatchPublisher pushed far past its queue: run in a process of its own so
//! its peak RSS (VmHWM) is its own.

use std::time::Instant;

use natty::{BatchConfig, BatchPublisher};
use serde::{Deserialize, Serialize};

/// What the memory run reports.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MemoryResult {
    pub(crate) messages: u64,
    pub(crate) payload_bytes: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) baseline_rss_bytes: u64,
    pub(crate) peak_rss_bytes: u64,
    /// (queue + in flight) x (payload + 2 KiB per-message allowance: the boxed message, its
    /// header map and, in flight, its ack future and reply subscription) + 16 MiB for the
    /// runtime and the client's buffers. Independent of `messages`: that is the point.
    pub(crate) bound_bytes: u64,
    pub(crate) seconds: f64,
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

pub(crate) async fn run(url: &str, n: u64) -> anyhow::Result<MemoryResult> {
    let client = natty::ConnectOptions::new([url]).connect().await?;
    let stream = format!("BENCH_MEM_{}", std::process::id());
    crate::workloads::fresh_stream(&client, &stream, Some(false)).await?;
    let config = BatchConfig::default();
    let (queue, inflight) = (config.queue_capacity, config.max_in_flight);
    let publisher = BatchPublisher::new(client.clone(), config)?;
    let subject = format!("{stream}.x");
    let body = bytes::Bytes::from(vec![b'm'; 128]);
    let baseline = status_kib("VmRSS:") * 1024;
    let start = Instant::now();
    for i in 0..n {
        // A fresh allocation per message, as an application would make.
        let mut payload = body.to_vec();
        payload[..8].copy_from_slice(&i.to_be_bytes());
        publisher.send(&subject, payload.into()).await?;
    }
    let report = publisher.close().await?;
    anyhow::ensure!(report.failed.is_empty(), "{} failed", report.failed.len());
    let seconds = start.elapsed().as_secs_f64();
    natty::stream::delete_stream(&client, &stream).await?;
    Ok(MemoryResult {
        messages: n,
        payload_bytes: 128,
        queue_capacity: queue,
        max_in_flight: inflight,
        baseline_rss_bytes: baseline,
        peak_rss_bytes: status_kib("VmHWM:") * 1024,
        bound_bytes: ((queue + inflight) as u64) * (128 + 2048) + 16 * 1024 * 1024,
        seconds,
    })
}
