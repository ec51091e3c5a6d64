//! natty-group: Kafka-like consumer groups on NATS JetStream — per-key order, partitions in
//! parallel, spread over whichever processes are alive, without an operator.
//!
//! - **Partitions by subject.** A message with key `k` is published to
//!   `<prefix>.<partition>.<k>` ([`GroupConfig::subject_for`]), the partition being FNV-1a of
//!   the key modulo the partition count: stable across versions and languages (FNV-1a is a
//!   published spec). The publisher puts the partition in the subject — rather than a stream
//!   subject transform — so any existing stream with limits or interest retention works (not
//!   work-queue), the hash is ours to pin, and a reader of a subject sees its partition.
//! - **One owner per partition.** Each partition has a lease (a natty-election on
//!   `<name>_leases`/`p<i>`); only the lease holder consumes it, with per-key order
//!   ([`ConsumeOptions::ordered_by_key`](natty_stream::ConsumeOptions::ordered_by_key)), from
//!   a durable pull consumer of its own term (`<name>_p<i>_<epoch>_<revision>`, filtered on
//!   `<prefix>.<i>.>`), created right after the previous owner's ack floor; the earlier
//!   durables are deleted, so the server itself refuses what an old owner still has in flight.
//!   The lease term is handed to the handler as a fencing token ([`Partition::term`]).
//!   Durables filtered per partition rather than ADR-42 pinned-client priority groups: the
//!   lease (not the server's pin) decides the owner, which is what lets the hand-over wait
//!   until the previous owner's handlers are done.
//! - **Self-balancing.** Members announce themselves in `<name>_members` (a key with the
//!   group's TTL); a member contests partitions only while it owns fewer than ⌈P/N⌉ and
//!   resigns those above it. A member that leaves (cancel) resigns at once; one that dies
//!   loses its leases after the TTL.
//! - **Hand-over after the previous owner stopped.** A resigned partition's consumer stops
//!   first (handlers finish — or are aborted `ttl / 8` later —, acks are flushed), and only
//!   then is the lease released. A lost one (expired, taken) is dropped at once: the next
//!   owner may already have started. Handlers check [`Partition::is_owned`] right before a
//!   side effect: a member paused past its lease wakes up before it noticed.
//!
//! - **Says when it is broken.** What fails and is retried (a take-over the server refuses,
//!   a lease bucket made with another TTL, announcements that fail) is shown by
//!   [`ConsumerGroup::health`], as [`GroupEvent::Failing`] and in metrics; what cannot heal —
//!   a closed client, the stream deleted and not back within the grace period — ends
//!   [`ConsumerGroup::join`] with an error.
//!
//! Limits: what a previous owner left unfinished comes first to the next owner, in stream
//! order; what it acknowledged after its first unfinished message runs again (at-least-once,
//! delivery counts restart with each durable). Balance is ⌈P/N⌉ at most per member; with P
//! not a multiple of N a member may own fewer than ⌊P/N⌋ until the next change. See the
//! workspace README, "Consumer groups".
//!
//! # Feature flags
//! - `metrics`: the group's metrics through the [`metrics`](https://docs.rs/metrics) facade
//!   (`natty_group_*`: members, owned partitions, take-overs and their time, releases,
//!   failures; see the workspace README, "Observability"), and those of natty-stream,
//!   natty-kv and natty-election underneath.

#![cfg_attr(docsrs, feature(doc_cfg))]

// The README (also the crates.io page): its example is compiled.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod config;
mod durables;
mod error;
mod group;
mod health;
mod members;
mod obs;

pub use config::{GroupConfig, MAX_PARTITIONS, partition_of};
pub use error::{Error, ErrorKind};
pub use group::{ConsumerGroup, GroupEvent, Partition};
pub use health::{Area, Health, Problem};
pub use natty_election::Term;
pub use tokio_util::sync::CancellationToken;
