//! Metrics (feature `metrics`, through the `metrics` facade). Without the feature every
//! function is empty: nothing is compiled in.
//!
//! Names (see the README's "Observability" section), labels `group`, `member`:
//! - `natty_group_members` (gauge): live members as this member counts them;
//! - `natty_group_owned_partitions` (gauge): partitions this member consumes;
//! - `natty_group_take_overs_total` (counter): partitions this member won and took over;
//! - `natty_group_take_over_seconds` (histogram): from winning a partition's lease to
//!   consuming it (its durable taken over from the previous owner's);
//! - `natty_group_released_total` (counter, plus label `reason`: `resigned`, `lost`,
//!   `failed`): partitions this member stopped consuming;
//! - `natty_group_failures_total` (counter, plus label `area`: `membership`, `lease`,
//!   `take_over`, `consumer`, `stream`): failures retried (see [`Area`](crate::Area)).

#[cfg(feature = "metrics")]
mod on {
    use std::time::Duration;

    use std::sync::Once;

    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

    use crate::{Area, GroupConfig};

    /// Describes every metric of this crate (unit, help text) to the recorder, once per
    /// process, before the first is recorded. The table in docs/observability.md is checked
    /// against these calls (`cargo xtask ci`, step "metrics table").
    fn describe() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            describe_gauge!(
                "natty_group_members",
                Unit::Count,
                "Live members of the group as this member counts them"
            );
            describe_gauge!(
                "natty_group_owned_partitions",
                Unit::Count,
                "Partitions this member consumes"
            );
            describe_counter!(
                "natty_group_take_overs_total",
                Unit::Count,
                "Partitions this member won and took over"
            );
            describe_histogram!(
                "natty_group_take_over_seconds",
                Unit::Seconds,
                "Time from winning a partition's lease to consuming it"
            );
            describe_counter!(
                "natty_group_released_total",
                Unit::Count,
                "Partitions this member stopped consuming, by reason"
            );
            describe_counter!(
                "natty_group_failures_total",
                Unit::Count,
                "Failures retried, by area"
            );
        });
    }

    fn labels(config: &GroupConfig) -> Vec<metrics::Label> {
        describe();
        vec![
            metrics::Label::new("group", config.name.clone()),
            metrics::Label::new("member", config.member.clone()),
        ]
    }

    #[allow(
        clippy::cast_precision_loss,
        reason = "gauges are f64; counts this size are exact"
    )]
    pub(crate) fn counts(config: &GroupConfig, members: usize, owned: usize) {
        metrics::gauge!("natty_group_members", labels(config)).set(members as f64);
        metrics::gauge!("natty_group_owned_partitions", labels(config)).set(owned as f64);
    }

    pub(crate) fn took_over(config: &GroupConfig, took: Duration) {
        metrics::counter!("natty_group_take_overs_total", labels(config)).increment(1);
        metrics::histogram!("natty_group_take_over_seconds", labels(config))
            .record(took.as_secs_f64());
    }

    pub(crate) fn released(config: &GroupConfig, reason: &'static str) {
        let mut l = labels(config);
        l.push(metrics::Label::new("reason", reason));
        metrics::counter!("natty_group_released_total", l).increment(1);
    }

    pub(crate) fn failed(config: &GroupConfig, area: Area) {
        let mut l = labels(config);
        l.push(metrics::Label::new("area", area.as_str()));
        metrics::counter!("natty_group_failures_total", l).increment(1);
    }
}

#[cfg(feature = "metrics")]
pub(crate) use on::{counts, failed, released, took_over};

#[cfg(not(feature = "metrics"))]
mod off {
    #![allow(clippy::inline_always, reason = "the point: these compile to nothing")]

    use std::time::Duration;

    use crate::{Area, GroupConfig};

    #[inline(always)]
    pub(crate) fn counts(_: &GroupConfig, _: usize, _: usize) {}

    #[inline(always)]
    pub(crate) fn took_over(_: &GroupConfig, _: Duration) {}

    #[inline(always)]
    pub(crate) fn released(_: &GroupConfig, _: &'static str) {}

    #[inline(always)]
    pub(crate) fn failed(_: &GroupConfig, _: Area) {}
}

#[cfg(not(feature = "metrics"))]
pub(crate) use off::{counts, failed, released, took_over};
