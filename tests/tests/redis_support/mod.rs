//! What the tests against a real Redis share: the server URL (or a printed skip), unique
//! names, polling with a deadline, and a `redis-server` of a test's own that can crash and
//! restart.
#![allow(dead_code)] // each test file uses its own subset

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// How long any single wait may take before the test fails.
pub(crate) const DEADLINE: Duration = Duration::from_secs(10);

/// The Redis to test against, from `PRESENCE_REDIS_URL`; `None` (after printing why) when it is
/// not set, so the test passes as skipped. `.ci/run` always sets it.
pub(crate) fn redis_url() -> Option<String> {
    match std::env::var("PRESENCE_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!("skipped: PRESENCE_REDIS_URL not set");
            None
        }
    }
}

/// A name unique to this test run: tests running at once, or earlier runs on the same server,
/// never share a channel or a node name.
pub(crate) fn unique(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{prefix}-{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// Polls `cond` until it holds; fails after `within`.
pub(crate) async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A `redis-server` of the test's own on a free port, killed on drop.
pub(crate) struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    /// Starts one and waits until it accepts connections; `None` (after printing why) when
    /// `redis-server` is not installed.
    pub(crate) async fn start() -> Option<OwnRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = OwnRedis { port, child: None };
        if !server.spawn() {
            println!("skipped: redis-server not found on PATH");
            return None;
        }
        server.wait_ready().await;
        Some(server)
    }

    /// Its URL.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(child) => {
                self.child = Some(child);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => panic!("could not start redis-server: {e}"),
        }
    }

    async fn wait_ready(&self) {
        let addr = ("127.0.0.1", self.port);
        eventually("redis-server accepts connections", DEADLINE, || {
            std::net::TcpStream::connect(addr).is_ok()
        })
        .await;
    }

    /// SIGKILL, as a crash.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port, empty.
    pub(crate) async fn restart(&mut self) {
        self.kill();
        // The port may linger briefly; retry until the new server stays up.
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(self.spawn(), "redis-server went missing");
            tokio::time::sleep(Duration::from_millis(100)).await;
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok())
                .is_some_and(|status| status.is_some());
            if !exited {
                break;
            }
            assert!(Instant::now() < deadline, "redis-server did not restart");
        }
        self.wait_ready().await;
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
