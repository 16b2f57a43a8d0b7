//! Connecting: serializer negotiation, the connect hook, auth tokens, socket ids.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use presence_core::PubSub;
use presence_core::pubsub::Message;
use presence_poem::{ConnectError, ConnectInfo, Connected};
use serde_json::json;
use tokio_tungstenite::tungstenite::{self, http::HeaderValue};

async fn status_of(addr: std::net::SocketAddr, query: &str) -> u16 {
    match tokio_tungstenite::connect_async(url(addr, query)).await {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[tokio::test]
async fn vsn_selects_the_serializer() {
    let server = default_server().await;
    // No vsn: V1 objects.
    let mut v1 = Client::connect(server.addr, "").await;
    let reply = v1.heartbeat("1").await;
    assert_eq!(reply.topic, "phoenix");
    assert_eq!(reply.reference, "1");
    assert_eq!(reply.payload, json!({"status": "ok", "response": {}}));
    // Explicit 1.0.0: V1.
    let mut v1 = Client::v1(server.addr).await;
    assert_eq!(v1.heartbeat("2").await.payload["status"], "ok");
    // 2.0.0: V2 arrays, heartbeat reply with a null join_ref.
    let mut v2 = Client::v2(server.addr).await;
    let reply = v2.heartbeat("7").await;
    assert_eq!(reply.join_ref, serde_json::Value::Null);
    assert_eq!(reply.reference, "7");
    assert_eq!(reply.event, "phx_reply");
    assert_eq!(reply.payload, json!({"status": "ok", "response": {}}));
}

#[tokio::test]
async fn unknown_or_unparsable_vsn_is_403() {
    let server = default_server().await;
    assert_eq!(status_of(server.addr, "vsn=3.0.0").await, 403);
    assert_eq!(status_of(server.addr, "vsn=2.1.0").await, 403);
    assert_eq!(status_of(server.addr, "vsn=banana").await, 403);
    assert_eq!(status_of(server.addr, "vsn=2.0.0").await, 101);
}

#[tokio::test]
async fn connect_hook_sees_params_headers_and_remote_addr_and_can_refuse() {
    let pubsub = PubSub::new("test");
    let seen: Arc<Mutex<Option<ConnectInfo>>> = Arc::default();
    let socket = builder(&pubsub)
        .on_connect({
            let seen = seen.clone();
            move |info: ConnectInfo| {
                let seen = seen.clone();
                async move {
                    let token = info.params.get("token").cloned();
                    *seen.lock().unwrap() = Some(info);
                    match token.as_deref() {
                        Some("good") => Ok(Connected::new().assign(UserName("ann".into()))),
                        _ => Err(ConnectError::new("bad token")),
                    }
                }
            }
        })
        .build();
    let server = serve(pubsub, socket).await;

    assert_eq!(status_of(server.addr, "token=bad&vsn=2.0.0").await, 403);
    assert_eq!(status_of(server.addr, "vsn=2.0.0").await, 403);

    let mut request = request(server.addr, "token=good&user[id]=3&vsn=2.0.0");
    request
        .headers_mut()
        .insert("x-custom", HeaderValue::from_static("yes"));
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let info = seen.lock().unwrap().take().unwrap();
    assert_eq!(info.params["user[id]"], "3");
    assert_eq!(info.params["vsn"], "2.0.0");
    assert_eq!(info.headers["x-custom"], "yes");
    assert!(info.remote_addr.to_string().contains("127.0.0.1"));
    assert_eq!(info.peer_addr, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(info.uri.path(), "/socket/websocket");
    assert_eq!(info.x_headers, [("x-custom".to_owned(), "yes".to_owned())]);
    assert_eq!(info.auth_token, None);
    assert!(
        !format!("{info:?}").contains("good"),
        "the token param is redacted"
    );

    // Socket assigns reach the channels.
    let mut client = Client { ws, v2: true };
    client.join_ok("room:1", "1").await;
    client
        .send(Some("1"), Some("2"), "room:1", "whoami", json!({}))
        .await;
    let reply = client.recv().await;
    assert_eq!(reply.payload["response"]["user"], "ann");
}

#[tokio::test]
async fn auth_token_is_decoded_and_phoenix_subprotocol_answered() {
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub)
        .on_connect(|info: ConnectInfo| async move {
            match info.auth_token.as_deref() {
                Some("s3cr3t token") => Ok(Connected::new()),
                _ => Err(ConnectError::new("no token")),
            }
        })
        .build();
    let server = serve(pubsub, socket).await;

    // phoenix.js: btoa(token) with '=' stripped.
    let mut req = request(server.addr, "vsn=2.0.0");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("phoenix, base64url.bearer.phx.czNjcjN0IHRva2Vu"),
    );
    let (ws, response) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "phoenix");
    let mut client = Client { ws, v2: true };
    assert_eq!(client.heartbeat("1").await.payload["status"], "ok");

    let mut req = request(server.addr, "vsn=2.0.0");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("phoenix, base64url.bearer.phx.d3Jvbmc"),
    );
    match tokio_tungstenite::connect_async(req).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn disconnect_broadcast_on_socket_id_closes_with_1001() {
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub)
        .on_connect(|info: ConnectInfo| async move {
            let user = info.params.get("user").cloned().unwrap_or_default();
            Ok(Connected::new().id(format!("user_socket:{user}")))
        })
        .build();
    let server = serve(pubsub.clone(), socket).await;
    let mut alice = Client::connect(server.addr, "user=alice&vsn=2.0.0").await;
    let mut bob = Client::connect(server.addr, "user=bob&vsn=2.0.0").await;
    alice.join_ok("room:1", "1").await;
    alice
        .send(Some("1"), Some("2"), "room:1", "whoami", json!({}))
        .await;
    assert_eq!(
        alice.recv().await.payload["response"]["socket_id"],
        "user_socket:alice"
    );
    let mut events = pubsub.subscribe(EVENTS);

    // Other events on the id topic are ignored.
    pubsub
        .broadcast(Message::json("user_socket:alice", "other", json!({})))
        .unwrap();
    assert_eq!(alice.heartbeat("3").await.payload["status"], "ok");

    pubsub
        .broadcast(Message::json("user_socket:alice", "disconnect", json!({})))
        .unwrap();
    assert_eq!(close_code(alice.closed().await), 1001);
    // Its channels stopped (terminate with Closed) and bob is unaffected.
    let (event, payload) = next_event(&mut events).await;
    assert_eq!(
        (event.as_str(), payload["reason"].as_str()),
        ("terminate", Some("Closed"))
    );
    assert_eq!(bob.heartbeat("1").await.payload["status"], "ok");
}

/// The handshake's status with this `Origin` header (none when `None`).
async fn status_with_origin(addr: std::net::SocketAddr, origin: Option<&str>) -> u16 {
    let mut req = request(addr, "vsn=2.0.0");
    if let Some(origin) = origin {
        req.headers_mut()
            .insert("origin", HeaderValue::from_str(origin).unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[tokio::test]
async fn origin_is_checked_by_default_against_the_host() {
    let hook_calls = Arc::new(Mutex::new(0));
    let calls = hook_calls.clone();
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub)
        .on_connect(move |_: ConnectInfo| {
            *calls.lock().unwrap() += 1;
            async { Ok(Connected::new()) }
        })
        .build();
    let server = serve(pubsub, socket).await;
    let same = format!("http://{}", server.addr);
    assert_eq!(status_with_origin(server.addr, Some(&same)).await, 101);
    assert_eq!(
        status_with_origin(server.addr, None).await,
        101,
        "not a browser"
    );
    let calls_before = *hook_calls.lock().unwrap();
    for other in [
        "https://evil.example",
        "http://127.0.0.1:1",
        &format!("http://{}.evil.example", server.addr.ip()),
        "null",
    ] {
        assert_eq!(
            status_with_origin(server.addr, Some(other)).await,
            403,
            "{other}"
        );
    }
    assert_eq!(
        *hook_calls.lock().unwrap(),
        calls_before,
        "a refused origin never reaches the connect hook"
    );
}

#[tokio::test]
async fn origin_lists_and_off() {
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub)
        .check_origin(
            presence_poem::CheckOrigin::allow(["https://app.example", "//*.example.org"]).unwrap(),
        )
        .build();
    let server = serve(pubsub, socket).await;
    assert_eq!(
        status_with_origin(server.addr, Some("https://app.example")).await,
        101
    );
    assert_eq!(
        status_with_origin(server.addr, Some("http://a.example.org:8080")).await,
        101
    );
    let same = format!("http://{}", server.addr);
    assert_eq!(
        status_with_origin(server.addr, Some(&same)).await,
        403,
        "the list replaces the default"
    );

    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub)
        .check_origin(presence_poem::CheckOrigin::Off)
        .build();
    let server = serve(pubsub, socket).await;
    assert_eq!(
        status_with_origin(server.addr, Some("https://anywhere.io")).await,
        101
    );
}

#[tokio::test]
async fn an_unparsable_query_string_is_400_not_v1() {
    let server = default_server().await;
    for query in ["vsn=2.0.0&x=%FF%FE", "vsn=%E0%A4%A", "vsn=2.0.0&token=%"] {
        assert_eq!(status_of(server.addr, query).await, 400, "{query}");
    }
    assert_eq!(status_of(server.addr, "vsn=2.0.0&name=a%20b").await, 101);
}

#[tokio::test]
async fn a_signed_user_token_is_verified_by_the_connect_hook() {
    use presence_poem::TokenSigner;
    use std::time::{Duration, SystemTime};
    let secret = b"a test secret that is long enough, 32+ bytes";
    let signer = TokenSigner::new(secret, "user socket").unwrap();
    let verifier = signer.clone();
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub)
        .on_connect(move |info: ConnectInfo| {
            let user = info
                .params
                .get("token")
                .ok_or(ConnectError::new("no token"))
                .and_then(|t| {
                    verifier
                        .verify::<String>(t, Duration::from_secs(60))
                        .map_err(|e| ConnectError::new(e.to_string()))
                });
            async move { Ok(Connected::new().assign(UserName(user?))) }
        })
        .build();
    let server = serve(pubsub, socket).await;
    let query = |token: &str| format!("vsn=2.0.0&token={token}");
    let good = signer.sign("ann");
    let mut client = Client::connect(server.addr, &query(&good)).await;
    client.join_ok("room:1", "1").await;
    client
        .send(Some("1"), Some("2"), "room:1", "whoami", json!({}))
        .await;
    assert_eq!(client.recv().await.payload["response"]["user"], "ann");

    let expired = signer.sign_at("ann", SystemTime::now() - Duration::from_secs(120));
    let other_salt = TokenSigner::new(secret, "session").unwrap().sign("ann");
    let mut tampered = good.clone();
    tampered.replace_range(3..4, if &good[3..4] == "A" { "B" } else { "A" });
    for bad in [
        expired.as_str(),
        other_salt.as_str(),
        tampered.as_str(),
        "nonsense",
    ] {
        assert_eq!(status_of(server.addr, &query(bad)).await, 403, "{bad}");
    }
    assert_eq!(status_of(server.addr, "vsn=2.0.0").await, 403, "no token");
}

#[tokio::test]
async fn a_request_that_is_not_a_websocket_handshake_is_refused_with_the_reason() {
    let server = default_server().await;
    // A plain GET: 400, saying what is missing.
    let (status, body) = http_get(server.addr, "/socket/websocket?vsn=2.0.0").await;
    assert_eq!(status, 400);
    assert!(body.contains("Upgrade: websocket"), "{body}");
    // Another protocol version: 426 with the version this server speaks (RFC 6455, 4.4).
    let mut req = request(server.addr, "vsn=2.0.0");
    req.headers_mut()
        .insert("sec-websocket-version", HeaderValue::from_static("8"));
    match tokio_tungstenite::connect_async(req).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 426);
            assert_eq!(response.headers()["sec-websocket-version"], "13");
            assert_eq!(response.headers()["upgrade"], "websocket");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The subprotocol phoenix.js may ask for is answered.
    let mut req = request(server.addr, "vsn=2.0.0");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("phoenix"),
    );
    let (_, response) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgraded");
    assert_eq!(response.headers()["sec-websocket-protocol"], "phoenix");
}
