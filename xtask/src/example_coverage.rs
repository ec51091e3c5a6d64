//! Every example in the workspace runs somewhere (issue 26 item 3): the facade's examples in
//! `cargo xtask demo`, the harness processes of other crates in the suites that spawn them.
//! An example nothing runs rots unseen; the demo checks this list before it starts.

use std::path::Path;

use anyhow::{Context, bail};

/// Examples of crates other than the facade, and what runs them.
pub(crate) const RUN_ELSEWHERE: &[(&str, &str, &str)] = &[
    (
        "natty-election",
        "candidate",
        "natty-election's tests/processes.rs and tests/fenced_processes.rs spawn it",
    ),
    (
        "natty-group",
        "group_member",
        "natty-group's tests/group_processes.rs and `cargo xtask chaos` spawn it",
    ),
    ("natty-testkit", "certs", "`cargo xtask certs` runs it"),
];

/// `(crate, example)` for every `crates/<crate>/examples/<name>.rs` (or `<name>/main.rs`).
pub(crate) fn examples(root: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    let crates = root.join("crates");
    for krate in std::fs::read_dir(&crates).with_context(|| crates.display().to_string())? {
        let krate = krate?.path();
        let Ok(entries) = std::fs::read_dir(krate.join("examples")) else {
            continue;
        };
        let krate_name = krate
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for entry in entries {
            let path = entry?.path();
            let name = if path.extension().is_some_and(|e| e == "rs") {
                path.file_stem()
            } else if path.join("main.rs").is_file() {
                path.file_name()
            } else {
                None
            };
            if let Some(name) = name {
                found.push((krate_name.clone(), name.to_string_lossy().into_owned()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Fails when an example exists that neither the demo (`demo`, the facade's examples) nor
/// [`RUN_ELSEWHERE`] runs, or when either list names an example that does not exist.
pub(crate) fn check(root: &Path, demo: &[&str]) -> anyhow::Result<()> {
    let all = examples(root)?;
    let mut problems = Vec::new();
    for (krate, name) in &all {
        let covered = if krate == "natty" {
            demo.contains(&name.as_str())
        } else {
            RUN_ELSEWHERE
                .iter()
                .any(|(k, n, _)| k == krate && n == name)
        };
        if !covered {
            problems.push(format!(
                "example `{name}` of {krate} is run by nothing: add it to the demo (natty's \
                 examples) or to RUN_ELSEWHERE with what runs it"
            ));
        }
    }
    let exists = |krate: &str, name: &str| all.iter().any(|(k, n)| k == krate && n == name);
    for name in demo.iter().filter(|n| !exists("natty", n)) {
        problems.push(format!("the demo runs `{name}`, which natty does not have"));
    }
    for (krate, name, _) in RUN_ELSEWHERE.iter().filter(|(k, n, _)| !exists(k, n)) {
        problems.push(format!(
            "RUN_ELSEWHERE names `{name}` of {krate}, which does not exist"
        ));
    }
    if !problems.is_empty() {
        bail!("examples:\n{}", problems.join("\n"));
    }
    eprintln!(
        "==> examples: {} in the workspace, each run by the demo or a suite",
        all.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_and_the_suites_run_every_example_of_this_workspace() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        if let Err(e) = check(&root, &crate::demo_examples()) {
            panic!("{e:#}");
        }
    }

    #[test]
    fn an_example_nothing_runs_is_reported() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut demo = crate::demo_examples();
        demo.retain(|n| *n != "fenced_leader");
        let e = check(&root, &demo).unwrap_err().to_string();
        assert!(
            e.contains("`fenced_leader` of natty is run by nothing"),
            "{e}"
        );
        demo.push("no_such_example");
        let e = check(&root, &demo).unwrap_err().to_string();
        assert!(
            e.contains("`no_such_example`, which natty does not have"),
            "{e}"
        );
    }
}
