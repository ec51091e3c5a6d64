//! `cargo xtask <command>`: the project's automation (see `cargo xtask help`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use natty_testkit::{TestCerts, image};

const HELP: &str = "\
cargo xtask <command>

  ci                    exactly what CI runs: fmt, clippy, unit tests, docs, integration, deny
  integration [filter]  build the NATS image if needed and run the testcontainers suites
  bench [--quick]       natty vs raw async-nats side by side; report in target/bench/
  chaos [--minutes N] [--seed S]
                        faults on a 3-node cluster; checks; report in target/chaos/
  demo                  run the examples against a throwaway NATS container (or $NATS_URL)
  nats-image            build the local FROM-scratch NATS image (no-op when present)
  certs                 regenerate the certificates in assets/

Environment: NATS_SERVER_BIN (the nats-server binary for the image), NATTY_NATS_IMAGE (use this
image instead, e.g. nats:2.15.1 where registry pulls work).";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("integration") => integration(args.get(1).map(String::as_str)),
        Some("nats-image") => nats_image().map(|_| ()),
        Some("demo") => demo(),
        Some("bench") => bench(args.iter().any(|a| a == "--quick")),
        Some("chaos") => chaos(&args[1..]),
        Some("certs") => certs(&root.join("assets")),
        Some("help" | "--help" | "-h") | None => {
            eprintln!("{HELP}");
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}\n\n{HELP}"),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Runs a command, echoing it, failing if it fails.
fn run(program: &str, args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<()> {
    eprintln!("\n==> {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn nats_image() -> anyhow::Result<String> {
    let (reference, built) = image::ensure_uncached()?;
    match built {
        image::Built::Built => eprintln!("built image {reference}"),
        image::Built::AlreadyPresent => {
            eprintln!("image {reference} already present, nothing to do")
        }
        image::Built::Overridden => eprintln!("using NATTY_NATS_IMAGE={reference}"),
    }
    Ok(reference)
}

fn integration(filter: Option<&str>) -> anyhow::Result<()> {
    if !image::docker_available() {
        bail!("the integration suites need Docker, and no Docker daemon answers (`docker info`)");
    }
    let reference = nats_image()?;
    let mut args = vec!["test", "--workspace", "--", "--ignored"];
    args.extend(filter);
    run("cargo", &args, &[("NATTY_NATS_IMAGE", &reference)])
}

fn ci() -> anyhow::Result<()> {
    run("cargo", &["fmt", "--all", "--", "--check"], &[])?;
    run(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    run("cargo", &["test", "--workspace"], &[])?;
    run(
        "cargo",
        &["doc", "--workspace", "--no-deps"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    check_a_la_carte()?;
    check_sans_io()?;
    if image::docker_available() {
        integration(None)?;
        demo()?;
        bench(true)?;
        chaos(&["--minutes".into(), "1".into()])?;
    } else if std::env::var_os("CI").is_some() {
        bail!("CI must run the integration suites, but no Docker daemon answers (`docker info`)");
    } else {
        eprintln!("\n==> SKIPPED: integration suites (no Docker daemon answers `docker info`)");
    }
    deny()?;
    eprintln!("\n==> cargo xtask ci: all green");
    Ok(())
}

/// Runs natty-bench: release for a measurement, debug for `--quick` (keeps the harness from
/// rotting in CI without a release build of every dependency).
fn bench(quick: bool) -> anyhow::Result<()> {
    let reference = nats_image()?;
    let mut args = vec!["run", "--quiet", "-p", "natty-bench"];
    if !quick {
        args.push("--release");
    }
    args.push("--");
    if quick {
        args.push("--quick");
    }
    run("cargo", &args, &[("NATTY_NATS_IMAGE", &reference)])
}

/// Runs natty-chaos (debug build: the faults, not the speed, are what it measures).
fn chaos(args: &[String]) -> anyhow::Result<()> {
    let reference = nats_image()?;
    run(
        "cargo",
        &["build", "--quiet", "-p", "natty-chaos", "--bins"],
        &[],
    )?;
    let mut full: Vec<&str> = Vec::new();
    full.extend(args.iter().map(String::as_str));
    run(
        "target/debug/natty-chaos",
        &full,
        &[("NATTY_NATS_IMAGE", &reference)],
    )
}

/// A crate that depends only on natty-kv (or natty-election) must not pull natty-stream.
fn check_a_la_carte() -> anyhow::Result<()> {
    for krate in ["natty-kv", "natty-election"] {
        eprintln!("\n==> cargo tree -p {krate} -e normal (must not contain natty-stream)");
        let out = Command::new("cargo")
            .args([
                "tree", "-p", krate, "-e", "normal", "--prefix", "none", "--format", "{p}",
            ])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tree = String::from_utf8_lossy(&out.stdout);
        if let Some(line) = tree.lines().find(|l| l.starts_with("natty-stream")) {
            bail!("{krate} depends on {line}: it must build without natty-stream");
        }
        eprintln!("{krate}: {} crates, no natty-stream", tree.lines().count());
    }
    Ok(())
}

/// Runs the facade's examples end to end and says what happened.
fn demo() -> anyhow::Result<()> {
    run(
        "cargo",
        &["build", "--quiet", "-p", "natty", "--examples"],
        &[],
    )?;
    let example = |name: &str, envs: &[(&str, &str)]| -> anyhow::Result<()> {
        eprintln!("\n--- example `{name}` ---");
        let status = Command::new("cargo")
            .args(["run", "--quiet", "-p", "natty", "--example", name])
            .envs(envs.iter().copied())
            .status()?;
        anyhow::ensure!(status.success(), "example {name} failed ({status})");
        Ok(())
    };
    if let Ok(url) = std::env::var("NATS_URL") {
        eprintln!("==> demo against NATS_URL={url}");
        for name in ["publish_consume", "kv", "election"] {
            example(name, &[("NATS_URL", &url)])?;
        }
        eprintln!("(the TLS example needs a TLS server: run it with NATS_URL=tls://.. NATS_CA=..)");
    } else {
        if !image::docker_available() {
            bail!("the demo needs Docker (or NATS_URL pointing at a NATS server with JetStream)");
        }
        let reference = nats_image()?;
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async {
            eprintln!("==> starting a throwaway NATS ({reference}) and a mutual-TLS one");
            let plain = natty_testkit::Nats::start().await?;
            let tls = natty_testkit::Nats::start_tls(natty_testkit::TlsMode::Mutual).await?;
            let url = plain.url();
            for name in ["publish_consume", "kv", "election"] {
                example(name, &[("NATS_URL", &url), ("NATTY_NATS_IMAGE", &reference)])?;
            }
            let files = tls.tls().expect("a TLS server");
            let (ca, cert, key) = (
                files.ca_file().display().to_string(),
                files.client_cert_file().display().to_string(),
                files.client_key_file().display().to_string(),
            );
            example(
                "tls",
                &[("NATS_URL", &tls.url()), ("NATS_CA", &ca), ("NATS_CERT", &cert), ("NATS_KEY", &key)],
            )?;
            eprintln!("\n==> demo done: a publish/consume round trip, KV operations, a leader hand-over and a mutual-TLS connect all ran; removing the containers");
            anyhow::Ok(())
        })?;
    }
    Ok(())
}

/// The election state machine stays sans-IO: no tokio, no async-nats, no clock reads
/// (`crates/natty-election/src/machine.rs` and its `machine/` directory, tests included).
fn check_sans_io() -> anyhow::Result<()> {
    eprintln!("\n==> sans-IO check: natty-election's machine module");
    let root = Path::new("crates/natty-election/src");
    let mut files = vec![root.join("machine.rs")];
    if let Ok(dir) = std::fs::read_dir(root.join("machine")) {
        files.extend(dir.filter_map(Result::ok).map(|e| e.path()));
    }
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
        for (n, line) in text.lines().enumerate() {
            for banned in ["tokio", "async_nats", "::now("] {
                // `Instant::now()` in a doc example or test builds its own start instant.
                let doc_or_test_start =
                    banned == "::now(" && line.contains("let t0 = Instant::now()");
                if line.contains(banned) && !doc_or_test_start {
                    found.push(format!(
                        "{}:{}: `{banned}`: {}",
                        file.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    if !found.is_empty() {
        bail!(
            "the election machine must stay sans-IO:\n{}",
            found.join("\n")
        );
    }
    Ok(())
}

fn deny() -> anyhow::Result<()> {
    let installed = Command::new("cargo")
        .args(["deny", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        run("cargo", &["install", "cargo-deny", "--locked"], &[])?;
    }
    // Advisories need the RustSec database from GitHub, which this network does not reach:
    // checked wherever it can be fetched, said plainly where it cannot.
    // Not --offline: cargo metadata needs the manifests of every platform's dependencies
    // (wasip2, r-efi, ...), which a build for this host never downloads; crates.io is reachable.
    run(
        "cargo",
        &["deny", "check", "licenses", "bans", "sources"],
        &[],
    )?;
    let advisories = Command::new("cargo")
        .args(["deny", "check", "advisories"])
        .status()
        .is_ok_and(|s| s.success());
    if !advisories {
        eprintln!("==> NOTE: advisories not checked (the RustSec database could not be fetched)");
    }
    Ok(())
}

fn certs(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let certs = TestCerts::generate(&["nats"])?;
    for (name, text) in [
        ("ca.pem", &certs.ca.cert),
        ("server-cert.pem", &certs.server.cert),
        ("server-key.pem", &certs.server.key),
        ("client-cert.pem", &certs.client.cert),
        ("client-key.pem", &certs.client.key),
    ] {
        std::fs::write(dir.join(name), text)?;
        eprintln!("wrote {}", dir.join(name).display());
    }
    Ok(())
}
