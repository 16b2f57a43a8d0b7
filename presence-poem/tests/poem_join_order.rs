//! The join reply reaches the client before any broadcast on the joined topic (spec 3.3).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use presence_core::PubSub;
use presence_core::pubsub::Message;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn join_reply_comes_before_any_broadcast_on_the_topic() {
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub).outbound_capacity(1 << 16).build();
    let server = serve(pubsub.clone(), socket).await;

    // A concurrent broadcaster on the topic being joined, about every 20 µs.
    let current = Arc::new(Mutex::new(String::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let broadcaster = {
        let (current, stop, pubsub) = (current.clone(), stop.clone(), pubsub.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let topic = current.lock().unwrap().clone();
                if !topic.is_empty() {
                    let _ = pubsub.broadcast(Message::json(topic, "tick", json!({})));
                }
                let until = std::time::Instant::now() + Duration::from_micros(20);
                while std::time::Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
        })
    };

    // Another socket keeps the topics' hubs running, as on a busy topic.
    let mut keeper = Client::v2(server.addr).await;
    for i in 0..20 {
        keeper
            .join_ok(&format!("room:race{i}"), &i.to_string())
            .await;
    }
    let keeper = tokio::spawn(async move { while keeper.ws.next().await.is_some() {} });

    let mut c = Client::v2(server.addr).await;
    // A large join response makes the reply slow to encode: a broadcast delivered once the
    // socket is registered with the topic's hub but before the reply is queued would show.
    let big = "x".repeat(200_000);
    for i in 0..20 {
        let topic = format!("room:race{i}");
        *current.lock().unwrap() = topic.clone();
        let r = i.to_string();
        c.send(
            Some(&r),
            Some(&r),
            &topic,
            "phx_join",
            json!({"reply": {"big": big}}),
        )
        .await;
        loop {
            let frame = c.recv().await;
            if frame.topic == topic {
                assert_eq!(
                    frame.event, "phx_reply",
                    "round {i}: a broadcast came before the join reply"
                );
                assert_eq!(frame.payload["status"], "ok");
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    broadcaster.join().unwrap();
    keeper.abort();
}
