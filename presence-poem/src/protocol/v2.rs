//! The V2 serializer: `[join_ref, ref, topic, event, payload]` text frames and binary frames.
//!
//! Binary layouts (every length is one byte):
//!
//! - kind 0, push, client to server: `0, jr, r, t, e, join_ref, ref, topic, event, data`;
//! - kind 0, push, server to client: `0, jr, t, e, join_ref, topic, event, data` (no ref);
//! - kind 1, reply: `1, jr, r, t, s, join_ref, ref, topic, status, data`;
//! - kind 2, broadcast: `2, t, e, topic, event, data`.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use presence_core::pubsub::Payload;
use serde_json::Value;

use super::{CodecError, Inbound, Out, ReplyPayload, event, json_of};

const PUSH: u8 = 0;
const REPLY: u8 = 1;
const BROADCAST: u8 = 2;

pub(super) fn decode_text(text: &str) -> Result<Inbound, CodecError> {
    let value: Value = serde_json::from_str(text).map_err(|e| CodecError::Json(e.to_string()))?;
    let Value::Array(items) = value else {
        return Err(CodecError::Shape("expected a JSON array"));
    };
    if items.len() < 5 {
        return Err(CodecError::Shape(
            "expected [join_ref, ref, topic, event, payload]",
        ));
    }
    let mut items = items.into_iter();
    let mut next = || items.next().unwrap_or(Value::Null);
    let join_ref = opt_string(next(), "join_ref must be a string or null")?;
    let reference = opt_string(next(), "ref must be a string or null")?;
    let Value::String(topic) = next() else {
        return Err(CodecError::Shape("topic must be a string"));
    };
    let Value::String(event) = next() else {
        return Err(CodecError::Shape("event must be a string"));
    };
    Ok(Inbound {
        join_ref,
        reference,
        topic,
        event,
        payload: Payload::Json(next()),
    })
}

fn opt_string(value: Value, what: &'static str) -> Result<Option<String>, CodecError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        _ => Err(CodecError::Shape(what)),
    }
}

pub(super) fn decode_binary(bytes: &[u8]) -> Result<Inbound, CodecError> {
    let [PUSH, jr, r, t, e, rest @ ..] = bytes else {
        return Err(CodecError::Binary(
            "expected a push (kind 0) with a 5-byte header",
        ));
    };
    let lens = [*jr, *r, *t, *e].map(usize::from);
    if rest.len() < lens.iter().sum() {
        return Err(CodecError::Binary("header lengths exceed the frame"));
    }
    let mut at = 0;
    let mut field = |len: usize| {
        let s = std::str::from_utf8(&rest[at..at + len])
            .map_err(|_| CodecError::Binary("header field is not UTF-8"));
        at += len;
        s.map(str::to_owned)
    };
    let join_ref = field(lens[0])?;
    let reference = field(lens[1])?;
    let topic = field(lens[2])?;
    let event = field(lens[3])?;
    Ok(Inbound {
        // Kept even when empty, as Phoenix does: a push with an empty join_ref is stale for a
        // joined channel, not one "without a join_ref" (which would be forwarded).
        join_ref: Some(join_ref),
        reference: Some(reference).filter(|s| !s.is_empty()),
        topic,
        event,
        payload: Payload::Binary(Bytes::copy_from_slice(&rest[at..])),
    })
}

fn text(value: &impl serde::Serialize) -> Out {
    // Serializing `Value`s and strings cannot fail.
    Out::Text(Arc::from(serde_json::to_string(value).unwrap_or_default()))
}

fn len8(field: &str) -> Result<u8, CodecError> {
    u8::try_from(field.len()).map_err(|_| CodecError::FieldTooLong(field.len()))
}

pub(super) fn reply(
    join_ref: Option<&str>,
    reference: Option<&str>,
    topic: &str,
    status: &str,
    response: &Payload,
) -> Result<Out, CodecError> {
    match response {
        Payload::Binary(data) => {
            let (jr, r) = (join_ref.unwrap_or(""), reference.unwrap_or(""));
            let header = [REPLY, len8(jr)?, len8(r)?, len8(topic)?, len8(status)?];
            Ok(binary(&header, &[jr, r, topic, status], data))
        }
        _ => {
            let response = json_of(response)?;
            let payload = ReplyPayload { status, response };
            Ok(text(&(join_ref, reference, topic, event::REPLY, payload)))
        }
    }
}

pub(super) fn message(
    join_ref: Option<&str>,
    reference: Option<&str>,
    topic: &str,
    event: &str,
    payload: &Payload,
) -> Result<Out, CodecError> {
    match payload {
        Payload::Binary(data) => {
            let jr = join_ref.unwrap_or("");
            let header = [PUSH, len8(jr)?, len8(topic)?, len8(event)?];
            Ok(binary(&header, &[jr, topic, event], data))
        }
        _ => Ok(text(&(
            join_ref,
            reference,
            topic,
            event,
            json_of(payload)?,
        ))),
    }
}

pub(super) fn broadcast(topic: &str, event: &str, payload: &Payload) -> Result<Out, CodecError> {
    match payload {
        Payload::Binary(data) => {
            let header = [BROADCAST, len8(topic)?, len8(event)?];
            Ok(binary(&header, &[topic, event], data))
        }
        _ => Ok(text(&(
            None::<&str>,
            None::<&str>,
            topic,
            event,
            json_of(payload)?,
        ))),
    }
}

fn binary(header: &[u8], fields: &[&str], data: &[u8]) -> Out {
    let len = header.len() + fields.iter().map(|f| f.len()).sum::<usize>() + data.len();
    let mut buf = BytesMut::with_capacity(len);
    buf.put_slice(header);
    for field in fields {
        buf.put_slice(field.as_bytes());
    }
    buf.put_slice(data);
    Out::Binary(buf.freeze())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn as_text(out: Out) -> String {
        match out {
            Out::Text(t) => t.to_string(),
            Out::Binary(_) | Out::Spliced(_) => panic!("expected text"),
        }
    }

    fn as_binary(out: Out) -> Vec<u8> {
        match out {
            Out::Binary(b) => b.to_vec(),
            Out::Text(_) | Out::Spliced(_) => panic!("expected binary"),
        }
    }

    #[test]
    fn join_fixture() {
        let msg = decode_text(r#"["3","3","room:lobby","phx_join",{}]"#).unwrap();
        assert_eq!(msg.join_ref.as_deref(), Some("3"));
        assert_eq!(msg.reference.as_deref(), Some("3"));
        assert_eq!(msg.topic, "room:lobby");
        assert_eq!(msg.event, "phx_join");
        assert_eq!(msg.payload, Payload::Json(json!({})));
        let out = reply(
            Some("3"),
            Some("3"),
            "room:lobby",
            "ok",
            &Payload::Json(json!({})),
        )
        .unwrap();
        assert_eq!(
            as_text(out),
            r#"["3","3","room:lobby","phx_reply",{"status":"ok","response":{}}]"#
        );
    }

    #[test]
    fn heartbeat_fixture() {
        let msg = decode_text(r#"[null,"7","phoenix","heartbeat",{}]"#).unwrap();
        assert_eq!(msg.join_ref, None);
        assert_eq!(msg.reference.as_deref(), Some("7"));
        let out = reply(None, Some("7"), "phoenix", "ok", &Payload::Json(json!({}))).unwrap();
        assert_eq!(
            as_text(out),
            r#"[null,"7","phoenix","phx_reply",{"status":"ok","response":{}}]"#
        );
    }

    #[test]
    fn push_close_error_and_broadcast_fixtures() {
        let p = Payload::Json(json!({"body": "hi"}));
        let push = message(Some("3"), None, "room:1", "new_msg", &p).unwrap();
        assert_eq!(
            as_text(push),
            r#"["3",null,"room:1","new_msg",{"body":"hi"}]"#
        );
        let close = message(
            Some("3"),
            Some("3"),
            "room:1",
            "phx_close",
            &Payload::Json(json!({})),
        )
        .unwrap();
        assert_eq!(as_text(close), r#"["3","3","room:1","phx_close",{}]"#);
        let b = broadcast("room:1", "new_msg", &p).unwrap();
        assert_eq!(
            as_text(b),
            r#"[null,null,"room:1","new_msg",{"body":"hi"}]"#
        );
    }

    #[test]
    fn extra_trailing_elements_are_ignored() {
        let msg = decode_text(r#"["1","2","t","e",{"a":1},"extra"]"#).unwrap();
        assert_eq!(msg.payload, Payload::Json(json!({"a": 1})));
    }

    #[test]
    fn malformed_text() {
        assert!(matches!(decode_text("not json"), Err(CodecError::Json(_))));
        assert!(matches!(decode_text("{}"), Err(CodecError::Shape(_))));
        assert!(matches!(
            decode_text(r#"["1","2","t"]"#),
            Err(CodecError::Shape(_))
        ));
        assert!(matches!(
            decode_text(r#"[1,"2","t","e",{}]"#),
            Err(CodecError::Shape(_))
        ));
        assert!(matches!(
            decode_text(r#"["1","2",3,"e",{}]"#),
            Err(CodecError::Shape(_))
        ));
        assert!(matches!(
            decode_text(r#"["1","2","t",null,{}]"#),
            Err(CodecError::Shape(_))
        ));
    }

    #[test]
    fn binary_push_from_client() {
        let mut frame = vec![0, 1, 1, 4, 3];
        frame.extend_from_slice(b"12room");
        frame.extend_from_slice(b"img");
        frame.extend_from_slice(&[0xde, 0xad]);
        let msg = decode_binary(&frame).unwrap();
        assert_eq!(msg.join_ref.as_deref(), Some("1"));
        assert_eq!(msg.reference.as_deref(), Some("2"));
        assert_eq!(msg.topic, "room");
        assert_eq!(msg.event, "img");
        assert_eq!(
            msg.payload,
            Payload::Binary(Bytes::from_static(&[0xde, 0xad]))
        );
    }

    #[test]
    fn malformed_binary() {
        assert!(decode_binary(&[]).is_err());
        assert!(decode_binary(&[1, 0, 0, 0, 0]).is_err());
        assert!(decode_binary(&[0, 9, 0, 0, 0, b'x']).is_err());
        assert!(decode_binary(&[0, 1, 0, 0, 0, 0xff]).is_err());
    }

    #[test]
    fn binary_server_frames() {
        let data = Payload::Binary(Bytes::from_static(b"\x01\x02"));
        let push = as_binary(message(Some("12"), None, "t", "ev", &data).unwrap());
        assert_eq!(push, b"\x00\x02\x01\x0212tev\x01\x02");
        let rep = as_binary(reply(Some("1"), Some("2"), "t", "ok", &data).unwrap());
        assert_eq!(rep, b"\x01\x01\x01\x01\x0212tok\x01\x02");
        let b = as_binary(broadcast("t", "ev", &data).unwrap());
        assert_eq!(b, b"\x02\x01\x02tev\x01\x02");
    }

    #[test]
    fn binary_field_too_long() {
        let long = "x".repeat(256);
        let data = Payload::Binary(Bytes::new());
        assert_eq!(
            broadcast(&long, "e", &data),
            Err(CodecError::FieldTooLong(256))
        );
    }
}
