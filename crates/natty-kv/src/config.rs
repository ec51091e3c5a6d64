//! [`BucketConfig`] and TTL rules.

use std::time::Duration;

use crate::{Error, ErrorKind, error::from_core};

/// Where a bucket keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Storage {
    /// On disk (survives a server restart).
    #[default]
    File,
    /// In memory.
    Memory,
}

/// The most history a bucket may keep per key (a server limit).
pub const MAX_HISTORY: u8 = 64;

/// The largest per-key TTL the server accepts (a Go `time.Duration` holds ~292 years).
pub const MAX_KEY_TTL: Duration = Duration::from_secs(9_223_372_036);

/// How long delete/expiry markers stay by default in a bucket with per-key TTL.
pub const DEFAULT_MARKER_TTL: Duration = Duration::from_secs(60);

/// A bucket's configuration. Required: the name; everything else has a default.
///
/// The defaults for buckets that `Kv` creates on demand are a `BucketConfig` too, without a
/// name: `Kv::with_defaults(client, BucketConfig::default().replicas(3))`.
///
/// ```
/// use std::time::Duration;
/// let cfg = natty_kv::BucketConfig::new("sessions").ttl(Duration::from_secs(3600)).history(5);
/// assert!(cfg.validate().is_ok());
/// assert!(natty_kv::BucketConfig::new("bad name").validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BucketConfig {
    /// Bucket name (`A-Z a-z 0-9 _ -`).
    pub name: String,
    /// Free text shown in the server's monitoring.
    pub description: String,
    /// Every entry expires this long after it was written; `None` keeps entries forever.
    pub ttl: Option<Duration>,
    /// Revisions kept per key, 1 to 64 (default 1).
    pub history: u8,
    /// Copies in a cluster, 1 to 5 (default 1; use 3 in production clusters).
    pub replicas: usize,
    /// File (default) or memory.
    pub storage: Storage,
    /// Enable per-key TTL and expiry markers (server 2.11+; default on). With it, watchers see
    /// expiry as an event and `create_with_ttl` works. On an older server an auto-created
    /// bucket is made without it, and `create_with_ttl` then fails with `Unsupported`.
    pub per_key_ttl: bool,
    /// How long delete, purge and expiry markers stay in a bucket with per-key TTL (default
    /// 60 s, at least 1 s). They tell watchers and `create` that a key is gone; after this they
    /// are removed too, so a watch disconnected for longer may miss an `Expired` event (it
    /// then sees the key's next write only).
    pub marker_ttl: Duration,
    /// Allow atomic batch writes to the bucket's stream (`allow_atomic`, server 2.12+; default
    /// off): all of a batch's writes are stored or none. natty-election's fenced writes need it
    /// in the election's bucket. Ignored (with a warning) on an older server.
    pub atomic_writes: bool,
}

impl Default for BucketConfig {
    /// The defaults with no name: for [`Kv::with_defaults`](crate::Kv::with_defaults), which
    /// names each bucket it creates.
    fn default() -> Self {
        Self::new(String::new())
    }
}

impl BucketConfig {
    /// A bucket with default settings: no TTL, history 1, 1 replica, file storage, per-key TTL.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            description: String::new(),
            ttl: None,
            history: 1,
            replicas: 1,
            storage: Storage::File,
            per_key_ttl: true,
            marker_ttl: DEFAULT_MARKER_TTL,
            atomic_writes: false,
        }
    }

    /// Allow atomic batch writes (see [`atomic_writes`](Self::atomic_writes)).
    #[must_use]
    pub fn atomic_writes(mut self, enabled: bool) -> Self {
        self.atomic_writes = enabled;
        self
    }

    /// How long delete, purge and expiry markers stay (bucket with per-key TTL only).
    #[must_use]
    pub fn marker_ttl(mut self, ttl: Duration) -> Self {
        self.marker_ttl = ttl;
        self
    }

    /// Entries expire `ttl` after their last write.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Keep `history` revisions per key.
    #[must_use]
    pub fn history(mut self, history: u8) -> Self {
        self.history = history;
        self
    }

    /// Keep `replicas` copies in a cluster.
    #[must_use]
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Storage backend.
    #[must_use]
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }

    /// Description.
    #[must_use]
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Enable or disable per-key TTL and expiry markers.
    #[must_use]
    pub fn per_key_ttl(mut self, enabled: bool) -> Self {
        self.per_key_ttl = enabled;
        self
    }

    /// The same settings for another bucket name.
    #[must_use]
    pub fn with_name(&self, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..self.clone()
        }
    }

    /// Checks the configuration without touching the network.
    pub fn validate(&self) -> Result<(), Error> {
        natty_core::names::bucket(&self.name).map_err(from_core)?;
        let invalid = |what: String| {
            Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("bucket {:?}: {what}", self.name),
            ))
        };
        if !(1..=MAX_HISTORY).contains(&self.history) {
            return invalid(format!(
                "history must be 1 to {MAX_HISTORY}, got {}",
                self.history
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return invalid(format!(
                "replicas must be 1 to 5 (replicaCount must be greater than 0), got {}",
                self.replicas
            ));
        }
        if let Some(ttl) = self.ttl
            && ttl < Duration::from_millis(100)
        {
            return invalid(format!(
                "ttl must be at least 100ms (or None for no expiry), got {ttl:?}"
            ));
        }
        if self.marker_ttl < Duration::from_secs(1) || self.marker_ttl > MAX_KEY_TTL {
            return invalid(format!(
                "marker_ttl must be 1s to {MAX_KEY_TTL:?}, got {:?}",
                self.marker_ttl
            ));
        }
        Ok(())
    }
}

/// Checks a per-key TTL: the server takes whole seconds, and async-nats would truncate a
/// sub-second TTL to 0, which the server ignores (the key would never expire); the server
/// refuses TTLs above [`MAX_KEY_TTL`].
pub fn validate_key_ttl(ttl: Duration) -> Result<u64, Error> {
    if ttl < Duration::from_secs(1) || ttl.subsec_nanos() != 0 || ttl > MAX_KEY_TTL {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "a per-key TTL must be a whole number of seconds, 1s to {}s; got {ttl:?}",
                MAX_KEY_TTL.as_secs()
            ),
        ));
    }
    Ok(ttl.as_secs())
}

/// Parses a `Nats-TTL` header value: whole seconds (`30`), a Go duration (`1m30s`, `500ms`),
/// or `never`. `Ok(None)` means never.
pub(crate) fn parse_ttl_header(value: &str) -> Option<Option<Duration>> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.eq_ignore_ascii_case("never") {
        return Some(None);
    }
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Some(Duration::from_secs(secs)));
    }
    let mut total = Duration::ZERO;
    let mut rest = value;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&i| i > 0)?;
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(Duration::try_from_secs_f64(number * unit).ok()?)?;
    }
    Some(Some(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation_rejects_nonsense_without_io() {
        let cases = [
            (BucketConfig::new("ok"), None),
            (BucketConfig::new(""), Some(ErrorKind::InvalidName)),
            (
                BucketConfig::new("bad bucket name"),
                Some(ErrorKind::InvalidName),
            ),
            (
                BucketConfig::new("b").replicas(0),
                Some(ErrorKind::InvalidConfig),
            ),
            (
                BucketConfig::new("b").replicas(6),
                Some(ErrorKind::InvalidConfig),
            ),
            (
                BucketConfig::new("b").history(0),
                Some(ErrorKind::InvalidConfig),
            ),
            (
                BucketConfig::new("b").history(65),
                Some(ErrorKind::InvalidConfig),
            ),
            (
                BucketConfig::new("b").ttl(Duration::from_millis(5)),
                Some(ErrorKind::InvalidConfig),
            ),
            (
                BucketConfig::new("b")
                    .ttl(Duration::from_secs(10))
                    .history(64)
                    .replicas(5),
                None,
            ),
        ];
        for (cfg, want) in cases {
            let got = cfg.validate().err().map(|e| e.kind());
            assert_eq!(got, want, "{cfg:?}");
        }
        let err = BucketConfig::new("b").replicas(0).validate().unwrap_err();
        assert!(
            err.to_string()
                .contains("replicaCount must be greater than 0"),
            "{err}"
        );
    }

    #[test]
    fn key_ttl_must_be_whole_seconds() {
        assert_eq!(validate_key_ttl(Duration::from_secs(1)).unwrap(), 1);
        assert_eq!(validate_key_ttl(Duration::from_secs(90)).unwrap(), 90);
        for bad in [
            Duration::ZERO,
            Duration::from_millis(999),
            Duration::from_millis(1500),
            Duration::from_nanos(10_000_000_001),
        ] {
            let err = validate_key_ttl(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{bad:?}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn ttl_headers_parse() {
        let s = |n| Some(Some(Duration::from_secs(n)));
        assert_eq!(parse_ttl_header("30"), s(30));
        assert_eq!(parse_ttl_header("30s"), s(30));
        assert_eq!(parse_ttl_header("1m30s"), s(90));
        assert_eq!(parse_ttl_header("2h"), s(7200));
        assert_eq!(
            parse_ttl_header("1500ms"),
            Some(Some(Duration::from_millis(1500)))
        );
        assert_eq!(parse_ttl_header("never"), Some(None));
        assert_eq!(parse_ttl_header("soon"), None);
        assert_eq!(parse_ttl_header("5x"), None);
        assert_eq!(parse_ttl_header(""), None);
    }

    #[test]
    fn ttl_header_sums_never_overflow() {
        // Each part fits a Duration; their sum does not.
        let long = "5000000000000000000s".repeat(8);
        assert_eq!(parse_ttl_header(&long), None);
        let hours = "99999999999999h".repeat(300);
        assert_eq!(parse_ttl_header(&hours), None);
    }

    #[test]
    fn key_ttl_has_the_servers_upper_bound() {
        assert_eq!(
            validate_key_ttl(MAX_KEY_TTL).unwrap(),
            MAX_KEY_TTL.as_secs()
        );
        let err = validate_key_ttl(MAX_KEY_TTL + Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
        let err = BucketConfig::new("b")
            .marker_ttl(Duration::from_millis(10))
            .validate()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    }
}
