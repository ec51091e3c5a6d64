//! results.json, report.md and report.svg.

use std::{fmt::Write as _, path::Path};

use plotters::prelude::*;
use serde::Serialize;

use crate::memory::MemoryResult;

/// One workload measured on both sides.
#[derive(Debug, Serialize)]
pub(crate) struct Workload {
    pub(crate) name: String,
    /// `msg/s` (higher is better) or `µs` (lower is better).
    pub(crate) unit: &'static str,
    pub(crate) natty: Vec<f64>,
    pub(crate) raw: Vec<f64>,
    /// natty / raw per pair.
    pub(crate) ratios: Vec<f64>,
    pub(crate) median_ratio: f64,
    pub(crate) target: Option<Target>,
}

/// A target on a workload's median ratio (or on a latency).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Target {
    pub(crate) text: String,
    pub(crate) met: Option<bool>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Failover {
    pub(crate) ttl_ms: f64,
    pub(crate) resign_ms: Vec<f64>,
    pub(crate) crash_ms: Vec<f64>,
    pub(crate) resign_target: Target,
    pub(crate) crash_target: Target,
}

#[derive(Debug, Serialize)]
pub(crate) struct Results {
    pub(crate) quick: bool,
    pub(crate) build: &'static str,
    pub(crate) server_version: String,
    pub(crate) pairs: usize,
    pub(crate) workloads: Vec<Workload>,
    pub(crate) failover: Failover,
    pub(crate) memory: MemoryResult,
    pub(crate) memory_target: Target,
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

pub(crate) fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[idx.min(v.len() - 1)]
}

fn verdict(t: &Target) -> &'static str {
    match t.met {
        Some(true) => "met",
        Some(false) => "**MISSED**",
        None => "not judged (--quick, debug build)",
    }
}

pub(crate) fn write(dir: &Path, r: &Results) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(r)?)?;
    let mut md = String::new();
    writeln!(md, "# natty vs raw async-nats\n")?;
    writeln!(
        md,
        "nats-server {}, {} build, {} pair(s) per workload run alternately (natty, raw, natty, raw, ...); medians.{}\n",
        r.server_version,
        r.build,
        r.pairs,
        if r.quick {
            " **--quick: small N, not a measurement.**"
        } else {
            ""
        }
    )?;
    writeln!(
        md,
        "| workload | natty | raw | ratio natty/raw (per pair) | median ratio | target | verdict |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|")?;
    for w in &r.workloads {
        let per_pair: Vec<String> = w.ratios.iter().map(|x| format!("{x:.3}")).collect();
        let (t, v) = w
            .target
            .as_ref()
            .map_or(("", ""), |t| (t.text.as_str(), verdict(t)));
        writeln!(
            md,
            "| {} | {:.0} {} | {:.0} {} | {} | {:.3} | {t} | {v} |",
            w.name,
            median(&w.natty),
            w.unit,
            median(&w.raw),
            w.unit,
            per_pair.join(", "),
            w.median_ratio
        )?;
    }
    let f = &r.failover;
    writeln!(
        md,
        "\n## Election failover (natty; TTL {:.0} ms)\n",
        f.ttl_ms
    )?;
    writeln!(
        md,
        "| trigger | trials | p50 | p99 | max | target | verdict |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|")?;
    for (name, v, t) in [
        ("resign (clean shutdown)", &f.resign_ms, &f.resign_target),
        ("crash (no resign)", &f.crash_ms, &f.crash_target),
    ] {
        writeln!(
            md,
            "| {name} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {} | {} |",
            v.len(),
            percentile(v, 0.5),
            percentile(v, 0.99),
            v.iter().copied().fold(f64::NAN, f64::max),
            t.text,
            verdict(t)
        )?;
    }
    let m = &r.memory;
    writeln!(md, "\n## Batch publisher memory\n")?;
    writeln!(
        md,
        "{} messages of {} B sent as fast as `send` allows (queue {}, {} in flight): RSS grew {:.1} MiB \
         (peak {:.1} MiB, baseline {:.1} MiB); bound {:.1} MiB. Target: {} — {}.",
        m.messages,
        m.payload_bytes,
        m.queue_capacity,
        m.max_in_flight,
        m.peak_rss_bytes.saturating_sub(m.baseline_rss_bytes) as f64 / 1048576.0,
        m.peak_rss_bytes as f64 / 1048576.0,
        m.baseline_rss_bytes as f64 / 1048576.0,
        m.bound_bytes as f64 / 1048576.0,
        r.memory_target.text,
        verdict(&r.memory_target)
    )?;
    let missed: Vec<&str> = r
        .workloads
        .iter()
        .filter_map(|w| {
            w.target
                .as_ref()
                .filter(|t| t.met == Some(false))
                .map(|_| w.name.as_str())
        })
        .chain(
            [
                (&f.resign_target, "resign failover"),
                (&f.crash_target, "crash failover"),
                (&r.memory_target, "memory"),
            ]
            .into_iter()
            .filter(|(t, _)| t.met == Some(false))
            .map(|(_, n)| n),
        )
        .collect();
    if !missed.is_empty() {
        writeln!(md, "\n**Targets missed:** {}.", missed.join(", "))?;
    }
    std::fs::write(dir.join("report.md"), &md)?;
    svg(&dir.join("report.svg"), r)?;
    Ok(md)
}

fn svg(path: &Path, r: &Results) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (top, bottom) = root.split_vertically(380);
    // Ratios per workload, with the 1.0 line.
    let n = r.workloads.len().max(1);
    let max = r
        .workloads
        .iter()
        .map(|w| w.median_ratio)
        .fold(1.5, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            "natty / raw async-nats (median ratio; >1 faster for msg/s, slower for latency)",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(60)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..n as f64, 0.0..max)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            r.workloads
                .get(*x as usize)
                .map(|w| w.name.clone())
                .unwrap_or_default()
        })
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(r.workloads.iter().enumerate().map(|(i, w)| {
            let x = i as f64;
            Rectangle::new(
                [(x + 0.15, 0.0), (x + 0.85, w.median_ratio)],
                BLUE.mix(0.6).filled(),
            )
        }))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(LineSeries::new([(0.0, 1.0), (n as f64, 1.0)], RED))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Failover latency distribution (each trial a point).
    let f = &r.failover;
    let ymax = f
        .resign_ms
        .iter()
        .chain(&f.crash_ms)
        .copied()
        .fold(f.ttl_ms + 600.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "election failover per trial (ms): resign (blue), crash (red), TTL + 500 ms (grey)",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(
            0.0..(f.resign_ms.len().max(f.crash_ms.len()).max(1) as f64),
            0.0..ymax,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(
            f.resign_ms
                .iter()
                .enumerate()
                .map(|(i, v)| Circle::new((i as f64 + 0.5, *v), 4, BLUE.filled())),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(
            f.crash_ms
                .iter()
                .enumerate()
                .map(|(i, v)| Circle::new((i as f64 + 0.5, *v), 4, RED.filled())),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let width = f.resign_ms.len().max(f.crash_ms.len()).max(1) as f64;
    chart
        .draw_series(LineSeries::new(
            [(0.0, f.ttl_ms + 500.0), (width, f.ttl_ms + 500.0)],
            BLACK.mix(0.4),
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
