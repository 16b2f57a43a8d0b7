//! Entry points for the fuzz targets in the repository's `fuzz/` directory. Not public API:
//! compiled only with the `fuzzing` feature, and anything here may change in any release.
//!
//! Each harness takes arbitrary bytes, runs one decoder on them the way the crate does with
//! input from the network, and checks what decodes. Bad input must give an error, never a
//! panic, so a harness panics only when an invariant breaks: any panic is a finding. The
//! `*_seeds` functions give a few valid inputs, written by the crate's own encoders, to start
//! the fuzzers' corpora from.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::OwnerId;
use crate::pubsub::frame;
use crate::pubsub::{Message, Payload};
use crate::tracker::clock::ReplicaRef;
use crate::tracker::message::TrackerMsg;
use crate::tracker::shard_core::{Effects, Outgoing, ShardCore, Timing};
use crate::tracker::state::{State, Transfer};

/// Whether two JSON values are equal, numbers within a few ULPs: serde_json's default float
/// parser (without its `float_roundtrip` feature) may read a printed `f64` back one ULP off.
pub fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs()),
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// Whether two payloads are equal ([`same_json`] for JSON ones).
pub fn same_payload(a: &Payload, b: &Payload) -> bool {
    match (a, b) {
        (Payload::Json(x), Payload::Json(y)) => same_json(x, y),
        _ => a == b,
    }
}

// ----- pub/sub frames -----

/// The node-to-node frame decoder (`pubsub::frame::decode`), as `Inbound::deliver` runs it on
/// every frame an adapter receives.
///
/// Checks that a frame which decodes encodes again to a frame that decodes to the same message.
pub fn pubsub_frame(data: &[u8]) {
    let Ok(message) = frame::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let again = frame::decode(frame::encode(&message)).expect("a re-encoded frame decodes");
    assert_eq!(again.topic(), message.topic());
    assert_eq!(again.event(), message.event());
    assert!(
        same_payload(again.payload(), message.payload()),
        "payload changed by a round trip: {:?} then {:?}",
        message.payload(),
        again.payload()
    );
}

/// Valid pub/sub frames: JSON and binary payloads, empty and non-ASCII names.
pub fn pubsub_frame_seeds() -> Vec<Vec<u8>> {
    [
        Message::json(
            "room:lobby",
            "new_msg",
            json!({"body": "hi", "n": [1, 2.5, null]}),
        ),
        Message::json("", "", json!(null)),
        Message::json("phx_presence:tracker_shard0", "phx_tracker", json!("x")),
        Message::binary("room:é", "img", Bytes::from_static(b"\x00\xff\x01")),
        Message::binary("t", "e", Bytes::new()),
    ]
    .iter()
    .map(|m| frame::encode(m).to_vec())
    .collect()
}

// ----- Redis envelopes -----

/// The Redis envelope decoder (`pubsub::redis::decode`), run on every message of the Redis
/// channel, then the pub/sub frame decoder on the frame it carries, as the adapter delivers it.
///
/// Checks that an envelope which decodes encodes back to the same bytes (the layout has no
/// slack), so no two inputs decode alike.
#[cfg(feature = "redis")]
pub fn redis_envelope(data: &[u8]) {
    use crate::pubsub::redis::{self, KIND_BROADCAST, KIND_DIRECT, KIND_HELLO, KIND_NAME_TAKEN};

    let Ok(envelope) = redis::decode(data) else {
        return;
    };
    let instance_bytes;
    let (kind, target, rest) = match envelope.kind {
        redis::Kind::Broadcast => (KIND_BROADCAST, None, envelope.frame),
        redis::Kind::Direct(target) => (KIND_DIRECT, Some(target), envelope.frame),
        redis::Kind::Hello => (KIND_HELLO, None, envelope.frame),
        redis::Kind::NameTaken(instance) => {
            instance_bytes = instance.to_be_bytes();
            (KIND_NAME_TAKEN, None, &instance_bytes[..])
        }
        redis::Kind::Part { .. } => {
            let part = envelope.part().expect("a part");
            let again = redis::encode_part(envelope.instance, envelope.origin, &part);
            assert_eq!(&again[..], data, "a part does not re-encode to itself");
            return;
        }
    };
    let again = redis::encode(kind, envelope.instance, envelope.origin, target, rest);
    assert_eq!(&again[..], data, "an envelope does not re-encode to itself");
    pubsub_frame(envelope.frame);
}

/// The reassembly of envelopes sent in parts (`pubsub::redis::Assembler`), as the subscriber
/// runs it. The input is a sequence of Redis messages, each a 2-byte big-endian length and
/// that many bytes. Each message that decodes as a part goes to one assembler, and each
/// envelope it puts together is run through [`redis_envelope`].
///
/// Checks that an envelope comes out only after the whole run of its parts, in order, from
/// index 0 to the last, with one number and one count; that its bytes are theirs end to end;
/// and that a part that was refused or dropped is never part of one.
#[cfg(feature = "redis")]
pub fn redis_parts(mut data: &[u8]) {
    use std::collections::HashMap;

    use crate::pubsub::redis::{self, Assembled, Assembler};

    let mut assembler = Assembler::default();
    let now = tokio::time::Instant::now();
    // Per sender, the parts accepted since the last envelope put together or dropped:
    // (number, index, count, bytes).
    type Run = Vec<(u64, u32, u32, Vec<u8>)>;
    let mut runs: HashMap<(String, u64), Run> = HashMap::new();
    while data.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([data[0], data[1]])).min(data.len() - 2);
        let (message, rest) = data[2..].split_at(len);
        data = rest;
        let Ok(envelope) = redis::decode(message) else {
            continue;
        };
        let Some(part) = envelope.part() else {
            continue;
        };
        let (seq, index, count) = (part.seq, part.index, part.count);
        let key = (envelope.origin.to_owned(), envelope.instance);
        match assembler.add(envelope.origin, envelope.instance, &part, now) {
            Assembled::Malformed(_) => {}
            Assembled::Lost(_) => {
                // What was begun is dropped; a part numbered 0 begins again.
                let run = runs.entry(key).or_default();
                run.clear();
                if index == 0 {
                    run.push((seq, index, count, envelope.frame.to_vec()));
                }
            }
            Assembled::Incomplete => {
                let run = runs.entry(key).or_default();
                if index == 0 {
                    run.clear();
                }
                run.push((seq, index, count, envelope.frame.to_vec()));
            }
            Assembled::Whole(whole) => {
                let mut run = runs.remove(&key).unwrap_or_default();
                run.push((seq, index, count, envelope.frame.to_vec()));
                assert_eq!(run.len(), count as usize, "an envelope came out early");
                let mut expected = Vec::new();
                for (i, (s, n, c, bytes)) in run.iter().enumerate() {
                    assert_eq!((*s, *n as usize, *c), (seq, i, count), "parts out of order");
                    expected.extend_from_slice(bytes);
                }
                assert_eq!(whole, expected, "an envelope is not its parts end to end");
                redis_envelope(&whole);
            }
        }
    }
}

/// Sequences of parts, as [`redis_parts`] reads them: two envelopes of two senders
/// interleaved, and one with a part lost.
#[cfg(feature = "redis")]
pub fn redis_parts_seeds() -> Vec<Vec<u8>> {
    use crate::pubsub::redis::{self, KIND_BROADCAST, KIND_DIRECT};

    let frames = pubsub_frame_seeds();
    let parts = |instance: u64, origin: &str, seq: u64, envelope: &[u8]| -> Vec<Vec<u8>> {
        let size = envelope.len().div_ceil(3);
        let count = envelope.len().div_ceil(size) as u32;
        (0..count)
            .zip(envelope.chunks(size))
            .map(|(index, bytes)| {
                let part = redis::Part {
                    seq,
                    index,
                    count,
                    bytes,
                };
                redis::encode_part(instance, origin, &part).to_vec()
            })
            .collect()
    };
    let sequence = |messages: &[&Vec<u8>]| -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            out.extend_from_slice(&(m.len() as u16).to_be_bytes());
            out.extend_from_slice(m);
        }
        out
    };
    let a = parts(
        7,
        "node-a",
        1,
        &redis::encode(KIND_BROADCAST, 7, "node-a", None, &frames[0]),
    );
    let b = parts(
        8,
        "node-b",
        4,
        &redis::encode(KIND_DIRECT, 8, "node-b", Some("node-a"), &frames[3]),
    );
    vec![
        sequence(&[&a[0], &b[0], &a[1], &b[1], &a[2], &b[2]]),
        sequence(&[&a[0], &a[2], &b[0], &b[1], &b[2]]),
    ]
}

/// Valid Redis envelopes of every kind, carrying valid pub/sub frames.
#[cfg(feature = "redis")]
pub fn redis_envelope_seeds() -> Vec<Vec<u8>> {
    use crate::pubsub::redis::{self, KIND_BROADCAST, KIND_DIRECT, KIND_HELLO, KIND_NAME_TAKEN};

    let frames = pubsub_frame_seeds();
    vec![
        redis::encode(KIND_BROADCAST, 7, "node-a", None, &frames[0]).to_vec(),
        redis::encode(KIND_DIRECT, 8, "node-a", Some("node-é"), &frames[3]).to_vec(),
        redis::encode(KIND_HELLO, 9, "node-b", None, &[]).to_vec(),
        redis::encode(KIND_NAME_TAKEN, 9, "node-a", None, &42u64.to_be_bytes()).to_vec(),
    ]
}

// ----- tracker replication -----

/// The period the harness ticks at, in milliseconds (against [`Timing::test_harness`]).
const PERIOD: u64 = 100;

/// The tracker's replication decoder (`TrackerMsg::decode`) feeding a live shard.
///
/// The input is a script of lines: a line that decodes as a replication message is handled by
/// the shard (after checking that merging what it carries is idempotent); `+key`, `~key`,
/// `-key` and `!` track, update and untrack a presence of this node, or untrack all of them;
/// any other line is one heartbeat tick. After each step the state's indexes are checked
/// (the property tests' `check_indexes`), listings agree with counts, and every message the
/// shard sends decodes again.
pub fn tracker_replication(data: &[u8]) {
    let me = ReplicaRef {
        name: Arc::from("fuzz"),
        vsn: 1,
    };
    let mut core = ShardCore::new(me, Timing::test_harness());
    let owner = OwnerId::from_parts(1, 1);
    // Own rows from the start, so that transfer requests and extracts meet something.
    for key in ["k0", "k1"] {
        let _ = core.track(owner, "room:a", key, json!({ "v": key }));
    }
    let mut now = 0;
    for line in data.split(|&b| b == b'\n') {
        let key = std::str::from_utf8(line.get(1..).unwrap_or_default()).unwrap_or("k");
        let fx = match line.first() {
            Some(b'+') => core
                .track(owner, "room:a", key, json!({ "v": now }))
                .map_or_else(|_| Effects::default(), |(_, fx)| fx),
            Some(b'~') => core
                .update(owner, "room:a", key, |_| Ok(json!({ "v": now })))
                .map_or_else(|_| Effects::default(), |(_, fx)| fx),
            Some(b'-') => core.untrack(owner, "room:a", key),
            Some(b'!') => core.untrack_all(owner),
            _ => match TrackerMsg::decode(line) {
                Ok(msg) => {
                    check_merge_idempotent(core.state(), &msg);
                    core.handle(now, msg)
                }
                Err(_) => {
                    now += PERIOD;
                    core.tick_all(now)
                }
            },
        };
        check_effects(&fx);
        core.state().check_indexes();
    }
    check_state(core.state());
}

/// Merging the rows a message carries twice changes nothing the second time.
fn check_merge_idempotent(state: &State, msg: &TrackerMsg) {
    let mut s = state.clone();
    let merge = |s: &mut State| match msg {
        TrackerMsg::Heartbeat {
            delta: Some(delta), ..
        }
        | TrackerMsg::TransferAck {
            transfer: Transfer::Delta(delta),
            ..
        } => Some(s.merge_delta(delta)),
        TrackerMsg::TransferAck {
            transfer: Transfer::State(extract),
            ..
        } => Some(s.merge_state(extract)),
        _ => None,
    };
    if merge(&mut s).is_none() {
        return;
    }
    s.check_indexes();
    let once = s.canonical();
    let twice = merge(&mut s).unwrap_or_default();
    assert!(twice.is_empty(), "a second merge changed rows: {twice:?}");
    assert_eq!(s.canonical(), once, "a second merge changed the state");
}

/// The state's indexes agree, and listings with counts.
fn check_state(state: &State) {
    state.check_indexes();
    for topic in state.topics() {
        let listed = state.list(&topic).len();
        assert_eq!(listed, state.topic_len(&topic), "topic {topic:?}");
        assert_eq!(listed, state.list_entries(&topic).len(), "topic {topic:?}");
    }
    let _ = state.visible_rows();
}

fn message_of(out: Outgoing) -> TrackerMsg {
    match out {
        Outgoing::Broadcast(msg) | Outgoing::Direct(_, msg) => msg,
    }
}

/// Every message a shard sends decodes again (peers must be able to read it).
fn check_effects(fx: &Effects) {
    for out in &fx.out {
        let (Outgoing::Broadcast(msg) | Outgoing::Direct(_, msg)) = out;
        let encoded = msg.encode();
        assert!(
            TrackerMsg::decode(&encoded).is_ok(),
            "a sent message does not decode: {}",
            String::from_utf8_lossy(&encoded)
        );
    }
}

/// Replication messages of every kind, from two shards talking: heartbeats with and without
/// deltas (joins, updates, leaves), transfer requests, both kinds of transfer answers and a
/// graceful permdown. Each message alone, then one script with all of them and some local
/// operations and ticks.
pub fn tracker_replication_seeds() -> Vec<Vec<u8>> {
    let replica = |name: &str| ReplicaRef {
        name: Arc::from(name),
        vsn: 1,
    };
    let mut a = ShardCore::new(replica("a"), Timing::test_harness());
    let mut b = ShardCore::new(replica("b"), Timing::test_harness());
    let owner = OwnerId::from_parts(2, 1);
    let mut sent = Vec::new();
    let mut inflight: Vec<(bool, TrackerMsg)> = Vec::new();
    let mut now = 0;
    for step in 0..16u64 {
        match step {
            0 => {
                let _ = a.track(owner, "room:a", "k0", json!({"name": "alice"}));
                let _ = a.track(owner, "room:b", "k1", json!({}));
            }
            4 => {
                let _ = b.track(owner, "room:a", "k2", json!({"n": 1.5}));
            }
            8 => {
                let _ = a.update(owner, "room:a", "k0", |_| Ok(json!({"away": true})));
            }
            10 => {
                let _ = a.untrack(owner, "room:b", "k1");
            }
            _ => {}
        }
        now += PERIOD;
        for (to_b, fx) in [(true, a.tick_all(now)), (false, b.tick_all(now))] {
            inflight.extend(fx.out.into_iter().map(|o| (to_b, message_of(o))));
        }
        while let Some((to_b, msg)) = inflight.pop() {
            sent.push(msg.encode().to_vec());
            if step < 3 || (step == 8 && to_b) {
                // Lost: b falls behind, and later asks a for a transfer (of the whole state
                // while a knows no peer, then of a delta generation).
                continue;
            }
            let target = if to_b { &mut b } else { &mut a };
            let fx = target.handle(now, msg);
            inflight.extend(fx.out.into_iter().map(|o| (!to_b, message_of(o))));
        }
    }
    sent.push(message_of(a.graceful_permdown()).encode().to_vec());
    sent.sort();
    sent.dedup();
    let mut script = b"+k9\n~k0\n-k1\n\n".to_vec();
    for msg in &sent {
        script.extend_from_slice(msg);
        script.extend_from_slice(b"\ntick\n");
    }
    script.extend_from_slice(b"!\n");
    sent.push(script);
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harnesses_accept_their_seeds() {
        for seed in pubsub_frame_seeds() {
            assert!(frame::decode(Bytes::from(seed.clone())).is_ok());
            pubsub_frame(&seed);
        }
        #[cfg(feature = "redis")]
        for seed in redis_envelope_seeds() {
            assert!(crate::pubsub::redis::decode(&seed).is_ok());
            redis_envelope(&seed);
        }
        let seeds = tracker_replication_seeds();
        let text = String::from_utf8_lossy(&seeds[seeds.len() - 1]).into_owned();
        for kind in [
            "heartbeat",
            "transfer_req",
            "transfer_ack",
            "\"Delta\"",
            "\"State\"",
            "graceful_permdown",
        ] {
            assert!(text.contains(kind), "no {kind} in {text}");
        }
        for seed in &seeds[..seeds.len() - 1] {
            assert!(TrackerMsg::decode(seed).is_ok());
        }
        for seed in &seeds {
            tracker_replication(seed);
        }
    }

    #[test]
    fn harnesses_reject_garbage_quietly() {
        for data in [
            &b""[..],
            b"\x01",
            b"\n\n\n",
            b"{\"heartbeat\":{}}",
            b"+\n-\n~\n!",
        ] {
            pubsub_frame(data);
            #[cfg(feature = "redis")]
            redis_envelope(data);
            tracker_replication(data);
        }
    }
}
