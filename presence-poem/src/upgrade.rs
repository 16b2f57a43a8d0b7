//! The websocket handshake (RFC 6455, section 4.2), done here rather than by poem's `WebSocket`
//! extractor so that the connection holds the upgraded stream itself: tungstenite reads its
//! frames, and the connection writes its own (`connection::write_loop`). tungstenite copies
//! every frame it writes into a buffer whose capacity never shrinks, so a socket would keep,
//! for its life, room for the largest frame it was ever sent; the connection's writer instead
//! gathers a batch of frames in a buffer it frees once the batch is written.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};

use poem::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use poem::web::websocket::WebSocketConfig;
use poem::{Request, Response, Upgraded};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// The upgraded connection: tungstenite's stream of the frames read, and the half the
/// connection writes its frames to.
pub(crate) struct WsStream {
    pub(crate) reader: WsReader,
    pub(crate) writer: WriteHalf<Upgraded>,
}

/// The frames read from an upgraded connection.
pub(crate) type WsReader = WebSocketStream<ReadOnly<ReadHalf<Upgraded>>>;

/// The read half of a stream, as tungstenite's stream: what tungstenite writes by itself (its
/// answer to a ping or to a close frame) goes nowhere. The connection answers those: the
/// control loop queues a pong for a ping (`Outbox::pong`), and the writer answers a close.
pub(crate) struct ReadOnly<R>(R);

impl<R: AsyncRead + Unpin> AsyncRead for ReadOnly<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for ReadOnly<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The subprotocol phoenix.js may ask for; answered when asked, never required.
const PROTOCOL: &str = "phoenix";

/// A checked upgrade request, waiting for the application's decision.
pub(crate) struct Upgrade {
    accept: String,
    protocol: bool,
    on_upgrade: poem::OnUpgrade,
}

impl Upgrade {
    /// Checks that `req` is a websocket handshake.
    ///
    /// # Errors
    ///
    /// Why it is not one; [`Refusal::response`] is the answer to send.
    pub(crate) fn check(req: &Request) -> Result<Upgrade, Refusal> {
        let headers = req.headers();
        if req.method() != Method::GET {
            return Err(Refusal::NotAHandshake("the method is not GET"));
        }
        if !has_token(headers, header::UPGRADE, "websocket") {
            return Err(Refusal::NotAHandshake("no `Upgrade: websocket`"));
        }
        if !has_token(headers, header::CONNECTION, "upgrade") {
            return Err(Refusal::NotAHandshake("no `Connection: upgrade`"));
        }
        if headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13")) {
            return Err(Refusal::Version);
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(Refusal::NotAHandshake("no `Sec-WebSocket-Key`"));
        };
        let Ok(on_upgrade) = req.take_upgrade() else {
            return Err(Refusal::NotAHandshake("the connection cannot be upgraded"));
        };
        Ok(Upgrade {
            accept: derive_accept_key(key.as_bytes()),
            // Subprotocol names are compared exactly (RFC 6455, 4.1): the answer must be one
            // of the client's own.
            protocol: tokens(headers, header::SEC_WEBSOCKET_PROTOCOL).any(|t| t == PROTOCOL),
            on_upgrade,
        })
    }

    /// The 101 response; once it is sent and the connection upgraded, `serve` runs on the
    /// stream in a task of its own, which lives as long as `serve` does (the connection
    /// ends it when the socket closes).
    pub(crate) fn accept<F, Fut>(self, config: WebSocketConfig, serve: F) -> Response
    where
        F: FnOnce(WsStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, self.accept);
        if self.protocol {
            response = response.header(header::SEC_WEBSOCKET_PROTOCOL, PROTOCOL);
        }
        // Combinators rather than an `async` block: a block would keep room for what it
        // captured (the pending upgrade, the config, `serve`) for the whole life of the
        // connection, in every socket's task. Each step here replaces the one before.
        let connection = self.on_upgrade.then(move |upgraded| match upgraded {
            Ok(upgraded) => {
                let (read, writer) = tokio::io::split(upgraded);
                WebSocketStream::from_raw_socket(ReadOnly(read), Role::Server, Some(config))
                    .then(move |reader| serve(WsStream { reader, writer }))
                    .left_future()
            }
            Err(error) => {
                tracing::debug!(%error, "websocket upgrade failed");
                std::future::ready(()).right_future()
            }
        });
        tokio::spawn(connection);
        response.finish()
    }
}

/// Why a request is not a websocket handshake this server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not a websocket handshake, and why.
    NotAHandshake(&'static str),
    /// A websocket version other than 13.
    Version,
}

impl Refusal {
    /// The answer: 426 with `Sec-WebSocket-Version: 13` for another version (RFC 6455,
    /// section 4.4), 400 with the reason for anything else.
    pub(crate) fn response(self) -> Response {
        match self {
            Refusal::NotAHandshake(why) => {
                tracing::debug!(why, "refusing websocket: not a websocket handshake");
                Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .body(format!("not a websocket handshake: {why}"))
            }
            Refusal::Version => {
                tracing::debug!("refusing websocket: not version 13");
                Response::builder()
                    .status(StatusCode::UPGRADE_REQUIRED)
                    .header(header::UPGRADE, "websocket")
                    .header(header::CONNECTION, "upgrade")
                    .header(header::SEC_WEBSOCKET_VERSION, "13")
                    .body("websocket version 13 required")
            }
        }
    }
}

/// Whether the comma-separated header `name` holds `token` (ASCII case-insensitive, as
/// `Upgrade` and `Connection` are), in any of its values.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// The trimmed tokens of the comma-separated header `name`, over all its values.
fn tokens(headers: &HeaderMap, name: header::HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_in_lists_and_any_case() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        headers.append(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(has_token(&headers, header::CONNECTION, "upgrade"));
        assert!(has_token(&headers, header::UPGRADE, "websocket"));
        assert!(!has_token(&headers, header::CONNECTION, "close"));
        assert!(!has_token(
            &headers,
            header::SEC_WEBSOCKET_PROTOCOL,
            "phoenix"
        ));
    }
}
