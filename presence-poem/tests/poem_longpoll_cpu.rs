//! CPU per message a long-poll session receives, measured as the process's CPU time. The
//! requests are served in process (no client half, no TCP), so the figure is the server's.
//! Its own test binary: the memory test measures RSS growth, which another test's freed
//! memory would blur.

mod common;

use std::time::Duration;

use common::*;
use poem::Route;
use poem::http::Method;
use presence_core::PubSub;
use presence_poem::LongPollConfig;
use serde_json::json;

/// The CPU a session costs for each message it receives: 1,000 joined sessions, 20
/// broadcasts, each followed by a poll of every session that returns it. Prints the process's
/// CPU time per delivered message (the broadcast's fan-out, the session's queue, the poll's
/// request and its JSON response); the figure goes into BENCHMARKS.md.
#[tokio::test]
async fn cpu_per_message_delivered_by_poll() {
    const N: usize = 1000;
    const ROUNDS: usize = 20;
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub)
        .longpoll(LongPollConfig::new().window(Duration::from_secs(60)))
        .build();
    let app = Route::new().nest("/socket", socket.clone());
    let mut uris = Vec::with_capacity(N);
    for _ in 0..N {
        let token = joined_longpoll_session(&app).await;
        uris.push(format!("/socket/longpoll?vsn=2.0.0&token={token}"));
    }
    let Some(start) = cpu_time() else {
        return; // not Linux
    };
    let wall = std::time::Instant::now();
    for round in 0..ROUNDS {
        pubsub
            .broadcast(presence_core::pubsub::Message::json(
                "room:mem",
                "tick",
                json!({ "round": round }),
            ))
            .unwrap();
        for uri in &uris {
            let polled = longpoll_call(&app, Method::GET, uri, String::new()).await;
            assert_eq!(polled["status"], 200, "{polled}");
            let messages = polled["messages"].as_array().unwrap();
            assert_eq!(messages.len(), 1, "{polled}");
            assert!(
                messages[0]
                    .as_str()
                    .unwrap()
                    .contains(&format!("{{\"round\":{round}}}"))
            );
        }
    }
    let cpu = cpu_time().unwrap_or_default().saturating_sub(start);
    let deliveries = (N * ROUNDS) as u32;
    println!(
        "{:.1} µs of CPU per message delivered by a poll ({} deliveries in {:.2} s of CPU, {:.2} s of wall time)",
        cpu.as_secs_f64() * 1e6 / f64::from(deliveries),
        deliveries,
        cpu.as_secs_f64(),
        wall.elapsed().as_secs_f64()
    );
    assert_eq!(socket.open_sockets(), N);
}
