//! The metrics table of docs/observability.md against the `describe_*` calls (issue 26 item
//! 5): the recorder's HELP text and unit are what a dashboard shows, and the table is what a
//! user reads, so both say the same — each row is exactly what a call describes (name, kind,
//! unit, help text), and every call has its row. On a mismatch the expected rows are printed,
//! ready to paste.

use std::path::Path;

use anyhow::{Context, bail, ensure};

/// Where the table is.
const DOC: &str = "docs/observability.md";

/// One metric, as described in code or as a row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Metric {
    name: String,
    kind: String,
    /// `count`, `seconds`, ... or `-` when the call gives no unit.
    unit: String,
    help: String,
}

impl Metric {
    fn row(&self) -> String {
        format!(
            "| `{}` | {} | {} | {} |",
            self.name, self.kind, self.unit, self.help
        )
    }
}

/// Checks the table against the calls in `crates/*/src/**/obs.rs`.
pub(crate) fn check(root: &Path) -> anyhow::Result<()> {
    let mut described = Vec::new();
    for krate in std::fs::read_dir(root.join("crates"))? {
        let src = krate?.path().join("src");
        for file in obs_files(&src)? {
            let text = std::fs::read_to_string(&file)?;
            described.extend(describe_calls(&text).with_context(|| file.display().to_string())?);
        }
    }
    described.sort_by(|a, b| a.name.cmp(&b.name));
    for krate in std::fs::read_dir(root.join("crates"))? {
        let src = krate?.path().join("src");
        for file in obs_files(&src)? {
            let text = std::fs::read_to_string(&file)?;
            for name in recorded_names(&text) {
                ensure!(
                    described.iter().any(|m| m.name == name),
                    "{}: metric {name} is recorded but never described (describe_* call)",
                    file.display()
                );
            }
        }
    }
    ensure!(
        !described.is_empty(),
        "no describe_* call found in any obs.rs"
    );
    let doc = std::fs::read_to_string(root.join(DOC)).context(DOC)?;
    let mut rows = table_rows(&doc)?;
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    let mut problems = Vec::new();
    for m in &described {
        match rows.iter().find(|r| r.name == m.name) {
            None => problems.push(format!("{}: described in code, no row in {DOC}", m.name)),
            Some(r) if r != m => problems.push(format!(
                "{}: the row says\n    {}\n  the describe call says\n    {}",
                m.name,
                r.row(),
                m.row()
            )),
            Some(_) => {}
        }
    }
    for r in rows
        .iter()
        .filter(|r| !described.iter().any(|m| m.name == r.name))
    {
        problems.push(format!("{}: a row in {DOC}, described by no code", r.name));
    }
    if !problems.is_empty() {
        bail!(
            "{DOC}'s metrics table and the describe_* calls differ:\n{}\n\nrows from the code \
             (metric | kind | unit | help; add the labels column):\n{}",
            problems.join("\n"),
            described
                .iter()
                .map(Metric::row)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    eprintln!(
        "==> metrics table: {} metrics, each described in code as in {DOC}",
        described.len()
    );
    Ok(())
}

/// `obs.rs` files under `dir`, recursively.
fn obs_files(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(found);
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(obs_files(&path)?);
        } else if path.file_name().is_some_and(|n| n == "obs.rs") {
            found.push(path);
        }
    }
    Ok(found)
}

/// Every `describe_<kind>!("name", [Unit::X,] "help")` in `text`.
fn describe_calls(text: &str) -> anyhow::Result<Vec<Metric>> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("describe_") {
        rest = &rest[at + "describe_".len()..];
        let Some((kind, after)) = ["counter!(", "gauge!(", "histogram!("]
            .iter()
            .find_map(|k| rest.strip_prefix(k).map(|a| (k.trim_end_matches("!("), a)))
        else {
            continue;
        };
        let (args, after) = macro_args(after).with_context(|| format!("describe_{kind}!"))?;
        rest = after;
        let (strings, units): (Vec<_>, Vec<_>) = args.into_iter().partition(|a| a.is_string);
        ensure!(
            strings.len() == 2 && units.len() <= 1,
            "describe_{kind}!: want a name, an optional Unit:: and a help string literal"
        );
        found.push(Metric {
            name: strings[0].text.clone(),
            kind: kind.to_owned(),
            unit: units
                .first()
                .map_or_else(|| "-".to_owned(), |u| u.text.to_lowercase()),
            help: strings[1].text.clone(),
        });
    }
    Ok(found)
}

#[derive(Debug)]
struct Arg {
    is_string: bool,
    text: String,
}

/// The arguments up to the closing parenthesis: string literals and `Unit::X` paths.
fn macro_args(text: &str) -> anyhow::Result<(Vec<Arg>, &str)> {
    let mut args = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            ')' => return Ok((args, &text[i + 1..])),
            ',' => {}
            c if c.is_whitespace() => {}
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => {
                            if let Some((_, e)) = chars.next() {
                                s.push(e);
                            }
                        }
                        Some((_, c)) => s.push(c),
                        None => bail!("unterminated string"),
                    }
                }
                args.push(Arg {
                    is_string: true,
                    text: s,
                });
            }
            _ => {
                let word: String = std::iter::once(c)
                    .chain(std::iter::from_fn(|| {
                        chars
                            .next_if(|(_, c)| c.is_alphanumeric() || *c == ':' || *c == '_')
                            .map(|(_, c)| c)
                    }))
                    .collect();
                let unit = word
                    .strip_prefix("Unit::")
                    .or_else(|| word.strip_prefix("metrics::Unit::"))
                    .with_context(|| format!("an argument that is not a literal: {word}"))?;
                args.push(Arg {
                    is_string: false,
                    text: unit.to_owned(),
                });
            }
        }
    }
    bail!("no closing parenthesis")
}

/// The rows `| `natty_...` | kind | unit | help | labels |` of the table.
/// The literal names of the `counter!`/`gauge!`/`histogram!` calls in `code`.
fn recorded_names(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    for call in ["counter!(", "gauge!(", "histogram!("] {
        let mut rest = code;
        while let Some(at) = rest.find(call) {
            // `describe_counter!(` is not a recording.
            let described = rest[..at].ends_with("describe_");
            rest = &rest[at + call.len()..];
            if described {
                continue;
            }
            let trimmed = rest.trim_start();
            if let Some(literal) = trimmed.strip_prefix('"')
                && let Some(end) = literal.find('"')
            {
                names.push(literal[..end].to_owned());
            }
        }
    }
    names
}

fn table_rows(doc: &str) -> anyhow::Result<Vec<Metric>> {
    let mut rows = Vec::new();
    for line in doc.lines().filter(|l| l.starts_with("| `natty_")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        ensure!(
            cells.len() == 5,
            "{DOC}: a metrics row has 5 cells (metric | kind | unit | help | labels): {line}"
        );
        rows.push(Metric {
            name: cells[0].trim_matches('`').to_owned(),
            kind: cells[1].to_owned(),
            unit: cells[2].to_owned(),
            help: cells[3].to_owned(),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_workspace_describes_every_metric_as_its_table_says() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        check(&root).unwrap();
    }

    #[test]
    fn recorded_names_are_found_but_not_the_describe_calls() {
        let code = r#"
            metrics::gauge!("a_members", labels(config)).set(1.0);
            metrics::counter!(
                "b_total", l).increment(1);
            describe_counter!("c_total", Unit::Count, "C");
            histogram!(name_in_a_variable).record(1.0);
        "#;
        assert_eq!(recorded_names(code), vec!["b_total", "a_members"]);
    }

    #[test]
    fn describe_calls_are_read_with_and_without_a_unit() {
        let code = r#"
            describe_counter!(
                "a_total",
                Unit::Count,
                "Things (all of them)"
            );
            describe_gauge!("b", "1 while \"so\", else 0");
            metrics::describe_histogram!("c_seconds", metrics::Unit::Seconds, "Time");
        "#;
        let got = describe_calls(code).unwrap();
        let rows: Vec<String> = got.iter().map(Metric::row).collect();
        assert_eq!(
            rows,
            [
                "| `a_total` | counter | count | Things (all of them) |",
                "| `b` | gauge | - | 1 while \"so\", else 0 |",
                "| `c_seconds` | histogram | seconds | Time |",
            ]
        );
    }

    #[test]
    fn this_workspace_s_table_matches_its_describe_calls() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        if let Err(e) = check(&root) {
            panic!("{e:#}");
        }
    }

    #[test]
    fn a_row_that_differs_is_reported_with_the_row_to_paste() {
        let m = Metric {
            name: "natty_x_total".into(),
            kind: "counter".into(),
            unit: "count".into(),
            help: "X".into(),
        };
        let rows = table_rows("| `natty_x_total` | counter | count | Y | `l` |\n").unwrap();
        assert_ne!(rows[0], m);
        assert_eq!(rows[0].help, "Y");
        assert!(table_rows("| `natty_x_total` | counter | X |\n").is_err());
    }
}
