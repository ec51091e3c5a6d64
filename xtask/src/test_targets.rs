//! Every test binary the workspace builds must be run by some CI step: a test target behind a
//! feature (`required-features`), or one a step forgot, is otherwise skipped in silence.
//!
//! The binaries come from `cargo test --no-run --message-format=json` (package, target, kind,
//! executable); what a step ran comes from cargo's own `Running <src> (<executable>)` lines,
//! read from its stderr while it is passed through.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, bail};

/// One test binary cargo builds.
#[derive(Debug, Clone)]
pub(crate) struct TestBinary {
    /// `natty-kv`.
    pub(crate) package: String,
    /// `metrics` (a `tests/metrics.rs` target), or the crate name for unit tests.
    pub(crate) target: String,
    /// `test` for an integration-test target; `lib`, `bin`, `example` for unit tests.
    pub(crate) kind: String,
    /// The executable's file name (`metrics-0123abcd`): unique per build.
    pub(crate) file: String,
}

impl TestBinary {
    fn describe(&self) -> String {
        format!(
            "{} {} `{}` ({})",
            self.package, self.kind, self.target, self.file
        )
    }
}

/// The test binaries `cargo test <args> --no-run` builds (args: `--workspace`, features).
pub(crate) fn list(args: &[&str]) -> anyhow::Result<Vec<TestBinary>> {
    eprintln!(
        "\n==> cargo test {} --no-run (listing the test binaries)",
        args.join(" ")
    );
    let out = Command::new("cargo")
        .args([
            "test",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("`cargo test {} --no-run` failed", args.join(" "));
    }
    let binaries = parse_artifacts(&String::from_utf8_lossy(&out.stdout))?;
    if binaries.is_empty() {
        bail!("cargo built no test binaries: nothing to check");
    }
    Ok(binaries)
}

/// The test binaries among cargo's JSON messages (one per line).
fn parse_artifacts(json_lines: &str) -> anyhow::Result<Vec<TestBinary>> {
    let mut binaries = Vec::new();
    for line in json_lines.lines().filter(|l| l.starts_with('{')) {
        let msg: serde_json::Value = serde_json::from_str(line).context("cargo's JSON output")?;
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let Some(executable) = msg["executable"].as_str() else {
            continue;
        };
        let file = Path::new(executable)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .context("an executable without a file name")?;
        // The package: the directory of its manifest (`crates/natty-kv/Cargo.toml`).
        let package = msg["manifest_path"]
            .as_str()
            .and_then(|m| Path::new(m).parent())
            .and_then(Path::file_name)
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let target = &msg["target"];
        binaries.push(TestBinary {
            package,
            target: target["name"].as_str().unwrap_or_default().to_owned(),
            kind: target["kind"][0].as_str().unwrap_or_default().to_owned(),
            file,
        });
    }
    Ok(binaries)
}

/// Runs `cargo <args>` (a `cargo test`), passing its output through, and returns the file names
/// of the test binaries it ran.
pub(crate) fn run_tests(args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<BTreeSet<String>> {
    eprintln!("\n==> cargo {}", args.join(" "));
    let started = Instant::now();
    let mut child = Command::new("cargo")
        .args(args)
        .envs(envs.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .context("running cargo")?;
    let stderr = child.stderr.take().context("cargo's stderr")?;
    let mut ran = BTreeSet::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        eprintln!("{line}");
        if let Some(file) = ran_binary(&line) {
            ran.insert(file);
        }
    }
    let status = child.wait()?;
    eprintln!(
        "<== {:.1} s: cargo {}",
        started.elapsed().as_secs_f64(),
        args.join(" ")
    );
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(ran)
}

/// `     Running tests/kv.rs (target/debug/deps/kv-0123abcd)` → `kv-0123abcd`.
fn ran_binary(line: &str) -> Option<String> {
    let rest = line.trim_start().strip_prefix("Running ")?;
    let path = rest.rsplit_once('(')?.1.strip_suffix(')')?;
    Path::new(path)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
}

/// Fails naming every binary of `expected` that `ran` does not contain.
pub(crate) fn check_ran(
    step: &str,
    expected: &[&TestBinary],
    ran: &BTreeSet<String>,
) -> anyhow::Result<()> {
    let missing: Vec<String> = expected
        .iter()
        .filter(|b| !ran.contains(&b.file))
        .map(|b| b.describe())
        .collect();
    if !missing.is_empty() {
        bail!(
            "step `{step}` did not run these test binaries (a feature not enabled, or a target \
             no step runs):\n  {}",
            missing.join("\n  ")
        );
    }
    eprintln!(
        "==> step `{step}` ran all {} test binaries it must",
        expected.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_line_names_its_binary() {
        assert_eq!(
            ran_binary("     Running tests/kv.rs (target/debug/deps/kv-0123abcd)").as_deref(),
            Some("kv-0123abcd")
        );
        assert_eq!(
            ran_binary("     Running unittests src/lib.rs (target/debug/deps/natty_kv-99)")
                .as_deref(),
            Some("natty_kv-99")
        );
        assert_eq!(ran_binary("   Doc-tests natty_kv"), None);
        assert_eq!(ran_binary("test running ... ok"), None);
    }

    #[test]
    fn artifacts_of_tests_are_listed_and_others_are_not() {
        let json = r#"{"reason":"compiler-artifact","manifest_path":"/w/crates/natty-kv/Cargo.toml","target":{"kind":["test"],"name":"metrics"},"profile":{"test":true},"executable":"/w/target/debug/deps/metrics-ab12"}
{"reason":"compiler-artifact","manifest_path":"/w/crates/natty-kv/Cargo.toml","target":{"kind":["lib"],"name":"natty_kv"},"profile":{"test":false},"executable":null}
{"reason":"build-finished","success":true}"#;
        let found = parse_artifacts(json).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].package, "natty-kv");
        assert_eq!(found[0].target, "metrics");
        assert_eq!(found[0].kind, "test");
        assert_eq!(found[0].file, "metrics-ab12");
    }

    #[test]
    fn a_binary_that_did_not_run_fails_the_check() {
        let b = TestBinary {
            package: "natty-kv".into(),
            target: "metrics".into(),
            kind: "test".into(),
            file: "metrics-ab12".into(),
        };
        let none = BTreeSet::new();
        let err = check_ran("integration", &[&b], &none).unwrap_err();
        assert!(err.to_string().contains("natty-kv test `metrics`"), "{err}");
        let ran = BTreeSet::from(["metrics-ab12".to_owned()]);
        check_ran("integration", &[&b], &ran).unwrap();
    }
}
