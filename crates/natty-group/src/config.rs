//! [`GroupConfig`] and the key → partition hash.

use std::{hash::Hasher, time::Duration};

use natty_core::names;
use natty_stream::ConsumeOptions;

use crate::{Error, ErrorKind};

/// A consumer group's settings. Required: group name, stream, subject prefix, partition count
/// and this member's name; the rest defaults.
///
/// ```
/// use natty_group::GroupConfig;
/// let cfg = GroupConfig::new("billing", "ORDERS", "orders", 12, "node-1");
/// assert!(cfg.validate().is_ok());
/// assert_eq!(cfg.subject_for("customer-42").unwrap(), format!("orders.{}.customer-42", cfg.partition_of("customer-42")));
/// assert!(GroupConfig::new("billing", "ORDERS", "orders", 0, "node-1").validate().is_err());
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GroupConfig {
    /// The group's name: its durables are `<name>_p<partition>_<epoch>_<revision>` (one per
    /// owner term; `<name>_p<partition>` is the initial one), its buckets `<name>_leases` and
    /// `<name>_members`.
    pub name: String,
    /// The stream holding the messages.
    pub stream: String,
    /// Messages are published to `<subject_prefix>.<partition>.<key>`
    /// ([`subject_for`](Self::subject_for)); the stream must capture `<subject_prefix>.>`.
    pub subject_prefix: String,
    /// Partitions (1 to 1024). Fixed for the group's life: changing it moves keys between
    /// partitions.
    pub partitions: u32,
    /// This member's name, unique among the members.
    pub member: String,
    /// Lease and membership TTL (default 10 s, whole seconds): a killed member's partitions
    /// move after about this long.
    pub ttl: Duration,
    /// `ack_wait` of the partitions' durables (default 30 s).
    pub ack_wait: Duration,
    /// How each partition is consumed (concurrency, retries, dead letters...). The group sets
    /// per-key order on the key part of the subject.
    pub consume: ConsumeOptions,
    /// Replicas of the group's buckets when created (default 1; 3 in a cluster).
    pub replicas: usize,
}

/// Most partitions a group may have.
pub const MAX_PARTITIONS: u32 = 1024;

/// Longest lease and membership TTL accepted.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

impl GroupConfig {
    /// A group `name` over `stream`, messages on `<subject_prefix>.<partition>.<key>`, with
    /// `partitions` partitions, joined as `member`.
    pub fn new(
        name: impl Into<String>,
        stream: impl Into<String>,
        subject_prefix: impl Into<String>,
        partitions: u32,
        member: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            stream: stream.into(),
            subject_prefix: subject_prefix.into(),
            partitions,
            member: member.into(),
            ttl: Duration::from_secs(10),
            ack_wait: Duration::from_secs(30),
            consume: ConsumeOptions::default(),
            replicas: 1,
        }
    }

    /// Lease and membership TTL.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// `ack_wait` of the partitions' durables.
    #[must_use]
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// How each partition is consumed.
    #[must_use]
    pub fn consume(mut self, options: ConsumeOptions) -> Self {
        self.consume = options;
        self
    }

    /// Bucket replicas.
    #[must_use]
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// The partition of `key`: FNV-1a (64-bit) of the key's bytes, modulo the partition
    /// count. Stable across natty versions, platforms and processes (the FNV-1a spec fixes
    /// it), so publishers and members always agree.
    pub fn partition_of(&self, key: &str) -> u32 {
        partition_of(key, self.partitions)
    }

    /// The subject to publish a message with `key` to: `<prefix>.<partition>.<key>`. The key
    /// must be valid in a subject (tokens separated by dots, no whitespace or wildcards).
    pub fn subject_for(&self, key: &str) -> Result<String, Error> {
        let subject = format!("{}.{}.{key}", self.subject_prefix, self.partition_of(key));
        names::subject(&subject).map_err(|e| e.map_kind(|_| ErrorKind::InvalidName))?;
        Ok(subject)
    }

    /// The initial durable of `partition`, and the prefix of its owners' durables
    /// (`<name>_p<partition>_<epoch>_<revision>`, one per lease term).
    pub fn durable(&self, partition: u32) -> String {
        format!("{}_p{partition}", self.name)
    }

    /// The subject filter of `partition`.
    pub fn filter(&self, partition: u32) -> String {
        format!("{}.{partition}.>", self.subject_prefix)
    }

    pub(crate) fn lease_bucket(&self) -> String {
        format!("{}_leases", self.name)
    }

    pub(crate) fn members_bucket(&self) -> String {
        format!("{}_members", self.name)
    }

    /// Checks the configuration without touching the network.
    pub fn validate(&self) -> Result<(), Error> {
        let name = |r: Result<&str, natty_core::Error>| {
            r.map(drop)
                .map_err(|e| e.map_kind(|_| ErrorKind::InvalidName))
        };
        name(names::bucket(&self.lease_bucket()))?;

        name(names::stream(&self.stream))?;
        name(names::subject(&self.subject_prefix))?;
        name(names::key(&self.member))?;
        let invalid = |what: String| {
            Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("consumer group {:?}: {what}", self.name),
            ))
        };
        if !(1..=MAX_PARTITIONS).contains(&self.partitions) {
            return invalid(format!(
                "partitions must be 1 to {MAX_PARTITIONS}, got {}",
                self.partitions
            ));
        }
        if self.ttl < Duration::from_secs(1) || self.ttl > MAX_TTL || self.ttl.subsec_nanos() != 0 {
            return invalid(format!(
                "ttl must be whole seconds, 1 s to {MAX_TTL:?}, got {:?}",
                self.ttl
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return invalid(format!("replicas must be 1 to 5, got {}", self.replicas));
        }
        // The longest durable an owner can get (the last partition, the largest term), as a
        // take-over creates it: its name length, filter and `ack_wait` are checked here.
        let last = self.partitions - 1;
        natty_stream::ConsumerConfig::new(
            &self.stream,
            format!("{}_{}_{}", self.durable(last), u64::MAX, u64::MAX),
        )
        .filter_subjects([self.filter(last)])
        .ack_wait(self.ack_wait)
        .validate()
        .map_err(crate::error::from_stream)?;
        // What the other crates check when the group hands its settings on — a partition's
        // consumer, its lease, the membership bucket — is checked here, before anything is
        // sent: a group that starts with them could only idle (a `batch(0)` consumer pulls
        // nothing, term after term) or fail partition by partition.
        let context = |what: &str, e: &dyn std::fmt::Display| {
            format!("consumer group {:?}: {what}: {e}", self.name)
        };
        self.consume.validate().map_err(|e| {
            let kind = match e.kind() {
                natty_stream::ErrorKind::InvalidName => ErrorKind::InvalidName,
                _ => ErrorKind::InvalidConfig,
            };
            Error::new(kind, context("consume options", &e))
        })?;
        self.lease_config(last).validate().map_err(|e| {
            let kind = match e.kind() {
                natty_election::ErrorKind::InvalidName => ErrorKind::InvalidName,
                _ => ErrorKind::InvalidConfig,
            };
            Error::new(kind, context("partition lease", &e))
        })?;
        self.members_config().validate().map_err(|e| {
            let kind = match e.kind() {
                natty_kv::ErrorKind::InvalidName => ErrorKind::InvalidName,
                _ => ErrorKind::InvalidConfig,
            };
            Error::new(kind, context("membership bucket", &e))
        })?;
        Ok(())
    }

    /// The lease (election) of `partition`.
    pub(crate) fn lease_config(&self, partition: u32) -> natty_election::ElectionConfig {
        natty_election::ElectionConfig::new(
            self.lease_bucket(),
            format!("p{partition}"),
            &self.member,
        )
        .ttl(self.ttl)
        // A resigned partition's handlers get margin / 2 to finish before they are
        // aborted: a quarter of the TTL, not the election's default tenth.
        .margin(self.ttl / 4)
        .replicas(self.replicas)
        .description(format!(
            "natty consumer group {:?}: partition leases",
            self.name
        ))
    }

    /// The membership bucket: a key per live member, expiring after the TTL.
    pub(crate) fn members_config(&self) -> natty_kv::BucketConfig {
        natty_kv::BucketConfig::new(self.members_bucket())
            .ttl(self.ttl)
            .replicas(self.replicas)
            .description(format!("natty consumer group {:?}: members", self.name))
    }

    /// Tokens in the subject prefix: the partition is the next token, the key the rest.
    pub(crate) fn prefix_tokens(&self) -> usize {
        self.subject_prefix.split('.').count()
    }
}

/// FNV-1a 64 of `key` modulo `partitions` (see [`GroupConfig::partition_of`]).
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    let mut h = fnv::FnvHasher::default();
    // `write` of the raw bytes, not `Hash::hash` (which appends a terminator): plain FNV-1a.
    h.write(key.as_bytes());
    u32::try_from(h.finish() % u64::from(partitions.max(1))).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_plain_fnv1a_and_never_changes() {
        // FNV-1a 64 test vectors (offset basis for "", published values for "a" and "foobar").
        let raw = |s: &str| {
            let mut h = fnv::FnvHasher::default();
            h.write(s.as_bytes());
            h.finish()
        };
        assert_eq!(raw(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(raw("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(raw("foobar"), 0x8594_4171_f739_67e8);
        // Pinned partitions: a change here re-routes every user's keys.
        let got: Vec<u32> = ["a", "foobar", "customer-42", "k0"]
            .iter()
            .map(|k| partition_of(k, 12))
            .collect();
        let want: Vec<u32> = [0xaf63_dc4c_8601_ec8c_u64, 0x8594_4171_f739_67e8]
            .iter()
            .map(|h| u32::try_from(h % 12).unwrap_or(0))
            .collect();
        assert_eq!(got[..2], want[..]);
        assert!(got.iter().all(|p| *p < 12));
    }

    #[test]
    fn five_hundred_keys_spread_over_twelve_partitions() {
        let mut counts = [0u32; 12];
        for k in 0..500 {
            counts[partition_of(&format!("key-{k}"), 12) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (20..=65).contains(c)), "{counts:?}");
    }

    #[test]
    fn nonsense_is_refused_before_the_network() {
        let ok = GroupConfig::new("g", "S", "orders", 12, "m1");
        assert!(ok.validate().is_ok());
        for (cfg, kind) in [
            (
                GroupConfig::new("g", "S", "orders", 0, "m1"),
                ErrorKind::InvalidConfig,
            ),
            (
                GroupConfig::new("g", "S", "orders", 2000, "m1"),
                ErrorKind::InvalidConfig,
            ),
            (
                ok.clone().ttl(Duration::from_millis(1500)),
                ErrorKind::InvalidConfig,
            ),
            (
                GroupConfig::new("g.x", "S", "orders", 12, "m1"),
                ErrorKind::InvalidName,
            ),
            (
                GroupConfig::new("g", "S", "orders.*", 12, "m1"),
                ErrorKind::InvalidName,
            ),
            (
                GroupConfig::new("g", "S", "orders", 12, "bad name"),
                ErrorKind::InvalidName,
            ),
            // A fine bucket name, but an owner's durable (`_p11_<u64>_<u64>`) would pass 255.
            (
                GroupConfig::new("g".repeat(220), "S", "orders", 12, "m1"),
                ErrorKind::InvalidName,
            ),
            // The durables' ack_wait, checked before any take-over.
            (
                ok.clone().ack_wait(Duration::from_millis(50)),
                ErrorKind::InvalidConfig,
            ),
            (ok.clone().ttl(Duration::MAX), ErrorKind::InvalidConfig),
            // The partitions' consume options (natty-stream's own checks): a consumer that
            // pulls nothing, or one whose pulls never see a heartbeat before they expire,
            // would make `join` idle forever, one durable per term.
            (
                ok.clone().consume(ConsumeOptions::default().batch(0)),
                ErrorKind::InvalidConfig,
            ),
            (
                ok.clone().consume(ConsumeOptions::default().concurrency(0)),
                ErrorKind::InvalidConfig,
            ),
            (
                ok.clone()
                    .consume(ConsumeOptions::default().heartbeat(Duration::from_secs(20))),
                ErrorKind::InvalidConfig,
            ),
            (
                ok.clone()
                    .consume(ConsumeOptions::default().expires(Duration::MAX)),
                ErrorKind::InvalidConfig,
            ),
            (
                ok.clone()
                    .consume(ConsumeOptions::default().dead_letter("bad subject")),
                ErrorKind::InvalidName,
            ),
        ] {
            assert_eq!(
                cfg.validate().map_err(|e| e.kind()).err(),
                Some(kind),
                "{cfg:?}"
            );
        }
        assert_eq!(
            ok.subject_for("a b").map_err(|e| e.kind()).err(),
            Some(ErrorKind::InvalidName)
        );
        // The error names what was refused.
        let e = ok
            .clone()
            .consume(ConsumeOptions::default().batch(0))
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("consume options"), "{e}");
    }
}
