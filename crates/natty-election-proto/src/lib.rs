//! natty-election-proto: the leader election of [natty-election] as a pure state machine.
//!
//! No async runtime, no I/O, no clock: the crate is `no_std` (it needs only `alloc`) and has
//! no dependencies, so the compiler itself keeps it that way. Time is passed in as an
//! [`Instant`] (the driver's monotonic clock, from an origin of its choosing). natty-election
//! drives it on tokio against NATS KV and re-exports it as `natty_election::machine`; a test
//! drives it in virtual time (quinn-proto / str0m style).
//!
//! The driver tells the [`Machine`] what happened through one `on_*` method per input, each
//! with the current time: [`Machine::on_timeout`], [`Machine::on_reply`] (the outcome of the
//! lease request it asked for), [`Machine::on_key_gone`] / [`Machine::on_key_written`] (what
//! the watch on the key saw), [`Machine::on_work_ended`] and [`Machine::on_shutdown`]. Each
//! method's doc lists its transitions. The machine answers, typed by kind, with [`Work`] to
//! start or stop ([`Machine::poll_work`], carried out first), at most one lease [`Request`] in
//! flight ([`Machine::poll_request`]), [`Event`]s to report, and [`Machine::poll_timeout`],
//! the instant at which it must be told the time again. [`FenceQueue`] is the driver's policy
//! for the leader's fenced writes waiting for their turn.
//!
//! Safety rules, all enforced here:
//! - Acquire only with a create (one winner); renew only with a write conditioned on the
//!   revision we hold. A conflict on renew means we lost: stop work at once.
//! - Self-fencing: the lease is trusted only until `sent + ttl - margin`, where `sent` is when
//!   the last *successful* renew (or create) was sent — the server's TTL started no earlier.
//!   Past that instant the machine stops work even if no reply ever came.
//! - After a fence or a failed renew, we try to *reclaim* our own key (a write conditioned on
//!   our last revision): if nobody else took it, we lead again without waiting out the TTL.
//!   A reclaim leads only if answered before the revision it is conditioned on could expire
//!   (`its send + ttl - margin / 2`): the server can ack a write that arrives at the expiry of
//!   the revision it replaces and then wipe it with that revision's expiry marker.
//!
//! ```
//! use std::time::Duration;
//! use natty_election_proto::{Instant, Machine, MachineConfig, Reply, Request, Term, Work};
//!
//! let t0 = Instant::ZERO;
//! let mut m = Machine::new(MachineConfig::new(Duration::from_secs(3)), t0);
//! assert_eq!(m.poll_request(), Some(Request::Create { make_bucket: false }));
//! m.on_reply(t0, Reply::Created { revision: 7, epoch: 1 });
//! assert_eq!(m.poll_work(), Some(Work::Start { term: Term::new(1, 7) }));
//! assert!(m.is_leader(t0));
//! ```
//!
//! [natty-election]: https://docs.rs/natty-election

// The library is `no_std`: no clock, no I/O, no runtime can be reached from it. (Its unit
// tests use std.)
#![cfg_attr(not(test), no_std)]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate alloc;

mod fence;
mod machine;
mod term;
mod time;

pub use fence::{FenceQueue, Verdict};
pub use machine::{
    Event, Holder, LostReason, MIN_MARGIN, Machine, MachineConfig, Own, Reply, Request, State, Work,
};
pub use term::Term;
pub use time::Instant;

// The README (also the crates.io page): its example is compiled and run.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
