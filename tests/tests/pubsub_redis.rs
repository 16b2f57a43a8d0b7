//! `presence_core::pubsub` over a real Redis (the `redis` feature): routing, the envelope,
//! malformed traffic and node-name clashes.
//!
//! These tests need a Redis server: set `PRESENCE_REDIS_URL` (e.g. `redis://127.0.0.1:6379`).
//! Without it each prints "skipped: PRESENCE_REDIS_URL not set" and passes. Every test uses its
//! own pub/sub name (one Redis channel) and random node names, so tests running in parallel, or
//! other runs on the same server, do not hear each other. Real time is used throughout: every
//! wait polls for a condition and fails after 10 s; absence is proved with a sentinel that Redis
//! orders after the message that must not arrive.

mod redis_support;

mod pubsub_support;

use pubsub_support::{msg, num};

use redis_support::{DEADLINE, eventually, redis_url, unique};

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use presence_core::pubsub::{
    Message, Payload, PubSub, RecvError, RedisAdapter, RedisAdapterError, RedisOptions,
    Subscription,
};
use serde_json::json;

async fn node(url: &str, pubsub_name: &str, name: &str) -> (PubSub, RedisAdapter) {
    let adapter = RedisAdapter::connect(url, RedisOptions::new(name).pubsub_name(pubsub_name))
        .await
        .expect("connect to redis");
    let pubsub = PubSub::builder(name).adapter(adapter.clone()).build();
    (pubsub, adapter)
}

/// Three nodes on a fresh channel, named `<prefix>-a`, `-b`, `-c`.
async fn cluster(url: &str, test: &str) -> (String, Vec<(PubSub, RedisAdapter)>) {
    let channel = unique(test);
    let mut nodes = Vec::new();
    for n in ["a", "b", "c"] {
        nodes.push(node(url, &channel, &format!("{channel}-{n}")).await);
    }
    (channel, nodes)
}

/// A plain Redis client subscribed to `channel`: it sees the envelopes as published.
async fn raw_subscriber(url: &str, channel: &str) -> redis::aio::PubSub {
    let client = redis::Client::open(url).unwrap();
    let mut raw = client.get_async_pubsub().await.unwrap();
    raw.subscribe(channel).await.unwrap();
    raw
}

async fn recv(sub: &mut Subscription) -> Arc<Message> {
    tokio::time::timeout(DEADLINE, sub.recv())
        .await
        .unwrap_or_else(|_| panic!("nothing arrived on {} within {DEADLINE:?}", sub.topic()))
        .expect("subscription open")
}

async fn recv_num(sub: &mut Subscription) -> u64 {
    num(&*recv(sub).await)
}

fn assert_empty(sub: &mut Subscription) {
    match sub.try_recv() {
        Err(RecvError::Empty) => {}
        other => panic!("expected nothing queued, got {other:?}"),
    }
}

/// A sentinel number, far from the test's own.
const SENTINEL: u64 = 999;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_other_node_once_and_not_self_twice() {
    let Some(url) = redis_url() else { return };
    let (_, nodes) = cluster(&url, "bcast").await;
    let mut subs: Vec<Subscription> = nodes.iter().map(|(p, _)| p.subscribe("room")).collect();

    nodes[0].0.broadcast(msg("room", 1)).unwrap();
    for sub in &mut subs {
        assert_eq!(recv_num(sub).await, 1);
    }
    // b heard 1, so Redis handled its PUBLISH; b's sentinel is ordered after any echo of it.
    nodes[1].0.broadcast(msg("room", SENTINEL)).unwrap();
    for sub in &mut subs {
        assert_eq!(recv_num(sub).await, SENTINEL, "a duplicate arrived first");
        assert_empty(sub);
    }
    // One PUBLISH per broadcast (and the hello), whatever the number of nodes.
    // `published` counts PUBLISH replies, which may come back after the subscribers saw the
    // message: wait for both counts, then check that neither went past two.
    eventually("a published twice", DEADLINE, || {
        nodes[0].1.stats().published == 2
    })
    .await;
    eventually("b published twice", DEADLINE, || {
        nodes[1].1.stats().published == 2
    })
    .await;
    assert_eq!(nodes[0].1.stats().published, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_from_skips_the_local_sender_only() {
    let Some(url) = redis_url() else { return };
    let (_, nodes) = cluster(&url, "bfrom").await;
    let mut me = nodes[0].0.subscribe("room");
    let mut local = nodes[0].0.subscribe("room");
    let mut remote = nodes[1].0.subscribe("room");

    nodes[0].0.broadcast_from(me.id(), msg("room", 1)).unwrap();
    assert_eq!(recv_num(&mut local).await, 1);
    assert_eq!(recv_num(&mut remote).await, 1);
    nodes[1].0.broadcast(msg("room", SENTINEL)).unwrap();
    assert_eq!(recv_num(&mut me).await, SENTINEL);
    assert_eq!(recv_num(&mut local).await, SENTINEL);
    assert_empty(&mut me);
    assert_empty(&mut local);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_broadcast_reaches_the_named_node_only() {
    let Some(url) = redis_url() else { return };
    let (_, nodes) = cluster(&url, "direct").await;
    let mut subs: Vec<Subscription> = nodes.iter().map(|(p, _)| p.subscribe("room")).collect();

    let b = nodes[1].0.node_name().to_owned();
    nodes[0].0.direct_broadcast(&b, msg("room", 7)).unwrap();
    assert_eq!(recv_num(&mut subs[1]).await, 7);
    // a's publisher is FIFO: the sentinel follows the direct message everywhere.
    nodes[0].0.broadcast(msg("room", SENTINEL)).unwrap();
    assert_eq!(
        recv_num(&mut subs[0]).await,
        SENTINEL,
        "direct is not local"
    );
    assert_eq!(recv_num(&mut subs[1]).await, SENTINEL);
    assert_eq!(recv_num(&mut subs[2]).await, SENTINEL, "c got b's message");

    // Direct to this node is a local delivery.
    let a = nodes[0].0.node_name().to_owned();
    nodes[0].0.direct_broadcast(&a, msg("room", 8)).unwrap();
    assert_eq!(recv_num(&mut subs[0]).await, 8);
    for sub in &mut subs {
        assert_empty(sub);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_broadcast_stays_on_the_node() {
    let Some(url) = redis_url() else { return };
    let (_, nodes) = cluster(&url, "local").await;
    let mut a = nodes[0].0.subscribe("room");
    let mut b = nodes[1].0.subscribe("room");
    eventually("the hello is published", DEADLINE, || {
        nodes[0].1.stats().published == 1
    })
    .await;
    let published = nodes[0].1.stats().published;

    nodes[0].0.local_broadcast(msg("room", 1));
    assert_eq!(recv_num(&mut a).await, 1);
    nodes[0].0.broadcast(msg("room", SENTINEL)).unwrap();
    assert_eq!(recv_num(&mut b).await, SENTINEL);
    assert_eq!(recv_num(&mut a).await, SENTINEL);
    assert_empty(&mut b);
    eventually("one more publish", DEADLINE, || {
        nodes[0].1.stats().published == published + 1
    })
    .await;
}

/// A raw subscriber on the channel sees exactly one envelope per broadcast, carrying the
/// frame the pub/sub encoded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publish_per_broadcast_with_the_documented_envelope() {
    let Some(url) = redis_url() else { return };
    let (_, nodes) = cluster(&url, "once").await;
    let mut raw = raw_subscriber(&url, nodes[0].1.channel()).await;
    let mut b = nodes[1].0.subscribe("room");

    nodes[0]
        .0
        .broadcast(Message::json("room", "hello", json!({"n": 1})))
        .unwrap();
    let c = nodes[2].0.node_name().to_owned();
    nodes[0].0.direct_broadcast(&c, msg("room", 2)).unwrap();
    nodes[0].0.broadcast(msg("room", SENTINEL)).unwrap();
    assert_eq!(recv(&mut b).await.event(), "hello");
    assert_eq!(recv_num(&mut b).await, SENTINEL);

    let mut stream = raw.on_message();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let m = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("raw subscriber got the envelopes")
            .unwrap();
        seen.push(m.get_payload_bytes().to_vec());
    }
    let a = nodes[0].0.node_name().as_bytes();
    for (env, kind) in seen.iter().zip([0u8, 1, 0]) {
        assert_eq!(env[0], 1, "version");
        assert_eq!(env[1], kind, "kind");
        let origin_len = u16::from_be_bytes([env[10], env[11]]) as usize;
        assert_eq!(&env[12..12 + origin_len], a);
    }
    let hello = &seen[0];
    assert!(
        hello.windows(5).any(|w| w == b"hello"),
        "the frame follows the header"
    );
}

/// A message longer than 32 KiB crosses Redis as parts of at most 32 KiB, so that no Redis
/// connection's buffers grow past that, and arrives whole: broadcast and direct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_messages_cross_redis_in_parts_and_arrive_whole() {
    const PART: usize = 32 * 1024;
    let Some(url) = redis_url() else { return };
    let (_, nodes) = cluster(&url, "parts").await;
    let mut raw = raw_subscriber(&url, nodes[0].1.channel()).await;
    let mut b = nodes[1].0.subscribe("room");
    let mut c = nodes[2].0.subscribe("room");

    let body: String = (0..200_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let long = |event: &str| Message::json("room", event, json!({ "body": body }));
    nodes[0].0.broadcast(long("long")).unwrap();
    let c_name = nodes[2].0.node_name().to_owned();
    nodes[0]
        .0
        .direct_broadcast(&c_name, long("direct"))
        .unwrap();
    nodes[0].0.broadcast(msg("room", SENTINEL)).unwrap();

    let whole = |m: &Message, event: &str| {
        assert_eq!(m.event(), event);
        match m.payload() {
            Payload::Json(v) => assert!(v["body"] == body.as_str(), "the body arrived whole"),
            other => panic!("unexpected payload {other:?}"),
        }
    };
    whole(&*recv(&mut b).await, "long");
    assert_eq!(recv_num(&mut b).await, SENTINEL);
    whole(&*recv(&mut c).await, "long");
    whole(&*recv(&mut c).await, "direct");
    assert_eq!(recv_num(&mut c).await, SENTINEL);

    // On the channel: two runs of parts, numbered 0.., then the sentinel in one message.
    let mut stream = raw.on_message();
    let mut kinds = Vec::new();
    loop {
        let m = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("raw subscriber got the messages")
            .unwrap();
        let bytes = m.get_payload_bytes();
        assert!(
            bytes.len() <= PART + 64,
            "a message of {} bytes",
            bytes.len()
        );
        kinds.push(bytes[1]);
        if bytes[1] != 4 {
            break;
        }
    }
    let parts = kinds.iter().filter(|&&k| k == 4).count();
    assert!(parts >= 2 * 200_000 / PART, "{kinds:?}");
    assert_eq!(kinds.last(), Some(&0), "{kinds:?}");
    for (_, adapter) in &nodes {
        let stats = adapter.stats();
        assert!(stats.connected && stats.dropped == 0, "{stats:?}");
    }
    // `published` counts envelopes, not their parts, once Redis acknowledged them (which may
    // come after the subscribers saw them): the hello, two long messages and the sentinel.
    eventually("a published four envelopes", DEADLINE, || {
        nodes[0].1.stats().published >= 4
    })
    .await;
    assert_eq!(nodes[0].1.stats().published, 4);
}

/// Builds an envelope by hand, as documented in `presence_core::pubsub::RedisAdapter`.
fn envelope(kind: u8, instance: u64, origin: &str, target: Option<&str>, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![1, kind];
    v.extend_from_slice(&instance.to_be_bytes());
    v.extend_from_slice(&(origin.len() as u16).to_be_bytes());
    v.extend_from_slice(origin.as_bytes());
    if let Some(t) = target {
        v.extend_from_slice(&(t.len() as u16).to_be_bytes());
        v.extend_from_slice(t.as_bytes());
    }
    v.extend_from_slice(rest);
    v
}

/// The rest of a part envelope (kind 4): the sender's number, index, count, then the bytes.
fn part(seq: u64, index: u32, count: u32, bytes: &[u8]) -> Vec<u8> {
    let mut v = seq.to_be_bytes().to_vec();
    v.extend_from_slice(&index.to_be_bytes());
    v.extend_from_slice(&count.to_be_bytes());
    v.extend_from_slice(bytes);
    v
}

/// A pub/sub frame (its documented layout) for a JSON message.
fn frame(topic: &str, event: &str, json: &str) -> Vec<u8> {
    let mut v = vec![1];
    v.extend_from_slice(&(topic.len() as u32).to_be_bytes());
    v.extend_from_slice(topic.as_bytes());
    v.extend_from_slice(&(event.len() as u32).to_be_bytes());
    v.extend_from_slice(event.as_bytes());
    v.push(0);
    v.extend_from_slice(json.as_bytes());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_on_the_channel_are_ignored() {
    let Some(url) = redis_url() else { return };
    let (_, nodes) = cluster(&url, "garbage").await;
    let channel = nodes[0].1.channel().to_owned();
    let b_name = nodes[1].0.node_name().to_owned();
    let mut b = nodes[1].0.subscribe("room");
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();

    let good = frame("room", "ev", "5");
    let garbage: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"hello".to_vec(),
        vec![1],
        vec![2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], // unknown version
        envelope(9, 1, "mallory", None, &good),   // unknown kind
        envelope(0, 1, "mallory", None, b"\x01\x00\x00"), // bad frame
        envelope(0, 1, "mallory", None, &frame("room", "ev", "{")), // bad JSON
        envelope(1, 1, "mallory", None, &good)[..14].to_vec(), // truncated target
        envelope(3, 1, &b_name, None, b"\x00"),   // bad name-taken answer
        envelope(0, 1, &b_name, None, &good),     // "from b": not for b
        envelope(1, 1, "mallory", Some("nobody"), &good), // direct to someone else
        vec![0xff; 4096],
        envelope(4, 1, "mallory", None, &[0; 15]), // truncated part header
        envelope(4, 1, "mallory", None, &part(1, 1, 2, &good)), // a part without its first
        envelope(4, 1, "mallory", None, &part(1, 0, 1, &good)), // one part of one
        // Two parts making up a part: dropped.
        envelope(4, 2, "mallory", None, &part(2, 0, 2, b"\x01\x04")),
        envelope(4, 2, "mallory", None, &part(2, 1, 2, &[0; 40])),
    ];
    // After the garbage, a well-formed envelope from a raw client is delivered like any
    // node's, in one message or in parts.
    let ok = envelope(0, 1, "mallory", None, &frame("room", "ev", "6"));
    let ok7 = envelope(0, 1, "mallory", None, &frame("room", "ev", "7"));
    let (head, tail) = ok7.split_at(5);
    let well_formed = [
        ok,
        envelope(4, 1, "mallory", None, &part(3, 0, 2, head)),
        envelope(4, 1, "mallory", None, &part(3, 1, 2, tail)),
    ];
    for m in garbage.into_iter().chain(well_formed) {
        let () = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(&m[..])
            .query_async::<i64>(&mut conn)
            .await
            .map(drop)
            .unwrap();
    }
    nodes[0].0.broadcast(msg("room", SENTINEL)).unwrap();
    assert_eq!(recv_num(&mut b).await, 6);
    assert_eq!(recv_num(&mut b).await, 7);
    assert_eq!(recv_num(&mut b).await, SENTINEL);
    assert_empty(&mut b);
    for (_, adapter) in &nodes {
        let stats = adapter.stats();
        assert!(stats.connected && stats.outages == 0, "{stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_name_in_use_is_refused() {
    let Some(url) = redis_url() else { return };
    let channel = unique("clash");
    let name = unique("node");
    let (_first, _adapter) = node(&url, &channel, &name).await;

    let second =
        RedisAdapter::connect(&url, RedisOptions::new(name.as_str()).pubsub_name(&channel)).await;
    match second {
        Err(RedisAdapterError::NodeNameTaken { node, channel: c }) => {
            assert_eq!(node, name);
            assert_eq!(c, format!("presence:{channel}"));
        }
        other => panic!("expected NodeNameTaken, got {other:?}"),
    }
    // Names are per channel: the same name on another pub/sub is fine.
    let elsewhere = RedisAdapter::connect(
        &url,
        RedisOptions::new(name.as_str()).pubsub_name(unique("clash-other")),
    )
    .await;
    assert!(elsewhere.is_ok(), "{elsewhere:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_starting_together_with_one_name_do_not_both_start() {
    let Some(url) = redis_url() else { return };
    let channel = unique("clash2");
    let name = unique("node");
    let options = RedisOptions::new(name.as_str()).pubsub_name(&channel);
    let (x, y) = tokio::join!(
        RedisAdapter::connect(&url, options.clone()),
        RedisAdapter::connect(&url, options),
    );
    assert!(
        x.is_err() || y.is_err(),
        "both started with one name: {x:?} {y:?}"
    );
    for r in [x, y] {
        if let Err(e) = r {
            assert!(matches!(e, RedisAdapterError::NodeNameTaken { .. }), "{e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_left_frees_its_name() {
    let Some(url) = redis_url() else { return };
    let channel = unique("rejoin");
    let name = unique("node");
    let (first, adapter) = node(&url, &channel, &name).await;
    drop((first, adapter));
    let again =
        RedisAdapter::connect(&url, RedisOptions::new(name.as_str()).pubsub_name(&channel)).await;
    assert!(again.is_ok(), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_fails_fast_with_a_clear_error() {
    // Needs no server: nothing listens on port 1.
    let started = std::time::Instant::now();
    let err = RedisAdapter::connect("redis://127.0.0.1:1", RedisOptions::new("a"))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            err,
            RedisAdapterError::Connect { .. } | RedisAdapterError::Timeout { .. }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("redis://127.0.0.1:1"), "{err}");

    let err = RedisAdapter::connect("http://nope", RedisOptions::new("a"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RedisAdapterError::InvalidUrl { .. }),
        "{err:?}"
    );

    let err = RedisAdapter::connect("redis://user:hunter2@127.0.0.1:1", RedisOptions::new("a"))
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");

    let err = RedisAdapter::connect("redis://127.0.0.1:1", RedisOptions::new(""))
        .await
        .unwrap_err();
    assert!(matches!(err, RedisAdapterError::EmptyNodeName), "{err:?}");
}
