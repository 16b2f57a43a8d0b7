//! Entry points for the fuzz targets in the repository's `fuzz/` directory. Not public API:
//! compiled only with the `fuzzing` feature, and anything here may change in any release.
//!
//! Each harness takes arbitrary bytes, decodes them as a client's websocket frame the way a
//! socket does, and checks what decodes. Bad frames must give an error, never a panic, so a
//! harness panics only when an invariant breaks: any panic is a finding. The `*_seeds`
//! functions give a few valid frames (the unit tests' fixtures) to start the corpora from.

use presence_core::__fuzz::same_payload;
use presence_core::pubsub::Payload;

use crate::protocol::{CodecError, Inbound, Raw, Vsn};

/// Whether two decoded messages are equal ([`same_payload`] for their payloads).
fn same_inbound(a: &Inbound, b: &Inbound) -> bool {
    a.join_ref == b.join_ref
        && a.reference == b.reference
        && a.topic == b.topic
        && a.event == b.event
        && same_payload(&a.payload, &b.payload)
}

/// Decodes a text frame; what decodes is encoded as the server would send it with the same
/// fields, and must decode to the same message (but for `join_ref`, which V1 never sends).
fn json_round_trip(vsn: Vsn, data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let msg = match vsn.decode(Raw::Text(text)) {
        Ok(msg) => msg,
        Err(error) => {
            let _ = error.to_string();
            return;
        }
    };
    let out = vsn
        .message(
            msg.join_ref.as_deref(),
            msg.reference.as_deref(),
            &msg.topic,
            &msg.event,
            &msg.payload,
        )
        .expect("a decoded JSON message encodes");
    let out = out.into_text().expect("a JSON message encodes as text");
    let again = vsn
        .decode(Raw::Text(&out))
        .expect("an encoded message decodes");
    let expected = Inbound {
        join_ref: if vsn == Vsn::V1 { None } else { msg.join_ref },
        ..msg
    };
    assert!(
        same_inbound(&again, &expected),
        "round trip changed the message: {expected:?} then {again:?}"
    );
}

/// The V1 JSON decoder (`{"topic", "event", "payload", "ref", "join_ref"}` objects), and the
/// `vsn` negotiation on the same text. V1 refuses every binary frame.
pub fn v1_json(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Vsn::negotiate(Some(text));
    }
    assert!(matches!(
        Vsn::V1.decode(Raw::Binary(data)),
        Err(CodecError::BinaryUnsupported)
    ));
    json_round_trip(Vsn::V1, data);
}

/// The V2 JSON decoder (`[join_ref, ref, topic, event, payload]` arrays).
pub fn v2_json(data: &[u8]) {
    json_round_trip(Vsn::V2, data);
}

/// The V2 binary frame decoder (kind 0 pushes from clients).
///
/// Checks that a frame which decodes is exactly the header, fields and payload it decoded to
/// (nothing read twice or skipped), and that the server can send those fields back as a
/// binary push.
pub fn v2_binary(data: &[u8]) {
    let msg = match Vsn::V2.decode(Raw::Binary(data)) {
        Ok(msg) => msg,
        Err(error) => {
            let _ = error.to_string();
            return;
        }
    };
    let join_ref = msg
        .join_ref
        .as_deref()
        .expect("binary pushes keep join_ref");
    let reference = msg.reference.as_deref().unwrap_or("");
    assert_ne!(msg.reference.as_deref(), Some(""), "an empty ref is none");
    let Payload::Binary(payload) = &msg.payload else {
        panic!("a binary push has a binary payload");
    };
    let fields = [join_ref, reference, &msg.topic, &msg.event];
    let mut rebuilt = vec![0];
    rebuilt.extend(
        fields
            .iter()
            .map(|f| u8::try_from(f.len()).unwrap_or(u8::MAX)),
    );
    for field in fields {
        rebuilt.extend_from_slice(field.as_bytes());
    }
    rebuilt.extend_from_slice(payload);
    assert_eq!(rebuilt, data, "the decoded fields do not make up the frame");
    Vsn::V2
        .message(Some(join_ref), None, &msg.topic, &msg.event, &msg.payload)
        .expect("fields read from a binary frame fit in one");
}

/// V1 text frames: a join, a heartbeat, a push with nested JSON.
pub fn v1_json_seeds() -> Vec<Vec<u8>> {
    [
        r#"{"topic":"room:lobby","event":"phx_join","payload":{"a":1},"ref":"3","join_ref":"3"}"#,
        r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}"#,
        r#"{"topic":"room:1","event":"new_msg","payload":{"body":"hé","n":[1,-2.5e3,null,true]},"ref":null}"#,
        "2.0.0",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// V2 text frames: a join, a heartbeat, a push, a leave.
pub fn v2_json_seeds() -> Vec<Vec<u8>> {
    [
        r#"["3","3","room:lobby","phx_join",{}]"#,
        r#"[null,"7","phoenix","heartbeat",{}]"#,
        r#"["3",null,"room:1","new_msg",{"body":"hé","n":[1,-2.5e3,null,true]}]"#,
        r#"["3","4","room:1","phx_leave",{},"extra"]"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// V2 binary pushes: with refs and a payload, with an empty join_ref and ref, with an empty
/// payload.
pub fn v2_binary_seeds() -> Vec<Vec<u8>> {
    let frame = |jr: &str, r: &str, t: &str, e: &str, data: &[u8]| {
        let mut f = vec![0];
        f.extend([jr, r, t, e].map(|s| u8::try_from(s.len()).unwrap_or(u8::MAX)));
        for s in [jr, r, t, e] {
            f.extend_from_slice(s.as_bytes());
        }
        f.extend_from_slice(data);
        f
    };
    vec![
        frame("1", "2", "room", "img", &[0xde, 0xad]),
        frame("", "", "room:é", "upload", b"\x00\x01\x02\x03"),
        frame("12", "13", "t", "e", b""),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harnesses_accept_their_seeds() {
        let text = |s: &[u8]| std::str::from_utf8(s).unwrap().to_owned();
        for seed in v1_json_seeds().iter().filter(|s| s[0] == b'{') {
            assert!(Vsn::V1.decode(Raw::Text(&text(seed))).is_ok());
            v1_json(seed);
        }
        for seed in v2_json_seeds() {
            assert!(Vsn::V2.decode(Raw::Text(&text(&seed))).is_ok());
            v2_json(&seed);
        }
        for seed in v2_binary_seeds() {
            assert!(Vsn::V2.decode(Raw::Binary(&seed)).is_ok());
            v2_binary(&seed);
        }
    }

    #[test]
    fn harnesses_reject_garbage_quietly() {
        for data in [
            &b""[..],
            b"\x00",
            b"[]",
            b"{}",
            b"\x00\x01\x01\x01\x01ab\xff",
            b"\xff",
        ] {
            v1_json(data);
            v2_json(data);
            v2_binary(data);
        }
    }
}
