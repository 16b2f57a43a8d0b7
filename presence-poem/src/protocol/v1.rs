//! The V1 serializer: JSON objects `{"topic", "event", "payload", "ref"}`; no binary frames.
//!
//! Input may carry `join_ref`; output never does.

use std::sync::Arc;

use presence_core::pubsub::Payload;
use serde_json::{Value, json};

use super::{CodecError, Inbound, Out, event, json_of};

pub(super) fn decode(text: &str) -> Result<Inbound, CodecError> {
    let value: Value = serde_json::from_str(text).map_err(|e| CodecError::Json(e.to_string()))?;
    let Value::Object(mut map) = value else {
        return Err(CodecError::Shape("expected a JSON object"));
    };
    let mut string = |key: &str, what: &'static str| match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(CodecError::Shape(what)),
    };
    let join_ref = string("join_ref", "join_ref must be a string or null")?;
    let reference = string("ref", "ref must be a string or null")?;
    let topic =
        string("topic", "topic must be a string")?.ok_or(CodecError::Shape("missing topic"))?;
    let event =
        string("event", "event must be a string")?.ok_or(CodecError::Shape("missing event"))?;
    // Phoenix's V1 serializer requires every field but join_ref.
    let payload = map
        .remove("payload")
        .ok_or(CodecError::Shape("missing payload"))?;
    Ok(Inbound {
        join_ref,
        reference,
        topic,
        event,
        payload: Payload::Json(payload),
    })
}

fn text(value: &Value) -> Out {
    Out::Text(Arc::from(value.to_string()))
}

pub(super) fn reply(
    reference: Option<&str>,
    topic: &str,
    status: &str,
    response: &Payload,
) -> Result<Out, CodecError> {
    let response = json_of(response)?;
    Ok(text(&json!({
        "topic": topic,
        "event": event::REPLY,
        "payload": {"status": status, "response": response},
        "ref": reference,
    })))
}

pub(super) fn message(
    reference: Option<&str>,
    topic: &str,
    event: &str,
    payload: &Payload,
) -> Result<Out, CodecError> {
    let payload = json_of(payload)?;
    Ok(text(&json!({
        "topic": topic,
        "event": event,
        "payload": payload,
        "ref": reference,
    })))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn parse(out: Out) -> Value {
        match out {
            Out::Text(t) => serde_json::from_str(&t).unwrap(),
            Out::Binary(_) | Out::Spliced(_) => panic!("expected text"),
        }
    }

    #[test]
    fn join_fixture() {
        let msg = decode(
            r#"{"topic":"room:lobby","event":"phx_join","payload":{"a":1},"ref":"3","join_ref":"3"}"#,
        )
        .unwrap();
        assert_eq!(msg.join_ref.as_deref(), Some("3"));
        assert_eq!(msg.reference.as_deref(), Some("3"));
        assert_eq!(msg.topic, "room:lobby");
        assert_eq!(msg.event, "phx_join");
        assert_eq!(msg.payload, Payload::Json(json!({"a": 1})));
        let out = reply(Some("3"), "room:lobby", "ok", &Payload::Json(json!({}))).unwrap();
        assert_eq!(
            parse(out),
            json!({"topic":"room:lobby","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"3"})
        );
    }

    #[test]
    fn join_ref_is_optional_on_input() {
        let msg =
            decode(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}"#).unwrap();
        assert_eq!(msg.join_ref, None);
    }

    #[test]
    fn broadcast_has_null_ref_and_no_join_ref() {
        let out = message(None, "t", "e", &Payload::Json(json!({"x": 1}))).unwrap();
        assert_eq!(
            parse(out),
            json!({"topic":"t","event":"e","payload":{"x":1},"ref":null})
        );
    }

    #[test]
    fn binary_payloads_are_refused() {
        let p = Payload::Binary(Bytes::from_static(b"x"));
        assert_eq!(
            message(None, "t", "e", &p),
            Err(CodecError::BinaryUnsupported)
        );
    }

    #[test]
    fn malformed() {
        assert!(matches!(decode("nope"), Err(CodecError::Json(_))));
        assert!(matches!(decode("[]"), Err(CodecError::Shape(_))));
        assert!(matches!(
            decode(r#"{"event":"e"}"#),
            Err(CodecError::Shape(_))
        ));
        assert!(matches!(
            decode(r#"{"topic":1,"event":"e"}"#),
            Err(CodecError::Shape(_))
        ));
        assert!(
            matches!(
                decode(r#"{"topic":"t","event":"e","ref":"1"}"#),
                Err(CodecError::Shape("missing payload"))
            ),
            "a message without payload is refused, as in Phoenix"
        );
    }
}
