//! The README examples as a user meets them (issue 26 item 1): for the root README and each
//! published crate's README, a fresh crate *outside* the workspace whose dependencies are the
//! README's own TOML block (natty crates by path), whose `main.rs` is the README's first Rust
//! block, built and then run against a local NATS server until it ends by itself.
//!
//! A doctest cannot show this: it sees every dependency of the crate it belongs to, so an
//! example that names a crate the README's TOML does not list still compiles there.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use natty_testkit::setup::{self, Server};

/// One README to check.
#[derive(Debug)]
struct Readme {
    /// Relative to the workspace root.
    path: &'static str,
    /// The crates its TOML may list, exactly (`None`: whatever it lists).
    deps: Option<&'static [&'static str]>,
    /// The example waits for a shutdown signal: once a line contains this, it gets SIGTERM
    /// and must exit 0.
    sigterm_after: Option<&'static str>,
}

/// Every README whose first example must build alone and run.
const READMES: &[Readme] = &[
    Readme {
        path: "README.md",
        deps: None,
        sigterm_after: Some("processing order 3"),
    },
    Readme {
        path: "crates/natty-core/README.md",
        deps: Some(&["natty-core", "tokio"]),
        sigterm_after: None,
    },
    Readme {
        path: "crates/natty-kv/README.md",
        deps: Some(&["natty-kv", "tokio"]),
        sigterm_after: None,
    },
    Readme {
        path: "crates/natty-election/README.md",
        deps: Some(&["natty-election", "tokio"]),
        sigterm_after: None,
    },
    Readme {
        path: "crates/natty-stream/README.md",
        deps: Some(&["natty-stream", "tokio"]),
        sigterm_after: None,
    },
    Readme {
        path: "crates/natty-group/README.md",
        deps: Some(&["natty-group", "tokio"]),
        sigterm_after: None,
    },
];

/// How long one example may run.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// Builds and runs every README example; `only` restricts to paths containing it.
pub(crate) fn check(root: &Path, target: &Path, only: Option<&str>) -> anyhow::Result<()> {
    let work = target.join("readme-examples");
    std::fs::create_dir_all(&work)?;
    let server = setup::choose_server()?;
    eprintln!("==> README examples: NATS server {server}");
    let mut checked = 0;
    for readme in READMES
        .iter()
        .filter(|r| only.is_none_or(|o| r.path.contains(o)))
    {
        let started = Instant::now();
        eprintln!("\n==> README example of {}", readme.path);
        let text = std::fs::read_to_string(root.join(readme.path))
            .with_context(|| format!("reading {}", readme.path))?;
        let example = Example::parse(&text).with_context(|| readme.path.to_owned())?;
        if let Some(allowed) = readme.deps {
            let listed: BTreeSet<&str> = example.deps.iter().map(|d| d.name.as_str()).collect();
            let allowed: BTreeSet<&str> = allowed.iter().copied().collect();
            ensure!(
                listed == allowed,
                "{}: its TOML must list exactly {allowed:?} (a user of this crate alone), \
                 it lists {listed:?}",
                readme.path
            );
        }
        let name = readme
            .path
            .trim_end_matches("README.md")
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or("root");
        let dir = work.join(name);
        example.write_crate(root, &dir, name)?;
        let binary = build(&dir, &work.join("target"), name)?;
        run(&server, &binary, readme)?;
        eprintln!(
            "==> {}: built alone and ran in {:.1} s",
            readme.path,
            started.elapsed().as_secs_f64()
        );
        checked += 1;
    }
    ensure!(checked > 0, "no README matches {only:?}");
    eprintln!("\n==> README examples: {checked} built outside the workspace and ran");
    Ok(())
}

/// A README's first TOML block and first Rust block.
#[derive(Debug)]
struct Example {
    deps: Vec<Dep>,
    code: String,
}

/// One `name = value` line of the TOML's `[dependencies]`.
#[derive(Debug)]
struct Dep {
    name: String,
    value: String,
}

impl Example {
    fn parse(markdown: &str) -> anyhow::Result<Self> {
        let toml = fenced_block(markdown, |info| info == "toml")
            .context("no ```toml block with the dependencies")?;
        let code = fenced_block(markdown, |info| info == "rust" || info.starts_with("rust,"))
            .context("no ```rust block")?;
        let mut deps = Vec::new();
        let mut in_deps = false;
        for line in toml.lines().map(str::trim) {
            if line.starts_with('[') {
                in_deps = line == "[dependencies]";
                continue;
            }
            if !in_deps || line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) = line
                .split_once('=')
                .with_context(|| format!("not a dependency line: {line}"))?;
            let value = without_comment(value);
            deps.push(Dep {
                name: name.trim().to_owned(),
                value: value.trim().to_owned(),
            });
        }
        ensure!(!deps.is_empty(), "the ```toml block has no [dependencies]");
        // Hidden doctest lines (`# ...`) are code too.
        let code = code
            .lines()
            .map(|l| {
                let t = l.trim_start();
                if t == "#" {
                    ""
                } else if let Some(rest) = t.strip_prefix("# ") {
                    rest
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        ensure!(
            code.contains("fn main"),
            "the first ```rust block is not a whole program (no `fn main`)"
        );
        Ok(Self { deps, code })
    }

    /// The crate: `Cargo.toml` with the README's dependencies (natty crates by path to this
    /// workspace, keeping the README's version requirement), the workspace's `Cargo.lock` (so
    /// the versions are those tested, and nothing is fetched that the workspace has), and
    /// `src/main.rs`.
    fn write_crate(&self, root: &Path, dir: &Path, name: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir.join("src"))?;
        let mut manifest = format!(
            "# Generated by `cargo xtask readme-examples` from a README: do not edit.\n\
             [package]\nname = \"readme-{name}\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\
             publish = false\n\n# Not a member of the natty workspace: a project of its own.\n\
             [workspace]\n\n[dependencies]\n"
        );
        for dep in &self.deps {
            let value = if dep.name.starts_with("natty") {
                let path = root.join("crates").join(&dep.name);
                ensure!(
                    path.join("Cargo.toml").is_file(),
                    "the README depends on {}, which is not a crate of this workspace",
                    dep.name
                );
                with_path(&dep.value, &path)?
            } else {
                dep.value.clone()
            };
            manifest.push_str(&format!("{} = {value}\n", dep.name));
        }
        std::fs::write(dir.join("Cargo.toml"), manifest)?;
        std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock"))?;
        std::fs::write(dir.join("src/main.rs"), &self.code)?;
        Ok(())
    }
}

/// A TOML value without its trailing `# comment` (a `#` inside a string stays).
fn without_comment(value: &str) -> &str {
    let mut in_string = false;
    for (i, c) in value.char_indices() {
        match c {
            '"' => in_string = !in_string,
            '#' if !in_string => return &value[..i],
            _ => {}
        }
    }
    value
}

/// `"0.1"` or `{ version = "0.1", ... }` with `path = ...` added.
fn with_path(value: &str, path: &Path) -> anyhow::Result<String> {
    let path = format!("path = {:?}", path.display().to_string());
    if value.starts_with('"') {
        Ok(format!("{{ {path}, version = {value} }}"))
    } else if let Some(rest) = value.strip_prefix('{') {
        Ok(format!("{{ {path},{rest}"))
    } else {
        bail!("cannot read the dependency value {value}")
    }
}

/// The body of the first fenced block whose info string passes `info`.
fn fenced_block(markdown: &str, info: impl Fn(&str) -> bool) -> Option<String> {
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim_start().strip_prefix("```") else {
            continue;
        };
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.trim_start().starts_with("```"))
            .collect();
        if info(rest.trim()) {
            return Some(body.join("\n") + "\n");
        }
    }
    None
}

/// Builds the crate in `dir` into the shared `target`; the binary's path.
fn build(dir: &Path, target: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let status = Command::new("cargo")
        .args(["build", "--quiet", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target)
        // What the workspace sets for itself (lints, rustflags) must not help the example.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .context("running cargo build")?;
    ensure!(
        status.success(),
        "the example does not build in a crate of its own with only the README's \
         dependencies ({})",
        dir.display()
    );
    Ok(target
        .join("debug")
        .join(format!("readme-{name}{}", std::env::consts::EXE_SUFFIX)))
}

/// Runs the example against a fresh server (or the user's `NATS_URL`).
fn run(server: &Server, binary: &Path, readme: &Readme) -> anyhow::Result<()> {
    // Stopped when dropped, at the end of this function.
    let (url, _launched) = match server {
        Server::Url(url) => (url.clone(), None),
        _ => {
            let launched = setup::launch(server, 0, None)?;
            (launched.url(), Some(launched))
        }
    };
    let mut child = Command::new(binary)
        .env("NATS_URL", &url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", binary.display()))?;
    let stdout = child.stdout.take().context("the example's stdout")?;
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("  | {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + RUN_DEADLINE;
    if let Some(marker) = readme.sigterm_after {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(marker) => break,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    bail!(
                        "{}: no line containing {marker:?} within {RUN_DEADLINE:?}",
                        readme.path
                    );
                }
            }
        }
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        ensure!(status.success(), "could not send SIGTERM to the example");
    }
    loop {
        if let Some(status) = child.try_wait()? {
            ensure!(
                status.success(),
                "{}: the example exited with {status}",
                readme.path
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "{}: the example did not end within {RUN_DEADLINE:?}",
                readme.path
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_readme_is_read_as_its_toml_and_first_rust_block() {
        let md = "# x\n\n```sh\ncargo run\n```\n\n```toml\n[dependencies]\n\
                  natty-kv = \"0.1\"   # key/value\ntokio = { version = \"1\", features = \
                  [\"macros\"] }\n```\n\n```rust,no_run\n# use std::fmt;\nfn main() {}\n```\n\
                  ```rust\nfn other() {}\n```\n";
        let e = Example::parse(md).unwrap();
        let names: Vec<_> = e.deps.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["natty-kv", "tokio"]);
        assert_eq!(e.deps[0].value, "\"0.1\"");
        assert_eq!(without_comment("\"a#b\" # c"), "\"a#b\" ");
        assert_eq!(e.code, "use std::fmt;\nfn main() {}");
        assert!(
            Example::parse("```toml\n[dependencies]\na = \"1\"\n```\n```rust\nlet x = 1;\n```")
                .is_err()
        );
    }

    #[test]
    fn natty_dependencies_get_a_path_and_keep_their_version() {
        let p = Path::new("/w/crates/natty");
        assert_eq!(
            with_path("\"0.1\"", p).unwrap(),
            "{ path = \"/w/crates/natty\", version = \"0.1\" }"
        );
        assert_eq!(
            with_path("{ version = \"0.1\", features = [\"stream\"] }", p).unwrap(),
            "{ path = \"/w/crates/natty\", version = \"0.1\", features = [\"stream\"] }"
        );
    }

    /// Every README listed exists, and each has a whole program after its TOML.
    #[test]
    fn every_listed_readme_has_an_example_to_build() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for readme in READMES {
            let text = std::fs::read_to_string(root.join(readme.path)).unwrap();
            if let Err(e) = Example::parse(&text) {
                panic!("{}: {e:#}", readme.path);
            }
        }
    }
}
