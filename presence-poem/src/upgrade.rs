//! The websocket handshake (RFC 6455, section 4.2), done here rather than by poem's `WebSocket`
//! extractor so that the connection holds tokio-tungstenite's stream itself: poem's wrapper
//! sends whole messages only, and a message written whole stays in tungstenite's write buffer,
//! whose capacity never shrinks. With the stream in hand, the connection writes large messages
//! as fragments (see `connection::feed`), so no socket keeps a buffer the size of the
//! largest `presence_state` it ever received.

use std::future::Future;

use futures_util::FutureExt;

use poem::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use poem::web::websocket::WebSocketConfig;
use poem::{Request, Response, Upgraded};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// The upgraded connection, as the connection task reads and writes it.
pub(crate) type WsStream = WebSocketStream<Upgraded>;

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
            Ok(upgraded) => WebSocketStream::from_raw_socket(upgraded, Role::Server, Some(config))
                .then(serve)
                .left_future(),
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
