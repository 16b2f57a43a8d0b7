//! Shared helpers of the tests that drive Node programs (the phoenix.js and browser tests).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a Node test package lives, by folder name under `tests/`.
pub(crate) fn package_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// Whether the test can run: Node and the package's `node_modules` are there, and `extra`
/// holds. Otherwise it prints why and returns false, unless `require_var` is set (CI), where a
/// missing tool is a failure, never a silent skip.
pub(crate) fn ready(dir: &Path, require_var: &str, extra: Option<(&str, bool)>) -> bool {
    let mut missing = Vec::new();
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        missing.push("node is not installed".to_owned());
    }
    if !dir.join("node_modules").is_dir() {
        missing.push(format!("run `npm ci` in {}", dir.display()));
    }
    if let Some((what, false)) = extra {
        missing.push(what.to_owned());
    }
    if missing.is_empty() {
        return true;
    }
    let why = missing.join("; ");
    if std::env::var_os(require_var).is_some() {
        panic!("{require_var} is set but this test cannot run: {why}");
    }
    println!("skipped: {why} (set {require_var} to make this a failure)");
    false
}

/// Runs `node --test <args>` in `dir` with `env`, failing the test with Node's output when it
/// fails or runs past `limit`.
pub(crate) async fn node_test(dir: &Path, args: &[&str], env: &[(&str, String)], limit: Duration) {
    let file = args.join(" ");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg("--test")
        .args(args)
        .current_dir(dir)
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let output = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("node --test {file} ran past {limit:?}"))
        .expect("node starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "node --test {file} failed:\n{stdout}\n{stderr}"
    );
}
