//! What a `metrics` recorder saw (feature `metrics`): a `metrics-util` DebuggingRecorder
//! installed for the whole test binary, read into running totals. Metrics are named
//! `name,label=value,...` with the labels in the order they were given.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{Mutex, OnceLock},
};

use metrics_util::{
    MetricKind,
    debugging::{DebugValue, DebuggingRecorder, Snapshotter},
};

/// Running totals: a snapshot drains counters and histograms, so they are added up here.
#[derive(Debug, Default)]
pub struct Totals {
    /// Counter totals.
    pub counters: HashMap<String, u64>,
    /// The highest value each gauge had at a snapshot.
    pub max_gauge: HashMap<String, f64>,
    /// The value each gauge had at the last snapshot.
    pub last_gauge: HashMap<String, f64>,
    /// Histogram samples recorded.
    pub samples: HashMap<String, usize>,
}

impl Totals {
    /// A counter's total (0 if never incremented).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// How many samples a histogram has (0 if none).
    pub fn samples(&self, name: &str) -> usize {
        self.samples.get(name).copied().unwrap_or(0)
    }

    /// A gauge's last value, if it was ever set.
    pub fn gauge(&self, name: &str) -> Option<f64> {
        self.last_gauge.get(name).copied()
    }
}

/// The recorder of this test binary.
pub struct Recorded {
    snapshotter: Snapshotter,
    totals: Mutex<Totals>,
}

impl std::fmt::Debug for Recorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorded").finish_non_exhaustive()
    }
}

impl Recorded {
    /// Installs the recorder (once per binary) and returns it.
    pub fn install() -> &'static Self {
        static ONCE: OnceLock<Recorded> = OnceLock::new();
        ONCE.get_or_init(|| {
            let recorder = DebuggingRecorder::new();
            let snapshotter = recorder.snapshotter();
            recorder
                .install()
                .unwrap_or_else(|e| panic!("another metrics recorder is installed: {e}"));
            Self {
                snapshotter,
                totals: Mutex::new(Totals::default()),
            }
        })
    }

    /// Takes a snapshot into the totals and runs `f` on them.
    pub fn read<T>(&self, f: impl FnOnce(&Totals) -> T) -> T {
        let mut totals = self
            .totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let (kind, key) = key.into_parts();
            let mut name = key.name().to_owned();
            for l in key.labels() {
                let _ = write!(name, ",{}={}", l.key(), l.value());
            }
            match (kind, value) {
                (MetricKind::Counter, DebugValue::Counter(n)) => {
                    *totals.counters.entry(name).or_default() += n;
                }
                (MetricKind::Gauge, DebugValue::Gauge(v)) => {
                    let max = totals.max_gauge.entry(name.clone()).or_insert(f64::MIN);
                    *max = max.max(v.0);
                    totals.last_gauge.insert(name, v.0);
                }
                (MetricKind::Histogram, DebugValue::Histogram(v)) => {
                    *totals.samples.entry(name).or_default() += v.len();
                }
                _ => {}
            }
        }
        f(&totals)
    }
}
