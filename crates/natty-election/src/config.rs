//! [`ElectionConfig`].

use std::time::Duration;

use crate::{Error, ErrorKind, error::from_kv, machine::MachineConfig};

/// An election's settings. Required: bucket, key and this node's name; the rest defaults.
///
/// ```
/// use std::time::Duration;
/// use natty_election::ElectionConfig;
/// let cfg = ElectionConfig::new("elections", "billing-cron", "node-1").ttl(Duration::from_secs(5));
/// assert!(cfg.validate().is_ok());
/// let bad = cfg.clone().renew_interval(Duration::from_secs(5));
/// assert!(bad.validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ElectionConfig {
    /// The KV bucket holding the lease key.
    pub bucket: String,
    /// The lease key: one election per key.
    pub key: String,
    /// This candidate's name, shown to others as the leader's name.
    pub node_name: String,
    /// How long a lease lives without renewal (default 10 s, at least 1 s, whole seconds when
    /// the server has per-key TTL). A crashed leader is replaced within about this long.
    pub ttl: Duration,
    /// How often the leader renews (default `ttl / 3`).
    pub renew_interval: Option<Duration>,
    /// Work stops this long before the lease could expire (default `max(ttl / 10, 100 ms)`).
    pub margin: Option<Duration>,
    /// Bucket replicas when the bucket is created (default 1; use 3 in a cluster).
    pub replicas: usize,
    /// Bucket description when the bucket is created.
    pub description: String,
}

/// The default lease TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

impl ElectionConfig {
    /// An election on `bucket`/`key` for the candidate `node_name`.
    pub fn new(
        bucket: impl Into<String>,
        key: impl Into<String>,
        node_name: impl Into<String>,
    ) -> Self {
        Self {
            bucket: bucket.into(),
            key: key.into(),
            node_name: node_name.into(),
            ttl: DEFAULT_TTL,
            renew_interval: None,
            margin: None,
            replicas: 1,
            description: "natty leader election".to_owned(),
        }
    }

    /// Lease TTL.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Renew interval.
    #[must_use]
    pub fn renew_interval(mut self, interval: Duration) -> Self {
        self.renew_interval = Some(interval);
        self
    }

    /// Safety margin.
    #[must_use]
    pub fn margin(mut self, margin: Duration) -> Self {
        self.margin = Some(margin);
        self
    }

    /// Bucket replicas.
    #[must_use]
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Bucket description.
    #[must_use]
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// The state machine's timing.
    pub fn machine(&self) -> MachineConfig {
        let mut m = MachineConfig::new(self.ttl);
        if let Some(r) = self.renew_interval {
            m = m.renew_interval(r).poll_interval(r);
        }
        if let Some(margin) = self.margin {
            m = m.margin(margin);
        }
        m
    }

    /// Checks the configuration without touching the network.
    pub fn validate(&self) -> Result<(), Error> {
        natty_core::names::bucket(&self.bucket)
            .map_err(|e| from_kv(e.map_kind(|_| natty_kv::ErrorKind::InvalidName)))?;
        natty_core::names::key(&self.key)
            .map_err(|e| from_kv(e.map_kind(|_| natty_kv::ErrorKind::InvalidName)))?;
        let invalid = |what: String| {
            Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("election {:?}/{:?}: {what}", self.bucket, self.key),
            ))
        };
        if self.node_name.trim().is_empty() {
            return invalid("node_name must not be empty".to_owned());
        }
        if !(1..=5).contains(&self.replicas) {
            return invalid(format!("replicas must be 1 to 5, got {}", self.replicas));
        }
        if self.ttl.subsec_nanos() != 0 {
            return invalid(format!(
                "ttl must be whole seconds (the server's per-key TTL is), got {:?}",
                self.ttl
            ));
        }
        if let Err(why) = self.machine().check() {
            return invalid(why);
        }
        Ok(())
    }
}
