//! [`ConnectOptions`]: servers, TLS, auth and timeouts, as a consuming builder (async-nats'
//! `options.rs` shape).

use std::{path::PathBuf, time::Duration};

use crate::{
    Error, ErrorKind,
    tls::{Pem, TlsOptions},
};

/// How to authenticate to the server.
#[derive(Clone, Default)]
pub(crate) enum Auth {
    #[default]
    None,
    CredentialsFile(PathBuf),
    Credentials(String),
    NkeySeed(String),
    Token(String),
    UserPassword(String, String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets are never printed.
        match self {
            Self::None => f.write_str("None"),
            Self::CredentialsFile(path) => f.debug_tuple("CredentialsFile").field(path).finish(),
            Self::Credentials(_) => f.write_str("Credentials(..)"),
            Self::NkeySeed(_) => f.write_str("NkeySeed(..)"),
            Self::Token(_) => f.write_str("Token(..)"),
            Self::UserPassword(user, _) => f.debug_tuple("UserPassword").field(user).finish(),
        }
    }
}

/// Where and how to connect.
///
/// ```no_run
/// # async fn example() -> Result<(), natty_core::Error> {
/// let client = natty_core::ConnectOptions::new(["nats://n1:4222", "nats://n2:4222"])
///     .ca_file("assets/ca.pem")
///     .client_cert_files("assets/client.pem", "assets/client-key.pem")
///     .user_password("app", "secret")
///     .name("billing")
///     .connect()
///     .await?;
/// # let _ = client; Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ConnectOptions {
    pub(crate) servers: Vec<String>,
    pub(crate) tls: TlsOptions,
    pub(crate) auth: Auth,
    pub(crate) name: Option<String>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) ping_interval: Duration,
}

/// The default time to wait for one server to accept a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The default time to wait for a request (including JetStream API calls) to be answered.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The default client PING interval: a connection that misses two is dropped and re-made, so
/// a server cut off by a network partition is left after ~20 s (async-nats' own default, 60 s,
/// takes two minutes).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(10);

impl ConnectOptions {
    /// Connect to any of `servers` (`nats://host:port`, `tls://host:port` or `host:port`);
    /// the client reconnects across all of them (and servers the cluster announces).
    pub fn new<S: Into<String>>(servers: impl IntoIterator<Item = S>) -> Self {
        Self {
            servers: servers.into_iter().map(Into::into).collect(),
            tls: TlsOptions::default(),
            auth: Auth::None,
            name: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            ping_interval: DEFAULT_PING_INTERVAL,
        }
    }

    /// Trust server certificates signed by the CA in this PEM file (instead of the system roots).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.ca = Some(Pem::File(path.into()));
        self
    }

    /// Trust server certificates signed by this CA, given as PEM text.
    pub fn ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.tls.ca = Some(Pem::Text(pem.into()));
        self
    }

    /// Present this client certificate and key (PEM files) for mutual TLS.
    pub fn client_cert_files(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls.client_cert = Some((Pem::File(cert.into()), Pem::File(key.into())));
        self
    }

    /// Present this client certificate and key, given as PEM text, for mutual TLS.
    pub fn client_cert_pem(mut self, cert: impl Into<String>, key: impl Into<String>) -> Self {
        self.tls.client_cert = Some((Pem::Text(cert.into()), Pem::Text(key.into())));
        self
    }

    /// Require TLS even if the server does not ask for it.
    pub fn require_tls(mut self) -> Self {
        self.tls.required = true;
        self
    }

    /// Start the TLS handshake before the server's INFO (servers with `handshake_first`).
    pub fn tls_handshake_first(mut self) -> Self {
        self.tls.handshake_first = true;
        self
    }

    /// Accept any server certificate. The connection is encrypted but the server is not
    /// authenticated: for development only. Logs a warning on every connect.
    pub fn danger_skip_verify(mut self) -> Self {
        self.tls.skip_verify = true;
        self
    }

    /// Authenticate with a `.creds` file (JWT + nkey seed).
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.auth = Auth::CredentialsFile(path.into());
        self
    }

    /// Authenticate with the contents of a `.creds` file.
    pub fn credentials(mut self, creds: impl Into<String>) -> Self {
        self.auth = Auth::Credentials(creds.into());
        self
    }

    /// Authenticate with an nkey seed (`SU...`).
    pub fn nkey_seed(mut self, seed: impl Into<String>) -> Self {
        self.auth = Auth::NkeySeed(seed.into());
        self
    }

    /// Authenticate with a token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.auth = Auth::Token(token.into());
        self
    }

    /// Authenticate with a user name and password.
    pub fn user_password(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Auth::UserPassword(user.into(), password.into());
        self
    }

    /// The client name the server shows in its monitoring.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How long to wait for one server to accept a connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for a request or JetStream API call to be answered (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How often to PING the server; two unanswered PINGs drop the connection and reconnect
    /// (default 10 s). Lower it where a partitioned server must be left quickly.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// The configured servers.
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// Checks the options without touching the network.
    pub fn validate(&self) -> Result<(), Error> {
        if self.servers.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "connecting: no server URL given",
            ));
        }
        for server in &self.servers {
            server.parse::<async_nats::ServerAddr>().map_err(|e| {
                Error::with_source(
                    ErrorKind::InvalidConfig,
                    format!("server URL {server:?} is not a NATS URL (nats://host:port)"),
                    e,
                )
            })?;
        }
        for (what, value) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("ping_interval", self.ping_interval),
        ] {
            if value.is_zero() {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!("{what} must be greater than zero"),
                ));
            }
        }
        if self.tls.client_cert.is_some() && self.tls.skip_verify {
            tracing::debug!("client certificate presented to a server that is not verified");
        }
        Ok(())
    }
}
