//! The README's tour and presence-poem's crate docs show the same application, word for
//! word: both are compiled as doctests, and this keeps them from drifting apart.

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
