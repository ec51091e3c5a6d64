//! What a `metrics` recorder saw (feature `metrics`): a recorder over a `metrics-util`
//! registry of atomics, installed for the whole test binary and read without resetting
//! anything (metrics-util's DebuggingRecorder swaps gauges to 0 on every snapshot, so a gauge
//! read twice would read 0). Metrics are named `name,label=value,...` with the labels in the
//! order they were given.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{Arc, Mutex, OnceLock, atomic::Ordering},
};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};

/// What was recorded so far.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    /// Counter totals.
    pub counters: HashMap<String, u64>,
    /// The highest value each gauge had at a read.
    pub max_gauge: HashMap<String, f64>,
    /// The value each gauge has now.
    pub last_gauge: HashMap<String, f64>,
    /// Histogram samples recorded.
    pub samples: HashMap<String, usize>,
    /// What each metric name was described as (`describe_*`): kind, unit, help text.
    pub described: HashMap<String, Described>,
}

/// A metric's description, as a `describe_*` call gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    /// `counter`, `gauge` or `histogram`.
    pub kind: &'static str,
    /// The unit's name (`count`, `seconds`, ...), if one was given.
    pub unit: Option<&'static str>,
    /// The help text.
    pub help: String,
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

    /// A gauge's value, if it was ever set.
    pub fn gauge(&self, name: &str) -> Option<f64> {
        self.last_gauge.get(name).copied()
    }

    /// Names of the metrics recorded (labels apart) that no `describe_*` call described with
    /// a help text, or described as another kind than recorded; sorted.
    pub fn undescribed(&self) -> Vec<String> {
        let recorded = [
            ("counter", self.counters.keys().collect::<Vec<_>>()),
            ("gauge", self.last_gauge.keys().collect()),
            ("histogram", self.samples.keys().collect()),
        ];
        let mut missing: Vec<String> = recorded
            .iter()
            .flat_map(|(kind, names)| names.iter().map(move |n| (*kind, n)))
            .map(|(kind, n)| (kind, n.split(',').next().unwrap_or_default()))
            .filter(|(kind, name)| {
                self.described
                    .get(*name)
                    .is_none_or(|d| d.kind != *kind || d.help.is_empty())
            })
            .map(|(kind, name)| format!("{name} ({kind})"))
            .collect();
        missing.sort();
        missing.dedup();
        missing
    }
}

/// The metrics recorder (this test binary's): the registry, and the descriptions.
struct Shared(
    Arc<Registry<Key, AtomicStorage>>,
    Arc<Mutex<HashMap<String, Described>>>,
);

impl Shared {
    fn describe(&self, kind: &'static str, name: &KeyName, unit: Option<Unit>, help: &str) {
        self.1
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                name.as_str().to_owned(),
                Described {
                    kind,
                    unit: unit.map(|u| u.as_str()),
                    help: help.to_owned(),
                },
            );
    }
}

impl Recorder for Shared {
    fn describe_counter(&self, name: KeyName, unit: Option<Unit>, help: SharedString) {
        self.describe("counter", &name, unit, &help);
    }
    fn describe_gauge(&self, name: KeyName, unit: Option<Unit>, help: SharedString) {
        self.describe("gauge", &name, unit, &help);
    }
    fn describe_histogram(&self, name: KeyName, unit: Option<Unit>, help: SharedString) {
        self.describe("histogram", &name, unit, &help);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.0
            .get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.0
            .get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.0
            .get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
}

/// The recorder of this test binary.
pub struct Recorded {
    registry: Arc<Registry<Key, AtomicStorage>>,
    described: Arc<Mutex<HashMap<String, Described>>>,
    totals: Mutex<Totals>,
}

impl std::fmt::Debug for Recorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorded").finish_non_exhaustive()
    }
}

fn name_of(key: &Key) -> String {
    let mut name = key.name().to_owned();
    for l in key.labels() {
        let _ = write!(name, ",{}={}", l.key(), l.value());
    }
    name
}

impl Recorded {
    /// Installs the recorder (once per binary) and returns it.
    pub fn install() -> &'static Self {
        static ONCE: OnceLock<Recorded> = OnceLock::new();
        ONCE.get_or_init(|| {
            let registry = Arc::new(Registry::new(AtomicStorage));
            let described = Arc::default();
            metrics::set_global_recorder(Shared(registry.clone(), Arc::clone(&described)))
                .unwrap_or_else(|e| panic!("another metrics recorder is installed: {e}"));
            Self {
                registry,
                described,
                totals: Mutex::new(Totals::default()),
            }
        })
    }

    /// Reads every metric: a copy of the totals.
    pub fn snapshot(&self) -> Totals {
        self.read(Totals::clone)
    }

    /// Reads every metric into the totals and runs `f` on them.
    pub fn read<T>(&self, f: impl FnOnce(&Totals) -> T) -> T {
        let mut totals = self
            .totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let t = &mut *totals;
        t.described.clone_from(
            &self
                .described
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        self.registry.visit_counters(|key, c| {
            t.counters.insert(name_of(key), c.load(Ordering::SeqCst));
        });
        self.registry.visit_gauges(|key, g| {
            let name = name_of(key);
            let value = f64::from_bits(g.load(Ordering::SeqCst));
            let max = t.max_gauge.entry(name.clone()).or_insert(f64::MIN);
            *max = max.max(value);
            t.last_gauge.insert(name, value);
        });
        self.registry.visit_histograms(|key, h| {
            t.samples.insert(name_of(key), h.data().len());
        });
        f(&totals)
    }
}
