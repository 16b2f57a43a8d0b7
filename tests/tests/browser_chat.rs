//! The chat page in headless Chromium (tests/browser/chat.test.mjs, driven by playwright-core),
//! against the chat server started here on a free port.

mod support;

use std::path::Path;
use std::time::Duration;

use presence_examples::chat::{ChatConfig, ChatServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_page_in_headless_chromium() {
    let dir = support::package_dir("browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    let has_chromium = Path::new(&chromium).exists();
    if !support::ready(
        &dir,
        "PRESENCE_REQUIRE_BROWSER",
        Some(("chromium is not installed", has_chromium)),
    ) {
        return;
    }
    let server = ChatServer::start(ChatConfig {
        port: 0,
        node_name: "browser-test".to_owned(),
        ..ChatConfig::default()
    })
    .await
    .expect("the chat server starts");
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&shots).expect("the screenshot folder can be made");
    let url = format!("http://{}/", server.local_addr());
    support::node_test(
        &dir,
        &["chat.test.mjs"],
        &[
            ("CHAT_URL", url),
            ("SCREENSHOT_DIR", shots.display().to_string()),
            ("CHROMIUM", chromium),
        ],
        Duration::from_secs(180),
    )
    .await;
    assert!(
        shots.join("chat-two-users.png").exists(),
        "a screenshot was saved under target/"
    );
    assert!(
        shots.join("presence-status.png").exists(),
        "the status page's screenshot was saved under target/"
    );
    server.shutdown().await;
}
