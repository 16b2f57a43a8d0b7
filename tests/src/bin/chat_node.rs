//! The chat server as a standalone process, for the multi-process cluster tests
//! (`tests/cluster_processes.rs`): exactly what `cargo run --example chat` runs, built by cargo
//! for the tests (`CARGO_BIN_EXE_chat_node`). Configured by the environment as documented in
//! `presence_examples::chat`; prints `LISTENING <ip>:<port>` on stdout once it listens.
//!
//! With `CHAT_NODE_EXIT_WITH_STDIN=1` it also exits (code 3, no graceful shutdown) when its
//! stdin closes, so a test runner that dies without killing it leaves no node behind.
//!
//! With `CHAT_NODE_HEAP_FILE=<path>` it writes the bytes of heap in use to that file every
//! second (the churn soak reads it beside RSS, to tell what the node holds from what the
//! allocator keeps). It allocates with jemalloc and its background thread, as the chat
//! example does (the system allocator where jemalloc does not build, MSVC).

/// The allocator, counting the bytes in use.
#[cfg(target_env = "msvc")]
#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// The allocator, counting the bytes in use.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: cap::Cap<tikv_jemallocator::Jemalloc> =
    cap::Cap::new(tikv_jemallocator::Jemalloc, usize::MAX);

/// Writes the heap in use to `path` every second, for the life of the process.
fn report_heap(path: std::path::PathBuf) {
    let tmp = path.with_extension("tmp");
    std::thread::spawn(move || {
        loop {
            let bytes = ALLOCATOR.allocated().to_string();
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    });
}

/// Writes jemalloc's statistics (`malloc_stats_print`) to `<dir>/<node>-<secs>.txt` every
/// 30 s, for the life of the process: which size classes hold the resident memory.
#[cfg(not(target_env = "msvc"))]
fn report_jemalloc(dir: std::path::PathBuf) {
    let node = std::env::var("PRESENCE_NODE").unwrap_or_else(|_| "node".to_owned());
    let start = std::time::Instant::now();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(30));
            let secs = start.elapsed().as_secs();
            let path = dir.join(format!("{node}-{secs:04}.txt"));
            if let Ok(file) = std::fs::File::create(path) {
                let options = tikv_jemalloc_ctl::stats_print::Options::default();
                let _ = tikv_jemalloc_ctl::stats_print::stats_print(file, options);
            }
        }
    });
}

#[tokio::main]
async fn main() {
    #[cfg(not(target_env = "msvc"))]
    if let Some(dir) = std::env::var_os("CHAT_NODE_JEMALLOC_STATS") {
        report_jemalloc(dir.into());
    }
    if std::env::var_os("CHAT_NODE_EXIT_WITH_STDIN").is_some() {
        // A plain thread: a pending blocking read never delays the process's exit.
        std::thread::spawn(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            // Not `eprintln!`: it panics when stderr is gone too (the runner died), and the
            // thread would end without exiting the process.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"chat_node: stdin closed; exiting\n",
            );
            std::process::exit(3);
        });
    }
    if let Some(path) = std::env::var_os("CHAT_NODE_HEAP_FILE") {
        report_heap(path.into());
    }
    presence_examples::chat::init_tracing();
    #[cfg(not(target_env = "msvc"))]
    presence_examples::chat::start_jemalloc_background_thread();
    let config = match presence_examples::chat::ChatConfig::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("chat_node: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = presence_examples::chat::run(config).await {
        eprintln!("chat_node: {e}");
        std::process::exit(1);
    }
}
