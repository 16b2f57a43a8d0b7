//! What the docs say agrees with the code. The README's tour and presence-poem's crate docs
//! show the same application, word for word (both are compiled as doctests, and this keeps
//! them from drifting apart); OBSERVABILITY.md's table has one row per metric the crates
//! define, of the type they record.

use std::path::Path;

fn read(relative: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// The first code block opened by `fence` after `heading`, without the fences.
fn block_after(text: &str, heading: &str, fence: &str) -> String {
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("{heading:?} is missing"));
    let rest = &text[start..];
    let open = rest
        .find(fence)
        .unwrap_or_else(|| panic!("no {fence:?} after {heading:?}"));
    let body = &rest[open + fence.len()..];
    let body = body.strip_prefix('\n').unwrap_or(body);
    let close = body.find("```").expect("the block closes");
    body[..close].to_owned()
}

#[test]
fn the_readme_tour_is_the_crate_docs_example() {
    let readme = block_after(&read("README.md"), "## A tour", "```rust,no_run");
    let lib: String = read("presence-poem/src/lib.rs")
        .lines()
        .filter_map(|line| line.strip_prefix("//!"))
        .map(|line| line.strip_prefix(' ').unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n");
    let docs = block_after(&lib, "# Examples", "```no_run");
    assert!(
        readme.contains("#[derive(Presence)]"),
        "the tour uses the derive"
    );
    assert_eq!(
        readme, docs,
        "README.md's tour and presence-poem's crate example differ"
    );
}

/// `(name, type)` of every metric a `metrics.rs` defines: a `pub(crate) const` whose value
/// starts with `presence_`, its type the first word of the doc comment above it.
fn defined_metrics(source: &str) -> Vec<(String, String)> {
    let mut defined = Vec::new();
    let mut doc_first_word: Option<String> = None;
    for line in source.lines().map(str::trim) {
        if let Some(doc) = line.strip_prefix("///") {
            doc_first_word.get_or_insert_with(|| {
                let word = doc.split_whitespace().next().unwrap_or("");
                word.trim_end_matches([',', ':']).to_lowercase()
            });
        } else if line.starts_with("pub(crate) const ") && line.contains(": &str = \"presence_") {
            let name = line.split('"').nth(1).expect("a quoted name").to_owned();
            let kind = doc_first_word.take().unwrap_or_default();
            defined.push((name, kind));
        } else if !line.starts_with("#[") {
            doc_first_word = None;
        }
    }
    defined
}

/// `(name, type)` of every row of the table under `## Metrics`.
fn documented_metrics(doc: &str) -> Vec<(String, String)> {
    let start = doc.find("## Metrics").expect("a Metrics section");
    let section = &doc[start..];
    let end = section[2..].find("\n## ").map_or(section.len(), |i| i + 2);
    section[..end]
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((name.to_owned(), (*cells.get(2)?).to_owned()))
        })
        .collect()
}

#[test]
fn the_observability_table_lists_every_metric_and_no_other() {
    let mut defined = defined_metrics(&read("presence-core/src/metrics.rs"));
    defined.extend(defined_metrics(&read("presence-poem/src/metrics.rs")));
    let documented = documented_metrics(&read("OBSERVABILITY.md"));
    assert!(defined.len() > 30, "{defined:?}");
    for (name, kind) in &defined {
        assert!(
            ["counter", "gauge", "histogram"].contains(&kind.as_str()),
            "{name}: its doc comment should start with its type, not {kind:?}"
        );
    }
    let mut defined_sorted = defined.clone();
    defined_sorted.sort();
    let mut documented_sorted = documented.clone();
    documented_sorted.sort();
    for row in &documented_sorted {
        assert!(
            defined_sorted.contains(row),
            "OBSERVABILITY.md documents {row:?}, which the code does not define so"
        );
    }
    for metric in &defined_sorted {
        assert!(
            documented_sorted.contains(metric),
            "{metric:?} is not in OBSERVABILITY.md's table"
        );
    }
    assert_eq!(documented.len(), defined.len(), "a row twice");
}
