//! The chat example: a web page with a room's messages and who is online, over Phoenix channels.
//!
//! `cargo run --release --example chat`, then open <http://127.0.0.1:4000>. `HOST` and `PORT`
//! override the address; `RUST_LOG` the log level (info by default).

#[tokio::main]
async fn main() {
    presence_examples::chat::init_tracing();
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
