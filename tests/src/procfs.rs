//! Reading a process's figures from `/proc` (Linux), for the load and soak tools.

/// A `kB` field of `/proc/<pid>/status` (`"VmRSS:"`, `"VmHWM:"`, ...), in KiB; `None` when the
/// process is gone or the field is missing.
///
/// # Examples
///
/// ```
/// let rss = presence_tests::procfs::status_kib(std::process::id(), "VmRSS:");
/// # #[cfg(target_os = "linux")]
/// assert!(rss.is_some_and(|kib| kib > 0));
/// ```
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse().ok())
}
