//! The chat example: a web page with a room's messages and who is online, over Phoenix channels.
//!
//! `cargo run --release --example chat`, then open <http://127.0.0.1:4000>. `HOST` and `PORT`
//! override the address; `RUST_LOG` the log level (info by default; logs go to stderr).
//! Once listening it prints `LISTENING <ip>:<port>` on stdout.
//!
//! Cluster: set `PRESENCE_REDIS_URL` (e.g. `redis://127.0.0.1:6379`) and a unique
//! `PRESENCE_NODE` per node; nodes with the same `PRESENCE_PUBSUB_NAME` (default `chat`) on
//! that Redis share their presences and messages. `PRESENCE_BROADCAST_PERIOD_MS`,
//! `PRESENCE_DOWN_PERIOD_MS` and `PRESENCE_PERMDOWN_PERIOD_MS` set the tracker periods.
//! Ctrl-C or SIGTERM shuts down gracefully (sockets closed with 1012, then a graceful
//! permdown so peers drop this node's presences at once) and exits 0. Configuration errors exit
//! 2, start failures (Redis unreachable, port taken) 1.

/// jemalloc, not the system allocator: in the churn soak, whose node restarts send thousands
/// of clients reconnecting at once, glibc's malloc let the nodes' RSS end 22 to 43 % above
/// their first minute, jemalloc 2 to 8 %, on the same run (RELIABILITY.md, "Churn soak").
/// Its background thread, started in `main`, returns freed pages on time, also when the
/// server goes quiet: sampled once quiet after the churn, at most 2.3 % above.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() {
    presence_examples::chat::init_tracing();
    #[cfg(not(target_env = "msvc"))]
    presence_examples::chat::start_jemalloc_background_thread();
    let config = match presence_examples::chat::ChatConfig::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("chat: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = presence_examples::chat::run(config).await {
        eprintln!("chat: {e}");
        std::process::exit(1);
    }
}
