//! Connecting: turning [`ConnectOptions`] into async-nats options, and on failure, finding out
//! why each server failed so the error can name them all.

use std::{fmt, io};

use async_nats::{ConnectErrorKind, ServerAddr};
use tracing::Instrument;

use crate::{
    Client, ConnectOptions, Error, ErrorKind,
    options::{Auth, ConnectionEvent, EventHook},
};

/// One server tried while connecting, and why it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerAttempt {
    /// The server as configured.
    pub server: String,
    /// Why it failed: `Refused`, `Tls`, `Auth`, `TimedOut` or `Connect`.
    pub kind: ErrorKind,
    /// The client's own description of the failure.
    pub detail: String,
}

/// The cause of a failed connect: every server tried, each with its reason.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectFailure {
    /// The servers, in the order they were configured.
    pub attempts: Vec<ServerAttempt>,
}

impl fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.attempts.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {} ({})", a.server, a.kind, a.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConnectFailure {}

impl Error {
    /// For a failed connect: every server tried and why it failed.
    pub fn connect_attempts(&self) -> &[ServerAttempt] {
        self.cause()
            .and_then(|c| c.downcast_ref::<ConnectFailure>())
            .map_or(&[], |f| f.attempts.as_slice())
    }
}

impl ConnectOptions {
    /// Connects to any of the servers.
    ///
    /// On failure the error's kind is the most telling reason (`Auth` or `Tls`, which need a
    /// configuration fix, before `TimedOut` and `Refused`), and
    /// [`Error::connect_attempts`] lists every server with its own reason.
    pub async fn connect(self) -> Result<Client, Error> {
        self.validate()?;
        let span = tracing::info_span!("natty.connect", servers = ?self.servers);
        async move {
            let addrs = self.addrs()?;
            let options = self.nats_options(true).await?;
            match options.connect(addrs.clone()).await {
                Ok(nats) => {
                    if self.retry_on_initial_connect {
                        tracing::info!("connecting in the background (retry_on_initial_connect)");
                    } else {
                        tracing::info!(server = ?nats.server_info().server_name, "connected");
                    }
                    let api_prefix = self.jetstream_api.as_ref().map(|api| api.prefix());
                    Ok(
                        Client::with_api_prefix(nats, self.request_timeout, api_prefix)
                            .with_max_control_line(self.max_control_line),
                    )
                }
                Err(err) => {
                    tracing::debug!(error = %err, "connect failed, asking each server why");
                    Err(self.diagnose(addrs).await)
                }
            }
        }
        .instrument(span)
        .await
    }

    fn addrs(&self) -> Result<Vec<ServerAddr>, Error> {
        self.servers
            .iter()
            .map(|s| {
                s.parse().map_err(|e| {
                    Error::with_source(ErrorKind::InvalidConfig, format!("server URL {s:?}"), e)
                })
            })
            .collect()
    }

    /// The async-nats options for these settings. Built afresh for each use: async-nats'
    /// options are not `Clone`. `with_hook`: pass events on to the user's hook (not for the
    /// throw-away connections that diagnose a failure).
    pub(crate) async fn nats_options(
        &self,
        with_hook: bool,
    ) -> Result<async_nats::ConnectOptions, Error> {
        let mut options = match &self.auth {
            Auth::None => async_nats::ConnectOptions::new(),
            Auth::CredentialsFile(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|e| {
                    Error::with_source(
                        ErrorKind::Io,
                        format!("reading the credentials file {}", path.display()),
                        e,
                    )
                })?,
            Auth::Credentials(creds) => async_nats::ConnectOptions::with_credentials(creds)
                .map_err(|e| {
                    Error::with_source(ErrorKind::InvalidConfig, "parsing the credentials", e)
                })?,
            Auth::NkeySeed(seed) => async_nats::ConnectOptions::with_nkey(seed.clone()),
            Auth::Token(token) => async_nats::ConnectOptions::with_token(token.clone()),
            Auth::UserPassword(user, password) => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
        };
        let hook = if with_hook {
            self.on_event.clone()
        } else {
            None
        };
        options = options
            .connection_timeout(self.connect_timeout)
            .request_timeout(Some(self.request_timeout))
            .ping_interval(self.ping_interval)
            .event_callback(move |event| {
                let hook = hook.clone();
                async move { on_event(ConnectionEvent::from_nats(event), hook.as_ref()) }
            });
        if self.retry_on_initial_connect && with_hook {
            options = options.retry_on_initial_connect();
        }
        if let Some(name) = &self.name {
            options = options.name(name);
        }
        if self.tls.enabled() {
            options = options.require_tls(true);
        }
        if self.tls.handshake_first {
            options = options.tls_first();
        }
        if let Some(config) = self.tls.client_config()? {
            options = options.tls_client_config(config);
        }
        Ok(options)
    }

    /// Tries each server alone, to say why each one failed.
    async fn diagnose(&self, addrs: Vec<ServerAddr>) -> Error {
        let mut attempts = Vec::with_capacity(addrs.len());
        for (server, addr) in self.servers.iter().zip(addrs) {
            let options = match self.nats_options(false).await {
                Ok(options) => options,
                Err(err) => return err,
            };
            let (kind, detail) = match options.connect(addr).await {
                Ok(client) => {
                    // It answered this time; report the first failure honestly all the same.
                    drop(client);
                    (
                        ErrorKind::Connect,
                        "unreachable at first, answered on a second try".into(),
                    )
                }
                Err(err) => (classify(&err), describe(&err)),
            };
            tracing::debug!(%server, ?kind, %detail, "server failed");
            attempts.push(ServerAttempt {
                server: server.clone(),
                kind,
                detail,
            });
        }
        let kind = [
            ErrorKind::Auth,
            ErrorKind::Tls,
            ErrorKind::Connect,
            ErrorKind::TimedOut,
        ]
        .into_iter()
        .find(|k| attempts.iter().any(|a| a.kind == *k))
        .unwrap_or(ErrorKind::Refused);
        let context = format!(
            "connecting to {} (tried {})",
            if attempts.len() == 1 {
                "the NATS server"
            } else {
                "any of the NATS servers"
            },
            self.servers.join(", ")
        );
        Error::with_source(kind, context, ConnectFailure { attempts })
    }
}

/// Logs a connection event (errors at `warn`: a permissions violation is otherwise invisible)
/// and passes it to the user's hook. A panicking hook is logged, not propagated: the event
/// task must survive it.
pub(crate) fn on_event(event: ConnectionEvent, hook: Option<&EventHook>) {
    match &event {
        ConnectionEvent::Connected => tracing::info!("NATS connection (re)established"),
        ConnectionEvent::Disconnected => tracing::warn!("NATS connection lost, reconnecting"),
        ConnectionEvent::LameDuckMode => {
            tracing::warn!("NATS server entered lame duck mode: moving to another server")
        }
        ConnectionEvent::Draining | ConnectionEvent::Closed => {
            tracing::debug!(%event, "NATS client event")
        }
        ConnectionEvent::SlowConsumer(_)
        | ConnectionEvent::AuthorizationViolation
        | ConnectionEvent::ServerError(_)
        | ConnectionEvent::ClientError(_) => tracing::warn!(%event, "NATS connection error"),
    }
    if let Some(EventHook(hook)) = hook
        && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(event))).is_err()
    {
        tracing::error!("the connection event hook panicked");
    }
}

/// Maps an async-nats connect error to our kind, looking through I/O errors for the TLS or
/// socket error underneath.
fn classify(err: &async_nats::ConnectError) -> ErrorKind {
    match err.kind() {
        ConnectErrorKind::Tls => return ErrorKind::Tls,
        ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
            return ErrorKind::Auth;
        }
        ConnectErrorKind::TimedOut => return ErrorKind::TimedOut,
        _ => {}
    }
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<async_nats::rustls::Error>())
            {
                return ErrorKind::Tls;
            }
            match io.kind() {
                io::ErrorKind::ConnectionRefused => return ErrorKind::Refused,
                io::ErrorKind::TimedOut => return ErrorKind::TimedOut,
                _ => {}
            }
        }
        if cause.is::<async_nats::rustls::Error>() {
            return ErrorKind::Tls;
        }
        source = cause.source();
    }
    tracing::debug!(error = %describe(err), "connect error not classified");
    ErrorKind::Connect
}

fn describe(err: &async_nats::ConnectError) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let s = cause.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::on_event;
    use crate::{
        ConnectOptions, ConnectionEvent, ErrorKind,
        options::{EventHook, JetStreamApi},
    };

    #[test]
    fn every_event_reaches_the_hook_and_a_panicking_hook_is_contained() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let hook = EventHook(Arc::new(move |e: ConnectionEvent| {
            sink.lock().unwrap().push(e.clone());
            if e == ConnectionEvent::Closed {
                panic!("user hook panics");
            }
        }));
        let events = [
            async_nats::Event::Connected,
            async_nats::Event::ServerError(async_nats::ServerError::Other(
                "Permissions Violation for Publish to \"x\"".into(),
            )),
            async_nats::Event::ServerError(async_nats::ServerError::AuthorizationViolation),
            async_nats::Event::SlowConsumer(7),
            async_nats::Event::Closed,
            async_nats::Event::Disconnected,
        ];
        for e in events {
            on_event(ConnectionEvent::from_nats(e), Some(&hook));
        }
        assert_eq!(
            *seen.lock().unwrap(),
            [
                ConnectionEvent::Connected,
                ConnectionEvent::ServerError("Permissions Violation for Publish to \"x\"".into()),
                ConnectionEvent::AuthorizationViolation,
                ConnectionEvent::SlowConsumer(7),
                ConnectionEvent::Closed,
                ConnectionEvent::Disconnected,
            ]
        );
    }

    #[test]
    fn jetstream_api_options_are_checked() {
        let base = || ConnectOptions::new(["nats://127.0.0.1:4222"]);
        for bad in ["", "a.b", "hub*", "a b"] {
            let err = base().jetstream_domain(bad).validate().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{bad:?}");
        }
        let err = base().jetstream_api_prefix("a.>").validate().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        let o = base().jetstream_domain("hub");
        o.validate().unwrap();
        assert_eq!(
            o.jetstream_api
                .as_ref()
                .map(JetStreamApi::prefix)
                .as_deref(),
            Some("$JS.hub.API")
        );
        let o = base()
            .jetstream_domain("hub")
            .jetstream_api_prefix("JS.acc.API");
        o.validate().unwrap();
        assert_eq!(
            o.jetstream_api
                .as_ref()
                .map(JetStreamApi::prefix)
                .as_deref(),
            Some("JS.acc.API")
        );
        assert!(base().retry_on_initial_connect().retry_on_initial_connect);
    }
}
