//! natty-election: safe, fast leader election on a NATS KV key.
//!
//! - **One leader at a time.** The lease is taken with a create (one winner) and renewed with
//!   a write conditioned on the revision held — never a blind put — so a delayed renew can
//!   never overwrite a newer leader's key.
//! - **Self-fencing.** Work gets a `lost` token that fires the moment leadership is lost, or
//!   when no renew has succeeded for `ttl - margin` by the local clock, even if the
//!   server never answered.
//! - **Fencing token.** [`Leadership::term`] is a [`Term`]: the bucket's creation time and the
//!   revision the lease was created at, strictly increasing even across the bucket's deletion
//!   and re-creation, for systems the leader writes to, to reject stale leaders.
//! - **Fast hand-over.** A leader resigns on shutdown (conditioned delete); followers watch
//!   the key and contest the moment it is deleted or expires (per-key TTL with expiry markers
//!   on server 2.11+; polling as a fallback).
//! - **Sans-IO core.** [`machine`] is a pure state machine in its own dependency-free
//!   `no_std` crate (natty-election-proto); [`Election`] drives it on tokio.
//!
//! Limits, honestly: safety relies on the local clock running at about the server's rate
//! during one TTL, and on the work honouring `lost` within half the margin (it is then
//! aborted — at the latest `margin / 2` before the lease could expire on the server — which
//! only takes effect at its next `.await`). On Linux the deadlines are read on a clock that
//! keeps counting while the host is suspended (`CLOCK_BOOTTIME`; tokio's own clock stops):
//! after a resume, [`Leadership::is_valid`] and [`Election::is_leader`] read false at once if
//! the lease ran out meanwhile, and `lost` fires within `margin / 2` (the driver wakes at least
//! that often while work runs). Elsewhere only tokio's clock is used: there, do not run a
//! leader on a host that may suspend. A process paused past its lease (SIGSTOP, GC, suspend)
//! resumes with `lost` about to fire, but code that was mid-write to another system may still
//! complete that write: that is what the fencing token is for.
//!
//! # Feature flags
//! - `metrics` (off by default): the leader flag and term gauges and the elections / losses
//!   counters (`natty_election_*`), through the `metrics` facade; see the README's
//!   "Observability" section. With it, natty-kv's `metrics` is on too (the lease's KV
//!   operations are timed).

#![cfg_attr(docsrs, feature(doc_cfg))]

// The README (also the crates.io page): its example is compiled.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod clock;
mod config;
mod driver;
mod error;
mod fence;
mod lease;
mod obs;
mod store;

#[cfg(test)]
mod fuzz;

pub use config::{DEFAULT_TTL, ElectionConfig};
pub use driver::{Election, ElectionEvent, LeaderInfo, Leadership};
pub use error::{Error, ErrorKind};
pub use fence::{MAX_FENCED_WRITES, Txn};
/// The election as a pure state machine (no runtime, no I/O, no clock): the
/// [natty-election-proto](https://docs.rs/natty-election-proto) crate, which [`Election`]
/// drives on tokio.
#[doc(inline)]
pub use natty_election_proto as machine;
pub use natty_election_proto::{LostReason, Term};
pub use tokio_util::sync::CancellationToken;
