//! Every published crate packages (issue 26 item 9): `cargo package` of all of them in one
//! run (cargo resolves their dependencies on each other through a local registry of the
//! packages just made, and builds each from its `.crate` as crates.io would), and no file in
//! a package names a crate that is not published (natty-testkit, natty-bench, natty-chaos):
//! such a file could not be built by a user of the package, so the manifest `exclude`s it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail, ensure};

/// A workspace member: its name, directory, and whether it is published.
#[derive(Debug)]
struct Member {
    name: String,
    dir: PathBuf,
    published: bool,
}

fn members() -> anyhow::Result<Vec<Member>> {
    let out = Command::new("cargo")
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .context("running cargo metadata")?;
    ensure!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let packages = meta["packages"].as_array().context("no packages")?;
    packages
        .iter()
        .map(|p| {
            let manifest = p["manifest_path"].as_str().context("manifest_path")?;
            Ok(Member {
                name: p["name"].as_str().context("name")?.to_owned(),
                dir: Path::new(manifest)
                    .parent()
                    .context("manifest dir")?
                    .to_path_buf(),
                // `publish = false` is `[]`; unset is `null` (any registry).
                published: !p["publish"].as_array().is_some_and(Vec::is_empty),
            })
        })
        .collect()
}

/// Lines of `text` that use one of `crates` (as `name::` or `use name`), with their numbers.
fn uses_of<'a>(text: &'a str, crates: &[String]) -> Vec<(usize, &'a str)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            crates.iter().any(|c| {
                let ident = c.replace('-', "_");
                line.contains(&format!("{ident}::")) || line.contains(&format!("use {ident}"))
            })
        })
        .map(|(n, line)| (n + 1, line.trim()))
        .collect()
}

/// Checks the file lists, then packages (and verifies) every published crate.
pub(crate) fn check() -> anyhow::Result<()> {
    let members = members()?;
    let unpublished: Vec<String> = members
        .iter()
        .filter(|m| !m.published)
        .map(|m| m.name.clone())
        .collect();
    let published: Vec<&Member> = members.iter().filter(|m| m.published).collect();
    ensure!(!published.is_empty(), "no published crate");
    let mut problems = Vec::new();
    for member in &published {
        let out = Command::new("cargo")
            .args(["package", "--list", "--allow-dirty", "-p", &member.name])
            .output()
            .context("running cargo package --list")?;
        ensure!(
            out.status.success(),
            "cargo package --list -p {} failed: {}",
            member.name,
            String::from_utf8_lossy(&out.stderr)
        );
        for file in String::from_utf8_lossy(&out.stdout).lines() {
            if Path::new(file).extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(member.dir.join(file)) else {
                continue;
            };
            for (n, line) in uses_of(&text, &unpublished) {
                problems.push(format!("{}/{file}:{n}: {line}", member.name));
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "packaged files use crates that are not published ({}); exclude them in the \
             crate's Cargo.toml:\n{}",
            unpublished.join(", "),
            problems.join("\n")
        );
    }
    let mut args = vec!["package", "--allow-dirty"];
    for member in &published {
        args.extend(["-p", member.name.as_str()]);
    }
    crate::run("cargo", &args, &[])?;
    eprintln!(
        "==> package: {} published crates package and build from their .crate files, none \
         uses {}",
        published.len(),
        unpublished.join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_use_of_an_unpublished_crate_is_found() {
        let unpublished = vec!["natty-testkit".to_owned()];
        let text = "use natty_kv::Kv;\nuse natty_testkit::{Nats, wait_for};\nlet n = \
                    natty_testkit::Nats::start();\n";
        let found: Vec<usize> = uses_of(text, &unpublished)
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(found, [2, 3]);
    }
}
