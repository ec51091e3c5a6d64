//! One NATS server with JetStream in a container, with fault hooks.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context, bail};
use testcontainers::{
    ContainerAsync, GenericImage, ImageExt,
    core::{IntoContainerPort, Mount, WaitFor},
    runners::AsyncRunner,
};

use crate::{certs::TestCerts, image};

/// How long a server gets to come up (the image starts in ~0.35 s; CI machines are slower).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A name no other test (or test process) uses.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}-{:04x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        rand_u16()
    )
}

fn rand_u16() -> u16 {
    // No rand dependency for one number: the clock's nanoseconds are enough to tell runs apart.
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| (d.subsec_nanos() >> 8) as u16)
}

/// Which TLS the server demands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// The server presents a certificate; clients verify it against the test CA.
    ServerVerified,
    /// As above, and the server requires a client certificate signed by the test CA.
    Mutual,
}

/// How the server authenticates clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAuth {
    /// A token.
    Token(String),
    /// A user and password.
    UserPassword(String, String),
}

/// Options for [`Nats::start_with`].
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// TLS, if any.
    pub tls: Option<TlsMode>,
    /// Authentication, if any.
    pub auth: Option<ServerAuth>,
    /// Extra command-line arguments for `nats-server`.
    pub args: Vec<String>,
    /// A configuration file's text (e.g. `max_payload: 65536`), passed with `-c`; the
    /// command-line arguments above take precedence over it.
    pub config: Option<String>,
}

/// The TLS material of a TLS test server, as files the client can point at.
#[derive(Debug)]
pub struct TlsFiles {
    /// The certificates, as PEM text.
    pub certs: TestCerts,
    dir: tempfile::TempDir,
}

impl TlsFiles {
    fn write(certs: TestCerts) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        for (name, text) in [
            ("ca.pem", &certs.ca.cert),
            ("client.pem", &certs.client.cert),
            ("client-key.pem", &certs.client.key),
        ] {
            std::fs::write(dir.path().join(name), text)?;
        }
        Ok(Self { certs, dir })
    }

    /// The CA certificate file.
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The client certificate file.
    pub fn client_cert_file(&self) -> std::path::PathBuf {
        self.dir.path().join("client.pem")
    }

    /// The client key file.
    pub fn client_key_file(&self) -> std::path::PathBuf {
        self.dir.path().join("client-key.pem")
    }
}

/// A running NATS server (JetStream enabled), removed when dropped.
///
/// Its client port is mapped to a fixed host port for its whole life, so a client keeps its URL
/// across [`stop`](Self::stop)/[`start`](Self::start) and reconnects by itself.
pub struct Nats {
    container: ContainerAsync<GenericImage>,
    port: u16,
    name: String,
    network: Option<String>,
    tls: Option<TlsFiles>,
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("id", &self.container.id())
            .finish()
    }
}

impl Nats {
    /// A plain single server with JetStream.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(ServerOptions::default()).await
    }

    /// A single server with TLS, certificates made for this test.
    pub async fn start_tls(mode: TlsMode) -> anyhow::Result<Self> {
        Self::start_with(ServerOptions {
            tls: Some(mode),
            ..ServerOptions::default()
        })
        .await
    }

    /// A single server with the given options.
    pub async fn start_with(options: ServerOptions) -> anyhow::Result<Self> {
        let name = unique_name("natty-nats");
        let mut args = base_args(&name);
        let mut files = Vec::new();
        let tls = match options.tls {
            None => None,
            Some(mode) => {
                let certs = TestCerts::generate(&[])?;
                args.extend(
                    [
                        "--tls",
                        "--tlscert",
                        "/certs/server.pem",
                        "--tlskey",
                        "/certs/server-key.pem",
                        "--tlscacert",
                        "/certs/ca.pem",
                    ]
                    .map(String::from),
                );
                if mode == TlsMode::Mutual {
                    args.push("--tlsverify".into());
                }
                files.push(("/certs/server.pem", certs.server.cert.clone()));
                files.push(("/certs/server-key.pem", certs.server.key.clone()));
                files.push(("/certs/ca.pem", certs.ca.cert.clone()));
                Some(TlsFiles::write(certs)?)
            }
        };
        match &options.auth {
            None => {}
            Some(ServerAuth::Token(token)) => args.extend(["--auth".into(), token.clone()]),
            Some(ServerAuth::UserPassword(user, pass)) => {
                args.extend(["--user".into(), user.clone(), "--pass".into(), pass.clone()]);
            }
        }
        if let Some(config) = &options.config {
            files.push(("/etc/nats/natty-test.conf", config.clone()));
            args.extend(["-c".into(), "/etc/nats/natty-test.conf".into()]);
        }
        args.extend(options.args.iter().cloned());
        let (container, port) = run(&name, args, files, None).await?;
        Ok(Self {
            container,
            port,
            name,
            network: None,
            tls,
        })
    }

    pub(crate) async fn start_node(
        name: String,
        args: Vec<String>,
        network: String,
    ) -> anyhow::Result<Self> {
        let (container, port) = run(&name, args, Vec::new(), Some(&network)).await?;
        Ok(Self {
            container,
            port,
            name,
            network: Some(network),
            tls: None,
        })
    }

    /// The client URL (`nats://127.0.0.1:<port>`, or `tls://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The host port the client port is mapped to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The container (and server) name; other cluster nodes reach it by this name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The container id.
    pub fn id(&self) -> &str {
        self.container.id()
    }

    /// The TLS files, for a TLS server.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// Stops the server gracefully (SIGTERM, then SIGKILL after 10 s). Storage is kept.
    pub async fn stop(&self) -> anyhow::Result<()> {
        tracing::info!(name = %self.name, "stopping NATS server");
        self.container.stop_with_timeout(Some(10)).await?;
        Ok(())
    }

    /// Kills the server (SIGKILL): no chance to flush or say goodbye. Storage is kept.
    pub async fn kill(&self) -> anyhow::Result<()> {
        tracing::info!(name = %self.name, "killing NATS server");
        docker(&["kill", self.container.id()]).await
    }

    /// Starts a stopped or killed server again (same storage, same port) and waits until it
    /// accepts clients.
    pub async fn start_again(&self) -> anyhow::Result<()> {
        tracing::info!(name = %self.name, "starting NATS server again");
        self.container.start().await?;
        self.wait_accepting().await
    }

    /// Stop, then start again.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.stop().await?;
        self.start_again().await
    }

    /// Freezes every process of the server (cgroup freezer): connections stay open, nothing
    /// answers.
    pub async fn pause(&self) -> anyhow::Result<()> {
        tracing::info!(name = %self.name, "pausing NATS server");
        self.container.pause().await?;
        Ok(())
    }

    /// Thaws a paused server.
    pub async fn unpause(&self) -> anyhow::Result<()> {
        tracing::info!(name = %self.name, "unpausing NATS server");
        self.container.unpause().await?;
        Ok(())
    }

    /// Cuts a cluster node off the cluster network (its clients on the host stay connected only
    /// if they use the published port, which also goes through that network: expect them to
    /// lose it too).
    pub async fn disconnect(&self) -> anyhow::Result<()> {
        let network = self.network.as_deref().context("not a cluster node")?;
        tracing::info!(name = %self.name, %network, "disconnecting node from the cluster network");
        docker(&["network", "disconnect", network, self.container.id()]).await
    }

    /// Re-attaches a disconnected node to the cluster network.
    pub async fn reconnect(&self) -> anyhow::Result<()> {
        let network = self.network.as_deref().context("not a cluster node")?;
        tracing::info!(name = %self.name, %network, "reconnecting node to the cluster network");
        docker(&["network", "connect", network, self.container.id()]).await
    }

    /// Waits until the server answers a NATS client.
    pub async fn wait_accepting(&self) -> anyhow::Result<()> {
        let url = format!("nats://127.0.0.1:{}", self.port);
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        loop {
            // A TLS server answers INFO on the plain socket too, which is all we need here.
            let probe = tokio::time::timeout(Duration::from_secs(2), async {
                let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
                let mut buf = [0u8; 4];
                tokio::io::AsyncReadExt::read_exact(&mut stream, &mut buf).await?;
                Ok::<_, std::io::Error>(buf)
            })
            .await;
            if let Ok(Ok(buf)) = probe
                && &buf == b"INFO"
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{url} did not come back within {STARTUP_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn base_args(name: &str) -> Vec<String> {
    ["-js", "-sd", "/data", "-p", "4222", "-n", name]
        .map(String::from)
        .to_vec()
}

async fn run(
    name: &str,
    args: Vec<String>,
    files: Vec<(&'static str, String)>,
    network: Option<&str>,
) -> anyhow::Result<(ContainerAsync<GenericImage>, u16)> {
    let reference = tokio::task::spawn_blocking(image::ensure).await??;
    let (repo, tag) = reference
        .rsplit_once(':')
        .with_context(|| format!("image reference {reference:?} has no tag"))?;
    let mut last_error = None;
    // The host port is chosen here (not by Docker) so it survives stop/start; another process
    // may take it between our check and Docker's bind, so try a few.
    for _ in 0..5 {
        let port = free_port()?;
        let mut request = GenericImage::new(repo, tag)
            .with_wait_for(WaitFor::message_on_stderr("Server is ready"))
            .with_cmd(args.clone())
            .with_container_name(name)
            .with_mapped_port(port, 4222.tcp())
            // JetStream storage on an anonymous volume: a plain directory of the host, not the
            // container's copy-on-write layer (fuse-overlayfs here made every write ~5x
            // slower). It survives stop/start and is removed with the container.
            .with_mount(Mount::volume_mount("", "/data"))
            .with_startup_timeout(STARTUP_TIMEOUT);
        for (target, text) in &files {
            request = request.with_copy_to(*target, text.clone().into_bytes());
        }
        if let Some(network) = network {
            request = request.with_network(network);
        }
        match request.start().await {
            Ok(container) => {
                tracing::info!(%name, port, "NATS server started");
                return Ok((container, port));
            }
            Err(e) => {
                let text = e.to_string();
                if text.contains("port is already allocated")
                    || text.contains("address already in use")
                {
                    tracing::warn!(port, "host port taken, trying another");
                    let _ = docker(&["rm", "-f", name]).await;
                    last_error = Some(e);
                    continue;
                }
                return Err(e).with_context(|| format!("starting NATS container {name}"));
            }
        }
    }
    Err(last_error.map_or_else(|| anyhow::anyhow!("no free port"), anyhow::Error::from))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) async fn docker(args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("docker")
        .args(args)
        .output()
        .await
        .context("running docker")?;
    if !out.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
