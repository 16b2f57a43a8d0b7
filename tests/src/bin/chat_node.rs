//! The chat server as a standalone process, for the multi-process cluster tests
//! (`tests/cluster_processes.rs`): exactly what `cargo run --example chat` runs, built by cargo
//! for the tests (`CARGO_BIN_EXE_chat_node`). Configured by the environment as documented in
//! `presence_examples::chat`; prints `LISTENING <ip>:<port>` on stdout once it listens.

#[tokio::main]
async fn main() {
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
