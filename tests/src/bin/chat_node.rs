//! The chat server as a standalone process, for the multi-process cluster tests
//! (`tests/cluster_processes.rs`): exactly what `cargo run --example chat` runs, built by cargo
//! for the tests (`CARGO_BIN_EXE_chat_node`). Configured by the environment as documented in
//! `presence_examples::chat`; prints `LISTENING <ip>:<port>` on stdout once it listens.
//!
//! With `CHAT_NODE_EXIT_WITH_STDIN=1` it also exits (code 3, no graceful shutdown) when its
//! stdin closes, so a test runner that dies without killing it leaves no node behind.

#[tokio::main]
async fn main() {
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
    presence_examples::chat::init_tracing();
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
