//! Metrics (feature `metrics`, through the `metrics` facade), from the driver's events.
//! Without the feature every function is empty: nothing is compiled in.
//!
//! Names (see the docs/observability.md), labels `bucket`, `key`, `node`:
//! - `natty_election_leader` (gauge): 1 while this node leads, else 0;
//! - `natty_election_term` (gauge): the revision part of the current leader's term as this
//!   node last saw it (its own while it leads); it restarts low when the bucket is re-created
//!   (the term's epoch grows then: compare [`Term`](crate::Term)s, not this gauge, for fencing);
//! - `natty_election_elections_total` (counter): times this node was elected;
//! - `natty_election_losses_total` (counter, plus label `reason`): times it stopped leading.

use crate::{ElectionConfig, ElectionEvent};

#[cfg(feature = "metrics")]
pub(crate) fn event(config: &ElectionConfig, event: &ElectionEvent) {
    let labels = labels(config);
    match event {
        ElectionEvent::Elected { term } => {
            metrics::counter!("natty_election_elections_total", labels.clone()).increment(1);
            metrics::gauge!("natty_election_leader", labels.clone()).set(1.0);
            term_gauge(labels.clone(), term.revision);
        }
        ElectionEvent::Lost { reason, .. } => {
            let mut with_reason = labels.clone();
            with_reason.push(metrics::Label::new("reason", format!("{reason:?}")));
            metrics::counter!("natty_election_losses_total", with_reason).increment(1);
            metrics::gauge!("natty_election_leader", labels.clone()).set(0.0);
        }
        ElectionEvent::Following { leader } => {
            metrics::gauge!("natty_election_leader", labels.clone()).set(0.0);
            if let Some(holder) = leader {
                term_gauge(labels.clone(), holder.term.revision);
            }
        }
        _ => {}
    }
}

/// The election stopped (or its future was dropped): this node does not lead.
#[cfg(feature = "metrics")]
pub(crate) fn stopped(config: &ElectionConfig) {
    metrics::gauge!("natty_election_leader", labels(config)).set(0.0);
}

#[cfg(feature = "metrics")]
fn labels(config: &ElectionConfig) -> Vec<metrics::Label> {
    vec![
        metrics::Label::new("bucket", config.bucket.clone()),
        metrics::Label::new("key", config.key.clone()),
        metrics::Label::new("node", config.node_name.clone()),
    ]
}

#[cfg(feature = "metrics")]
fn term_gauge(labels: Vec<metrics::Label>, revision: u64) {
    #[allow(
        clippy::cast_precision_loss,
        reason = "a gauge is an f64; revisions beyond 2^53 are approximate"
    )]
    metrics::gauge!("natty_election_term", labels).set(revision as f64);
}

#[cfg(not(feature = "metrics"))]
#[allow(clippy::inline_always, reason = "the point: these compile to nothing")]
#[inline(always)]
pub(crate) fn event(_: &ElectionConfig, _: &ElectionEvent) {}

#[cfg(not(feature = "metrics"))]
#[allow(clippy::inline_always, reason = "the point: these compile to nothing")]
#[inline(always)]
pub(crate) fn stopped(_: &ElectionConfig) {}
