//! `Natty::builder` connection settings against a real `nats-server` run as a child process
//! (`NATS_SERVER_BIN` or `nats-server` on PATH): the event hook (a permissions violation
//! reaches it and is logged at warn), the JetStream domain, and `retry_on_initial_connect`.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::{
    io::Write,
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use natty::{ConnectOptions, ConnectionEvent, Natty, StreamConfig};
use natty_testkit::{unique_name, wait_for};

/// Everything logged in this test binary (tracing's global subscriber, at `warn` and above).
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(|| Capture)
        .try_init();
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

/// A `nats-server` child process with a config file, killed on drop.
struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn start_on(port: u16, config: &str) -> anyhow::Result<Self> {
        let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("nats.conf");
        let store = dir.path().join("js");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\n{}\n",
                config.replace("STORE", &store.display().to_string())
            ),
        )?;
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {bin} (set NATS_SERVER_BIN): {e}"))?;
        Ok(Self {
            child,
            port,
            _dir: dir,
        })
    }

    async fn start(config: &str) -> anyhow::Result<Self> {
        let server = Self::start_on(Self::free_port(), config)?;
        server.wait_accepting().await?;
        Ok(server)
    }

    async fn wait_accepting(&self) -> anyhow::Result<()> {
        let port = self.port;
        wait_for(
            "nats-server accepting",
            Duration::from_secs(10),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(drop)
            },
        )
        .await
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
#[ignore = "integration: needs a nats-server binary (NATS_SERVER_BIN)"]
async fn a_permission_violation_reaches_the_hook_and_is_logged_at_warn() -> anyhow::Result<()> {
    capture_logs();
    let server = Server::start(
        r#"authorization {
             users = [ { user: app, password: secret,
                         permissions: { publish: { deny: ["forbidden.>"] } } } ]
           }"#,
    )
    .await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let natty = Natty::builder(ConnectOptions::new([server.url()]).user_password("app", "secret"))
        .on_event(move |event| {
            let _ = tx.send(event);
        })
        .connect()
        .await?;
    let nats = natty.client().nats();
    nats.publish("forbidden.x", "no".into()).await?;
    nats.flush().await?;

    let mut seen = Vec::new();
    let violation = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = rx.recv().await {
            seen.push(event.clone());
            if let ConnectionEvent::ServerError(text) = event {
                return Some(text);
            }
        }
        None
    })
    .await
    .map_err(|_| anyhow::anyhow!("no server error reached the hook; saw {seen:?}"))?
    .unwrap();
    assert!(violation.contains("forbidden.x"), "{violation}");
    // Every event is passed on, not only errors.
    assert!(seen.contains(&ConnectionEvent::Connected), "{seen:?}");
    let logs = logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("WARN") && l.contains("forbidden.x")),
        "the violation was not logged at warn:\n{logs}"
    );
    natty.close().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs a nats-server binary (NATS_SERVER_BIN)"]
async fn the_jetstream_domain_is_used_for_every_api_call() -> anyhow::Result<()> {
    let server = Server::start("jetstream { domain: hub, store_dir: \"STORE\" }").await?;
    let stream = unique_name("D").replace('-', "_");
    let natty = Natty::builder(ConnectOptions::new([server.url()]))
        .jetstream_domain("hub")
        .connect()
        .await?;
    natty
        .create_stream(StreamConfig::new(&stream, [format!("{stream}.>")]))
        .await?;
    natty.close().await?;

    // The same call to a domain nobody serves finds no JetStream: the domain is really used.
    let elsewhere =
        Natty::builder(ConnectOptions::new([server.url()]).request_timeout(Duration::from_secs(2)))
            .jetstream_domain("elsewhere")
            .connect()
            .await?;
    let err = elsewhere
        .create_stream(StreamConfig::new(&stream, [format!("{stream}.>")]))
        .await
        .unwrap_err();
    assert_ne!(
        err.kind(),
        natty::stream::ErrorKind::ConfigMismatch,
        "{err}"
    );
    elsewhere.close().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs a nats-server binary (NATS_SERVER_BIN)"]
async fn retry_on_initial_connect_returns_at_once_and_connects_later() -> anyhow::Result<()> {
    let port = Server::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    // Without it, nobody listening is an error.
    let err = Natty::connect(ConnectOptions::new([url.clone()]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), natty::core::ErrorKind::Refused, "{err}");

    let natty = tokio::time::timeout(
        Duration::from_secs(5),
        Natty::builder(ConnectOptions::new([url]))
            .retry_on_initial_connect()
            .connect(),
    )
    .await??;
    let server = Server::start_on(port, "jetstream { store_dir: \"STORE\" }")?;
    server.wait_accepting().await?;
    let bucket = unique_name("r").replace('-', "_");
    wait_for(
        "a write once the server is up",
        Duration::from_secs(20),
        || {
            let natty = natty.clone();
            let bucket = bucket.clone();
            async move { natty.put(&bucket, "k", "v".into()).await.ok() }
        },
    )
    .await?;
    assert_eq!(natty.get(&bucket, "k").await?.unwrap().value, "v");
    natty.close().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs a nats-server binary (NATS_SERVER_BIN)"]
async fn the_publisher_uses_the_configured_jetstream_api_prefix() -> anyhow::Result<()> {
    // Account APP has no JetStream of its own: it reaches account JS's JetStream API under
    // `JS.acc.API` and publishes into its stream through a service import. `$JS.API` answers
    // nothing in APP, so only a context with the prefix can see the stream.
    let server = Server::start(
        r#"jetstream { store_dir: "STORE" }
           accounts {
             JS: {
               jetstream: enabled
               users: [ { user: js, password: js } ]
               exports: [ { service: "$JS.API.>" }, { service: "pfx.>" } ]
             }
             APP: {
               users: [ { user: app, password: app } ]
               imports: [
                 { service: { account: JS, subject: "$JS.API.>" }, to: "JS.acc.API.>" }
                 { service: { account: JS, subject: "pfx.>" } }
               ]
             }
           }"#,
    )
    .await?;
    let natty = Natty::builder(ConnectOptions::new([server.url()]).user_password("app", "app"))
        .jetstream_api_prefix("JS.acc.API")
        .publisher(
            natty::stream::BatchConfig::default()
                .mode(natty::stream::PublishMode::FastIngest)
                .ack_timeout(Duration::from_secs(2)),
        )
        .connect()
        .await?;
    natty
        .create_stream(StreamConfig::new("PFX", ["pfx.>"]).allow_batched(false))
        .await?;
    // Fast ingest into a stream that does not allow batches: the publisher must find the
    // stream (through the prefix) and refuse the message. A publisher that asks `$JS.API`
    // sees no stream and publishes it the ordinary way instead.
    natty.publish("pfx.a", "x".into()).await?;
    let err = natty.flush().await.unwrap_err();
    assert_eq!(err.failed.len(), 1, "{err:?}");
    let failed = &err.failed[0];
    assert_eq!(
        failed.error.kind(),
        natty::stream::ErrorKind::Unsupported,
        "{}",
        failed.error
    );
    assert!(
        failed.error.to_string().contains("allow_batched"),
        "{}",
        failed.error
    );
    natty.close().await?;
    Ok(())
}
