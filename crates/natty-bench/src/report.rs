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

/// The machine the bench ran on.
#[derive(Debug, Serialize)]
pub(crate) struct Machine {
    pub(crate) cores: usize,
    pub(crate) model: String,
    pub(crate) os: String,
}

impl Machine {
    pub(crate) fn here() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
        Self {
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            model,
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct Results {
    pub(crate) quick: bool,
    pub(crate) build: &'static str,
    pub(crate) server_version: String,
    pub(crate) machine: Machine,
    /// Where the server runs and keeps its data.
    pub(crate) server: String,
    pub(crate) pairs: usize,
    pub(crate) workloads: Vec<Workload>,
    /// Only when the election part ran.
    pub(crate) failover: Option<Failover>,
    /// Only when the memory part ran.
    pub(crate) memory: Option<MemoryResult>,
    pub(crate) memory_target: Option<Target>,
    /// What the run found out about a target it missed (causes, with the numbers).
    pub(crate) notes: Vec<String>,
    /// natty's observability features in the build that measured the workloads above.
    pub(crate) features_in_build: &'static str,
    /// Only when the features part ran.
    pub(crate) features: Option<Features>,
}

/// The same workloads built with natty's observability features off and on.
#[derive(Debug, Serialize)]
pub(crate) struct Features {
    /// (workload, median natty/raw ratio with the features off, with them on).
    pub(crate) rows: Vec<(String, f64, f64)>,
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
        "Machine: {} core(s), {}, {}. Server: nats-server {}, {}.\n",
        r.machine.cores, r.machine.model, r.machine.os, r.server_version, r.server
    )?;
    writeln!(
        md,
        "natty's observability features in this build: {}.\n",
        r.features_in_build
    )?;
    writeln!(
        md,
        "{} build, {} pair(s) per workload run alternately (natty, raw, natty, raw, ...); medians.{}\n",
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
    if let Some(f) = &r.features {
        writeln!(
            md,
            "\n## natty's observability features off and on\n\nThe same workloads, \
             built without natty's `metrics`, `otel` and `serde` (the default) and with them \
             (compiled in, no recorder or exporter installed); median natty/raw ratios, each \
             against raw measured in its own run.\n"
        )?;
        writeln!(md, "| workload | features off | features on |")?;
        writeln!(md, "|---|---|---|")?;
        for (name, off, on) in &f.rows {
            writeln!(md, "| {name} | {off:.3} | {on:.3} |")?;
        }
    }
    if let Some(f) = &r.failover {
        failover_md(&mut md, f)?;
    }
    if let (Some(m), Some(t)) = (&r.memory, &r.memory_target) {
        memory_md(&mut md, m, t)?;
    }
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
            r.failover
                .iter()
                .flat_map(|f| {
                    [
                        (&f.resign_target, "resign failover"),
                        (&f.crash_target, "crash failover"),
                    ]
                })
                .chain(r.memory_target.iter().map(|t| (t, "memory")))
                .filter(|(t, _)| t.met == Some(false))
                .map(|(_, n)| n),
        )
        .collect();
    if !missed.is_empty() {
        writeln!(md, "\n**Targets missed:** {}.", missed.join(", "))?;
    }
    for note in &r.notes {
        writeln!(md, "\n{note}")?;
    }
    std::fs::write(dir.join("report.md"), &md)?;
    svg(&dir.join("report.svg"), r)?;
    Ok(md)
}

fn failover_md(md: &mut String, f: &Failover) -> anyhow::Result<()> {
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
    Ok(())
}

fn memory_md(md: &mut String, m: &MemoryResult, target: &Target) -> anyhow::Result<()> {
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
        target.text,
        verdict(target)
    )?;
    Ok(())
}

/// One chart per unit (msg/s: higher is better; µs: lower is better), then the failover
/// trials when the election part ran.
fn svg(path: &Path, r: &Results) -> anyhow::Result<()> {
    let mut units: Vec<&str> = Vec::new();
    for w in &r.workloads {
        if !units.contains(&w.unit) {
            units.push(w.unit);
        }
    }
    let panels = units.len() + usize::from(r.failover.is_some());
    let height = u32::try_from(panels.max(1) * 360).unwrap_or(u32::MAX);
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let areas = root.split_evenly((panels.max(1), 1));
    for (unit, area) in units.iter().zip(&areas) {
        let ws: Vec<&Workload> = r.workloads.iter().filter(|w| w.unit == *unit).collect();
        ratio_chart(area, unit, &ws)?;
    }
    if let (Some(f), Some(area)) = (&r.failover, areas.get(units.len())) {
        failover_chart(area, f)?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn ratio_chart(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    unit: &str,
    ws: &[&Workload],
) -> anyhow::Result<()> {
    let better = if unit == "msg/s" {
        "higher is better"
    } else {
        "lower is better"
    };
    let n = ws.len().max(1);
    let max = ws.iter().map(|w| w.median_ratio).fold(1.5, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("natty / raw, {unit} (median ratio; {better}; red line = parity)"),
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
            ws.get(*x as usize)
                .map(|w| w.name.clone())
                .unwrap_or_default()
        })
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(ws.iter().enumerate().map(|(i, w)| {
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
    Ok(())
}

fn failover_chart(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    f: &Failover,
) -> anyhow::Result<()> {
    let ymax = f
        .resign_ms
        .iter()
        .chain(&f.crash_ms)
        .copied()
        .fold(f.ttl_ms + 600.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
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
    Ok(())
}
