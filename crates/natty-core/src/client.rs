//! [`Client`]: one NATS connection plus its JetStream context, shared by every natty crate.

use std::{fmt, time::Duration};

use async_nats::jetstream;

use crate::{Error, ErrorKind};

/// A connected client. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct Client {
    nats: async_nats::Client,
    jetstream: jetstream::Context,
    request_timeout: Duration,
    /// The JetStream API prefix every context natty makes uses (`None`: `$JS.API`).
    api_prefix: Option<String>,
    /// The servers' `max_control_line` (not announced by them: configured, or their default).
    max_control_line: usize,
    /// The longest reply subject natty's publishes carry on this connection.
    reply_len: usize,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.nats.server_info().server_name)
            .field("state", &self.nats.connection_state())
            .field("request_timeout", &self.request_timeout)
            .field("api_prefix", &self.jetstream_api_prefix())
            .finish()
    }
}

impl Client {
    /// Wraps a connection made elsewhere; JetStream API calls time out after `request_timeout`.
    pub fn new(nats: async_nats::Client, request_timeout: Duration) -> Self {
        Self::with_api_prefix(nats, request_timeout, None)
    }

    /// Like [`new`](Self::new), with the JetStream API under `api_prefix` (default `$JS.API`;
    /// `$JS.<domain>.API` for a domain).
    pub fn with_api_prefix(
        nats: async_nats::Client,
        request_timeout: Duration,
        api_prefix: Option<String>,
    ) -> Self {
        let jetstream = context_builder(api_prefix.as_deref(), request_timeout).build(nats.clone());
        // The inbox prefix is the connection's for its whole life: one inbox says how long
        // every reply subject made from it is.
        let reply_len = nats.new_inbox().len() + crate::limits::REPLY_TAIL;
        Self {
            nats,
            jetstream,
            request_timeout,
            api_prefix,
            max_control_line: crate::limits::DEFAULT_MAX_CONTROL_LINE,
            reply_len,
        }
    }

    /// The same client, for servers whose `max_control_line` is `bytes` (default 4096): see
    /// [`ConnectOptions::max_control_line`](crate::ConnectOptions::max_control_line).
    #[must_use]
    pub fn with_max_control_line(mut self, bytes: usize) -> Self {
        self.max_control_line = bytes;
        self
    }

    /// What the server this client is connected to now accepts from it: its `max_payload`
    /// (re-read on every call: after a reconnect, the new server's) and the control line.
    /// Every natty publish path checks a message against these before sending it.
    pub fn limits(&self) -> crate::limits::Limits {
        crate::limits::Limits::new(
            self.nats.max_payload(),
            self.max_control_line,
            self.reply_len,
        )
    }

    /// A builder for another JetStream context on this connection (own ack timeout, own
    /// in-flight limit), with this client's API prefix or domain and request timeout already
    /// set. Every context natty makes comes from here, so none of them ignores a configured
    /// domain.
    pub fn jetstream_builder(&self) -> jetstream::ContextBuilder<jetstream::context::Yes> {
        context_builder(self.api_prefix.as_deref(), self.request_timeout)
    }

    /// The JetStream API prefix (`$JS.API` unless a domain or prefix was configured).
    pub fn jetstream_api_prefix(&self) -> &str {
        self.api_prefix.as_deref().unwrap_or(DEFAULT_API_PREFIX)
    }

    /// The underlying async-nats client, for anything natty does not wrap.
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// The JetStream context on this connection.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// How long requests wait for an answer.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The version of the server this client is connected to now (after a reconnect, possibly
    /// another server of the cluster).
    pub fn server_version(&self) -> Option<ServerVersion> {
        ServerVersion::parse(&self.nats.server_info().version)
    }

    /// The server's version for an error message: `2.15.1`, or `of unknown version`.
    pub fn server_version_text(&self) -> String {
        self.server_version()
            .map_or_else(|| "of unknown version".to_owned(), |v| v.to_string())
    }

    /// Whether the server this client is connected to now has `feature` (by its version; a
    /// server of unknown version is assumed to lack every optional feature).
    pub fn supports(&self, feature: Feature) -> bool {
        self.server_version().is_some_and(|v| v >= feature.since())
    }

    /// Flushes what is buffered and closes the connection after in-flight requests end.
    pub async fn drain(&self) -> Result<(), Error> {
        tracing::debug!("draining NATS connection");
        self.nats
            .drain()
            .await
            .map_err(|e| Error::with_source(ErrorKind::Other, "draining the NATS connection", e))
    }
}

/// The JetStream API prefix without a domain.
const DEFAULT_API_PREFIX: &str = "$JS.API";

fn context_builder(
    api_prefix: Option<&str>,
    request_timeout: Duration,
) -> jetstream::ContextBuilder<jetstream::context::Yes> {
    let builder = jetstream::ContextBuilder::new();
    match api_prefix {
        Some(prefix) => builder.api_prefix(prefix).timeout(request_timeout),
        None => builder.timeout(request_timeout),
    }
}

/// An optional server feature natty uses, for [`Client::supports`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Feature {
    /// Per-message TTL (`Nats-TTL`) and KV limit markers (ADR-43/48): server 2.11.
    PerKeyTtl,
    /// Atomic batch publish (`allow_atomic`): server 2.12.
    AtomicBatch,
    /// Fast-ingest batch publish (ADR-50, `allow_batched`): server 2.14.
    FastIngest,
}

impl Feature {
    /// The first server version that has the feature.
    pub fn since(self) -> ServerVersion {
        let minor = match self {
            Self::PerKeyTtl => 11,
            Self::AtomicBatch => 12,
            Self::FastIngest => 14,
        };
        ServerVersion::new(2, minor, 0)
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::PerKeyTtl => "per-key TTL",
            Self::AtomicBatch => "atomic batch publish",
            Self::FastIngest => "fast-ingest batch publish",
        };
        write!(f, "{name} (server {}+)", self.since())
    }
}

/// A NATS server version, for feature checks (`per-key TTL` needs 2.11, fast ingest 2.14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub struct ServerVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

impl ServerVersion {
    /// `major.minor.patch`.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// Parses `2.11.3`, `v2.11.3` or `2.12.0-beta.1` (the pre-release part is ignored).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim().trim_start_matches('v');
        let core = text.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
        Some(Self {
            major: parts.next()??,
            minor: parts.next().flatten().unwrap_or(0),
            patch: parts.next().flatten().unwrap_or(0),
        })
    }

    /// Whether this version is `major.minor` or newer.
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::ServerVersion;

    #[test]
    fn parses_server_versions() {
        let cases = [
            ("2.11.3", Some((2, 11, 3))),
            ("v2.15.1", Some((2, 15, 1))),
            ("2.12.0-beta.1", Some((2, 12, 0))),
            ("2.10", Some((2, 10, 0))),
            ("", None),
            ("x.y", None),
        ];
        for (text, want) in cases {
            let got = ServerVersion::parse(text).map(|v| (v.major, v.minor, v.patch));
            assert_eq!(got, want, "{text:?}");
        }
        let v = ServerVersion::parse("2.11.0").unwrap();
        assert!(v.at_least(2, 11) && v.at_least(2, 10) && !v.at_least(2, 12));
    }

    #[test]
    fn features_need_their_version() {
        use super::Feature;
        let v = |s| ServerVersion::parse(s).unwrap();
        let cases = [
            (Feature::PerKeyTtl, "2.10.9", false),
            (Feature::PerKeyTtl, "2.11.0", true),
            (Feature::AtomicBatch, "2.11.4", false),
            (Feature::AtomicBatch, "2.12.1", true),
            (Feature::FastIngest, "2.13.0", false),
            (Feature::FastIngest, "2.15.1", true),
        ];
        for (feature, version, want) in cases {
            assert_eq!(
                v(version) >= feature.since(),
                want,
                "{feature} on {version}"
            );
        }
    }
}
