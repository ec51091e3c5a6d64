//! Every published crate carries what crates.io and docs.rs show: description, keywords,
//! categories, readme (a file that exists), documentation, license and repository, and the
//! docs.rs set-up that marks each item with the feature it needs. Read from the manifests as
//! text (a line per key in `[package]`), so xtask needs no TOML parser.

use std::path::Path;

use anyhow::{Context, bail};

/// The `[package]` keys a published crate must set (directly or `.workspace = true`).
const REQUIRED: [&str; 7] = [
    "description",
    "keywords",
    "categories",
    "readme",
    "documentation",
    "license",
    "repository",
];

/// Checks every crate under `root/crates` that is published (no `publish = false`).
pub(crate) fn check(root: &Path) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    let mut published = 0;
    let dir = root.join("crates");
    let mut crates: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| dir.display().to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    crates.sort();
    for krate in crates {
        let manifest = krate.join("Cargo.toml");
        let text =
            std::fs::read_to_string(&manifest).with_context(|| manifest.display().to_string())?;
        let Some(found) = problems_in(&text, &krate) else {
            continue;
        };
        published += 1;
        problems.extend(
            found
                .into_iter()
                .map(|p| format!("{}: {p}", manifest.display())),
        );
    }
    if published == 0 {
        bail!("no published crate found under {}", dir.display());
    }
    if !problems.is_empty() {
        bail!("published crates lack metadata:\n{}", problems.join("\n"));
    }
    eprintln!("==> crate metadata: {published} published crates complete");
    Ok(())
}

/// What the manifest `text` of the crate in `dir` lacks; `None` for an unpublished crate.
fn problems_in(text: &str, dir: &Path) -> Option<Vec<String>> {
    let package = section(text, "package");
    let value = |key: &str| {
        package.iter().find_map(|line| {
            let (k, v) = line.split_once('=')?;
            let k = k.trim();
            (k == key || k == format!("{key}.workspace")).then(|| v.trim().to_owned())
        })
    };
    if value("publish").is_some_and(|v| v == "false") {
        return None;
    }
    let mut problems: Vec<String> = REQUIRED
        .iter()
        .filter(|key| value(key).is_none_or(|v| v.is_empty() || v == "[]" || v == "\"\""))
        .map(|key| format!("[package] has no `{key}`"))
        .collect();
    if let Some(readme) = value("readme") {
        let path = dir.join(readme.trim_matches('"'));
        if !readme.ends_with("true") && !path.is_file() {
            problems.push(format!("readme {} does not exist", path.display()));
        }
    }
    let docs_rs = section(text, "package.metadata.docs.rs");
    if !docs_rs
        .iter()
        .any(|l| l.replace(' ', "") == "all-features=true")
        || !docs_rs
            .iter()
            .any(|l| l.contains("\"--cfg\"") && l.contains("\"docsrs\""))
    {
        problems.push(
            "[package.metadata.docs.rs] needs all-features = true and rustdoc-args = \
             [\"--cfg\", \"docsrs\"]"
                .to_owned(),
        );
    }
    let lib = dir.join("src/lib.rs");
    let marks_features = std::fs::read_to_string(&lib)
        .is_ok_and(|s| s.contains("#![cfg_attr(docsrs, feature(doc_cfg))]"));
    if !marks_features {
        problems.push(format!(
            "{} lacks #![cfg_attr(docsrs, feature(doc_cfg))]",
            lib.display()
        ));
    }
    Some(problems)
}

/// The lines of the `[name]` table (comments and blank lines dropped).
fn section<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!("[{name}]");
    text.lines()
        .map(str::trim)
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_crates_of_this_workspace_have_their_metadata() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        if let Err(e) = check(&root) {
            panic!("{e:#}");
        }
    }

    #[test]
    fn a_crate_without_keywords_or_docs_rs_set_up_is_reported() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/natty-core");
        let manifest = "[package]\nname = \"x\"\ndescription = \"d\"\nlicense.workspace = true\n\
                        repository.workspace = true\nreadme = \"README.md\"\n\
                        documentation = \"https://docs.rs/x\"\ncategories = [\"asynchronous\"]\n\
                        keywords = []\n\n[dependencies]\nkeywords = [\"not the package's\"]\n";
        let problems = problems_in(manifest, &dir).unwrap_or_default();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("`keywords`"), "{problems:?}");
        assert!(problems[1].contains("docs.rs"), "{problems:?}");
        let unpublished = "[package]\nname = \"x\"\npublish = false\n";
        assert!(problems_in(unpublished, &dir).is_none());
        let missing_readme = manifest
            .replace("keywords = []", "keywords = [\"k\"]")
            .replace("README.md", "NOPE.md");
        let problems = problems_in(&missing_readme, &dir).unwrap_or_default();
        assert!(
            problems.iter().any(|p| p.contains("NOPE.md")),
            "{problems:?}"
        );
    }
}
