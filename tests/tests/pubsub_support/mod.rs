//! Messages the pub/sub tests send and read back: numbered JSON payloads.
#![allow(dead_code)] // each test file uses its own subset

use presence_core::pubsub::{Message, Payload, RecvError, Subscription};
use serde_json::json;

/// Message number `n` on `topic`.
pub(crate) fn msg(topic: &str, n: u64) -> Message {
    Message::json(topic, "ev", json!(n))
}

/// The number a [`msg`] carries.
pub(crate) fn num(m: &Message) -> u64 {
    match m.payload() {
        Payload::Json(v) => v.as_u64().expect("numeric payload"),
        other => panic!("unexpected payload {other:?}"),
    }
}

/// Everything queued right now, as payload numbers (panics on `Lagged`/`Closed`).
pub(crate) fn drain(sub: &mut Subscription) -> Vec<u64> {
    let mut out = Vec::new();
    loop {
        match sub.try_recv() {
            Ok(m) => out.push(num(&m)),
            Err(RecvError::Empty) => return out,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
}
