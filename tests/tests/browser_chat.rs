//! The chat page in headless Chromium (tests/browser/chat.test.mjs, driven by playwright-core),
//! against the chat server started here on a free port, directly and through a proxy that
//! refuses websockets (as some corporate proxies do).

mod support;

use std::path::Path;
use std::time::Duration;

use presence_examples::chat::{ChatConfig, ChatServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A proxy in front of `upstream` that answers 403 to every request for
/// `/socket/websocket` and passes everything else through. Aborted when dropped.
struct WebSocketBlockingProxy {
    addr: std::net::SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for WebSocketBlockingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WebSocketBlockingProxy {
    async fn start(upstream: std::net::SocketAddr) -> WebSocketBlockingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("an address");
        // Each connection's task ends when either side closes; the accept loop's with `task`.
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                connections.spawn(Self::serve(client, upstream));
                while connections.try_join_next().is_some() {}
            }
        });
        WebSocketBlockingProxy { addr, task }
    }

    /// Reads the first request head; refuses a websocket, else relays the connection.
    async fn serve(mut client: TcpStream, upstream: std::net::SocketAddr) {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let first_line = head.split(|b| *b == b'\n').next().unwrap_or_default();
        if String::from_utf8_lossy(first_line).contains("/socket/websocket") {
            let refusal =
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            let _ = client.write_all(refusal).await;
            return;
        }
        let Ok(mut server) = TcpStream::connect(upstream).await else {
            return;
        };
        if server.write_all(&head).await.is_ok() {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        }
    }
}

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
        // A long-poll page that closes leaves 3 s after its last poll, not 15 s.
        longpoll_window: Some(Duration::from_secs(2)),
        ..ChatConfig::default()
    })
    .await
    .expect("the chat server starts");
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&shots).expect("the screenshot folder can be made");
    let url = format!("http://{}/", server.local_addr());
    let proxy = WebSocketBlockingProxy::start(server.local_addr()).await;
    let blocked_url = format!("http://{}/", proxy.addr);
    support::node_test(
        &dir,
        &["chat.test.mjs"],
        &[
            ("CHAT_URL", url),
            ("BLOCKED_CHAT_URL", blocked_url),
            ("SCREENSHOT_DIR", shots.display().to_string()),
            ("CHROMIUM", chromium),
        ],
        Duration::from_secs(180),
    )
    .await;
    for shot in [
        "chat-two-users.png",
        "chat-long-poll.png",
        "presence-status.png",
    ] {
        assert!(
            shots.join(shot).exists(),
            "{shot}: a screenshot was saved under target/"
        );
    }
    drop(proxy);
    server.shutdown().await;
}
