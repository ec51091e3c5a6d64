//! natty-election: safe, fast leader election on a NATS KV key.
//!
//! - **One leader at a time.** The lease is taken with a create (one winner) and renewed with
//!   a write conditioned on the revision held — never a blind put — so a delayed renew can
//!   never overwrite a newer leader's key.
//! - **Self-fencing.** Work gets a `lost` token that fires the moment leadership is lost, or
//!   when no renew has succeeded for `ttl - margin` by the local monotonic clock, even if the
//!   server never answered.
//! - **Fencing token.** [`Leadership::term`] is a [`Term`]: the bucket's creation time and the
//!   revision the lease was created at, strictly increasing even across the bucket's deletion
//!   and re-creation, for systems the leader writes to, to reject stale leaders.
//! - **Fast hand-over.** A leader resigns on shutdown (conditioned delete); followers watch
//!   the key and contest the moment it is deleted or expires (per-key TTL with expiry markers
//!   on server 2.11+; polling as a fallback).
//! - **Sans-IO core.** [`machine`] is a pure state machine; [`Election`] drives it on tokio.
//!
//! Limits, honestly: safety relies on the local monotonic clock running at about the server's
//! rate during one TTL, and on the work honouring `lost` within half the margin (it is then
//! aborted — at the latest `margin / 2` before the lease could expire on the server — which
//! only takes effect at its next `.await`). The deadlines use tokio's clock (`CLOCK_MONOTONIC`
//! on Linux), which **stops while the machine is suspended** (laptop sleep, some VM pauses)
//! while the server's TTL keeps running: do not run a leader on a host that may suspend. A process paused past its lease
//! (SIGSTOP, GC) resumes with `lost` already firing, but code that was mid-write to another
//! system may still complete that write: that is what the fencing token is for.
//!
//! # Feature flags
//! - `metrics` (off by default): the leader flag and term gauges and the elections / losses
//!   counters (`natty_election_*`), through the `metrics` facade; see the README's
//!   "Observability" section. With it, natty-kv's `metrics` is on too (the lease's KV
//!   operations are timed).

mod config;
mod driver;
mod error;
mod lease;
pub mod machine;
mod obs;
mod store;

#[cfg(test)]
mod fuzz;

pub use config::{DEFAULT_TTL, ElectionConfig};
pub use driver::{Election, ElectionEvent, LeaderInfo, Leadership};
pub use error::{Error, ErrorKind};
pub use lease::Term;
pub use machine::LostReason;
pub use tokio_util::sync::CancellationToken;
