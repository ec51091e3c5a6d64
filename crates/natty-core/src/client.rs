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
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.nats.server_info().server_name)
            .field("state", &self.nats.connection_state())
            .field("request_timeout", &self.request_timeout)
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
        let builder = jetstream::ContextBuilder::new().timeout(request_timeout);
        let jetstream = match api_prefix {
            Some(prefix) => builder.api_prefix(prefix).build(nats.clone()),
            None => builder.build(nats.clone()),
        };
        Self {
            nats,
            jetstream,
            request_timeout,
        }
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

    /// Flushes what is buffered and closes the connection after in-flight requests end.
    pub async fn drain(&self) -> Result<(), Error> {
        tracing::debug!("draining NATS connection");
        self.nats
            .drain()
            .await
            .map_err(|e| Error::with_source(ErrorKind::Other, "draining the NATS connection", e))
    }
}

/// A NATS server version, for feature checks (`per-key TTL` needs 2.11, fast ingest 2.14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

impl ServerVersion {
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
}
