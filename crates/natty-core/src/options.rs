//! [`ConnectOptions`]: servers, TLS, auth and timeouts, as a consuming builder (async-nats'
//! `options.rs` shape).

use std::{fmt, path::PathBuf, sync::Arc, time::Duration};

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

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

/// Something that happened to the connection, handed to the hook set with
/// [`ConnectOptions::on_event`] (and logged by natty in any case).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// Connected, or reconnected after a loss.
    Connected,
    /// The connection was lost; the client is reconnecting.
    Disconnected,
    /// The server is shutting down (lame duck mode): the client will move to another one.
    LameDuckMode,
    /// The connection is draining.
    Draining,
    /// The connection is closed for good.
    Closed,
    /// A subscription fell behind and messages for it were dropped (its id).
    SlowConsumer(u64),
    /// The server refused the credentials or an operation (authorization violation).
    AuthorizationViolation,
    /// The server reported an error (`-ERR`), e.g. a permissions violation: the publish or
    /// subscribe it names did not happen. The server's text, as sent.
    ServerError(String),
    /// The client reported an error (e.g. it gave up reconnecting).
    ClientError(String),
}

impl ConnectionEvent {
    /// Ours for async-nats' event (kept out of the public API: an async-nats upgrade must not
    /// change natty's).
    pub(crate) fn from_nats(event: async_nats::Event) -> Self {
        match event {
            async_nats::Event::Connected => Self::Connected,
            async_nats::Event::Disconnected => Self::Disconnected,
            async_nats::Event::LameDuckMode => Self::LameDuckMode,
            async_nats::Event::Draining => Self::Draining,
            async_nats::Event::Closed => Self::Closed,
            async_nats::Event::SlowConsumer(sid)
            | async_nats::Event::ServerError(async_nats::ServerError::SlowConsumer(sid)) => {
                Self::SlowConsumer(sid)
            }
            async_nats::Event::ServerError(async_nats::ServerError::AuthorizationViolation) => {
                Self::AuthorizationViolation
            }
            async_nats::Event::ServerError(async_nats::ServerError::Other(text)) => {
                Self::ServerError(text)
            }
            async_nats::Event::ClientError(e) => Self::ClientError(e.to_string()),
        }
    }
}

impl fmt::Display for ConnectionEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connected => f.write_str("connected"),
            Self::Disconnected => f.write_str("disconnected"),
            Self::LameDuckMode => f.write_str("server entered lame duck mode"),
            Self::Draining => f.write_str("draining"),
            Self::Closed => f.write_str("closed"),
            Self::SlowConsumer(sid) => {
                write!(f, "slow consumer: subscription {sid} dropped messages")
            }
            Self::AuthorizationViolation => f.write_str("server error: authorization violation"),
            Self::ServerError(text) => write!(f, "server error: {text}"),
            Self::ClientError(text) => write!(f, "client error: {text}"),
        }
    }
}

/// The user's connection-event hook.
#[derive(Clone)]
pub(crate) struct EventHook(pub(crate) Arc<dyn Fn(ConnectionEvent) + Send + Sync>);

impl fmt::Debug for EventHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EventHook(..)")
    }
}

/// Where the JetStream API is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JetStreamApi {
    /// `$JS.<domain>.API`.
    Domain(String),
    /// Any prefix (for accounts that import the API under another name).
    Prefix(String),
}

impl JetStreamApi {
    pub(crate) fn prefix(&self) -> String {
        match self {
            Self::Domain(domain) => format!("$JS.{domain}.API"),
            Self::Prefix(prefix) => prefix.clone(),
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
    pub(crate) retry_on_initial_connect: bool,
    pub(crate) on_event: Option<EventHook>,
    pub(crate) jetstream_api: Option<JetStreamApi>,
    pub(crate) max_control_line: usize,
}

/// The default time to wait for one server to accept a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The default time to wait for a request (including JetStream API calls) to be answered.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The default client PING interval: a connection that misses two is dropped and re-made, so
/// a server cut off by a network partition is left after ~20 s (async-nats' own default, 60 s,
/// takes two minutes).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(10);
/// The smallest `max_control_line` natty accepts: below it even a JetStream API request's
/// line (subject, inbox, sizes) may not fit.
const MIN_CONTROL_LINE: usize = 256;

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
            retry_on_initial_connect: false,
            on_event: None,
            jetstream_api: None,
            max_control_line: crate::limits::DEFAULT_MAX_CONTROL_LINE,
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

    /// Return from [`connect`](Self::connect) at once, even if no server answers yet, and
    /// keep trying in the background (async-nats' `retry_on_initial_connect`). Operations
    /// wait for the connection (and time out after the request timeout); a misconfigured
    /// server list then shows only in the logs and in the [`on_event`](Self::on_event) hook,
    /// never as a connect error.
    pub fn retry_on_initial_connect(mut self) -> Self {
        self.retry_on_initial_connect = true;
        self
    }

    /// Calls `hook` on every connection event: connected, disconnected, lame duck mode,
    /// slow consumer, and errors the server reports on the connection, such as a permissions
    /// violation (which fails the operation silently otherwise: the server answers a denied
    /// publish with nothing but this event). natty logs every event as well (server and
    /// client errors at `warn`).
    ///
    /// The hook runs on the client's event task: keep it short and non-blocking (send on a
    /// channel). A hook that panics is logged; later events still reach it.
    pub fn on_event(mut self, hook: impl Fn(ConnectionEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Some(EventHook(Arc::new(hook)));
        self
    }

    /// Use the JetStream API of this domain (`$JS.<domain>.API`), e.g. a hub's JetStream seen
    /// from a leaf node. Replaces [`jetstream_api_prefix`](Self::jetstream_api_prefix).
    pub fn jetstream_domain(mut self, domain: impl Into<String>) -> Self {
        self.jetstream_api = Some(JetStreamApi::Domain(domain.into()));
        self
    }

    /// Use the JetStream API under this prefix (default `$JS.API`), for an account that
    /// imports another account's JetStream. Replaces [`jetstream_domain`](Self::jetstream_domain).
    pub fn jetstream_api_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.jetstream_api = Some(JetStreamApi::Prefix(prefix.into()));
        self
    }

    /// The servers' `max_control_line`, when their configuration sets one (default 4096, the
    /// server's own default). The server does not announce it, and closes the connection on a
    /// longer line, so natty refuses a publish whose subject would make its line longer
    /// (`TooLarge`, nothing sent; see [`crate::limits`]). Set it to the smallest value of the
    /// servers you connect to.
    pub fn max_control_line(mut self, bytes: usize) -> Self {
        self.max_control_line = bytes;
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
        if self.max_control_line < MIN_CONTROL_LINE {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "max_control_line must be at least {MIN_CONTROL_LINE} bytes (a JetStream \
                     request line needs that much), got {}",
                    self.max_control_line
                ),
            ));
        }
        match &self.jetstream_api {
            Some(JetStreamApi::Domain(domain))
                if domain.is_empty()
                    || domain.chars().any(|c| {
                        matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control()
                    }) =>
            {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "JetStream domain {domain:?} must be one subject token (no dots, wildcards or spaces)"
                    ),
                ));
            }
            Some(JetStreamApi::Prefix(prefix)) => {
                crate::names::subject(prefix).map_err(|e| {
                    Error::with_source(
                        ErrorKind::InvalidConfig,
                        format!(
                            "JetStream API prefix {prefix:?} must be a subject without wildcards"
                        ),
                        e,
                    )
                })?;
            }
            Some(JetStreamApi::Domain(_)) | None => {}
        }
        if self.tls.client_cert.is_some() && self.tls.skip_verify {
            tracing::debug!("client certificate presented to a server that is not verified");
        }
        Ok(())
    }
}
