//! The Phoenix channel wire model and its two serializers.
//!
//! Everything here is pure: decoding a websocket frame into an [`Inbound`] message and encoding
//! replies, pushes and broadcasts into an [`Out`] frame. The socket picks a [`Vsn`] once, from
//! the `vsn` query parameter.

mod v1;
mod v2;

use std::sync::Arc;

use bytes::Bytes;
use presence_core::pubsub::Payload;
use serde_json::Value;

/// Reserved event names.
pub(crate) mod event {
    pub(crate) const JOIN: &str = "phx_join";
    pub(crate) const LEAVE: &str = "phx_leave";
    pub(crate) const REPLY: &str = "phx_reply";
    pub(crate) const CLOSE: &str = "phx_close";
    pub(crate) const ERROR: &str = "phx_error";
    pub(crate) const HEARTBEAT: &str = "heartbeat";
}

/// The topic of socket-level messages (heartbeats).
pub(crate) const PHOENIX_TOPIC: &str = "phoenix";

/// A serializer version, negotiated from the `vsn` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vsn {
    /// `1.0.x`: JSON objects, no binary frames.
    V1,
    /// `2.0.x`: JSON arrays plus binary frames.
    V2,
}

impl Vsn {
    /// Parses a `vsn` parameter the way Phoenix matches `~> 1.0.0` and `~> 2.0.0`: absent means
    /// 1.0.0; anything else that is not `1.0.x` or `2.0.x` is refused.
    pub(crate) fn negotiate(vsn: Option<&str>) -> Option<Vsn> {
        let Some(vsn) = vsn else {
            return Some(Vsn::V1);
        };
        let mut parts = vsn.split('.');
        let mut next = || parts.next().and_then(|p| p.parse::<u64>().ok());
        let (major, minor, _patch) = (next()?, next()?, next()?);
        if parts.next().is_some() {
            return None;
        }
        match (major, minor) {
            (1, 0) => Some(Vsn::V1),
            (2, 0) => Some(Vsn::V2),
            _ => None,
        }
    }
}

/// An encoded frame, ready to be written to any number of sockets (cloning is a refcount).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Out {
    /// A text frame.
    Text(Arc<str>),
    /// A binary frame.
    Binary(Bytes),
    /// A text frame whose large middle is shared with other sockets' frames (a
    /// `presence_state` listed once for many joiners): it is joined only when written.
    Spliced(Box<Spliced>),
}

/// The parts of [`Out::Spliced`]: `head`, `body` and `tail`, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spliced {
    head: Box<str>,
    body: Arc<str>,
    tail: Box<str>,
}

impl Out {
    /// The frame's size in bytes.
    pub(crate) fn len(&self) -> usize {
        match self {
            Out::Text(text) => text.len(),
            Out::Binary(bytes) => bytes.len(),
            Out::Spliced(s) => s.head.len() + s.body.len() + s.tail.len(),
        }
    }

    /// Whether it is a text frame, and its bytes in order (one part, or three for a spliced
    /// frame), shared rather than copied.
    pub(crate) fn into_parts(self) -> (bool, [Option<Bytes>; 3]) {
        match self {
            Out::Text(text) => (true, [Some(shared(text)), None, None]),
            Out::Binary(bytes) => (false, [Some(bytes), None, None]),
            Out::Spliced(s) => {
                let Spliced { head, body, tail } = *s;
                let head = Bytes::from(head.into_boxed_bytes());
                let tail = Bytes::from(tail.into_boxed_bytes());
                (true, [Some(head), Some(shared(body)), Some(tail)])
            }
        }
    }

    /// The frame's text, if it is a text frame.
    pub(crate) fn into_text(self) -> Result<String, Bytes> {
        match self {
            Out::Text(text) => Ok(text.to_string()),
            Out::Binary(bytes) => Err(bytes),
            Out::Spliced(s) => {
                let mut text = String::with_capacity(s.head.len() + s.body.len() + s.tail.len());
                text.push_str(&s.head);
                text.push_str(&s.body);
                text.push_str(&s.tail);
                Ok(text)
            }
        }
    }
}

/// An `Arc<str>` as the owner of a [`Bytes`], so that a text many sockets send is not copied
/// for each of them.
struct SharedText(Arc<str>);

impl AsRef<[u8]> for SharedText {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

fn shared(text: Arc<str>) -> Bytes {
    Bytes::from_owner(SharedText(text))
}

/// A message received from a client.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Inbound {
    pub(crate) join_ref: Option<String>,
    pub(crate) reference: Option<String>,
    pub(crate) topic: String,
    pub(crate) event: String,
    pub(crate) payload: Payload,
}

/// Why a frame could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CodecError {
    /// The text frame is not valid JSON.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// The JSON is not a Phoenix message.
    #[error("malformed message: {0}")]
    Shape(&'static str),
    /// The binary frame is malformed.
    #[error("malformed binary frame: {0}")]
    Binary(&'static str),
    /// This serializer has no binary frames (V1).
    #[error("binary frames are not supported by this serializer")]
    BinaryUnsupported,
    /// A field is longer than 255 bytes and cannot go in a binary frame header.
    #[error("field too long for a binary frame: {0} bytes")]
    FieldTooLong(usize),
}

/// A websocket frame as received, before decoding.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Raw<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

impl Vsn {
    /// Decodes one client frame.
    pub(crate) fn decode(self, raw: Raw<'_>) -> Result<Inbound, CodecError> {
        match (self, raw) {
            (Vsn::V1, Raw::Text(text)) => v1::decode(text),
            (Vsn::V1, Raw::Binary(_)) => Err(CodecError::BinaryUnsupported),
            (Vsn::V2, Raw::Text(text)) => v2::decode_text(text),
            (Vsn::V2, Raw::Binary(bytes)) => v2::decode_binary(bytes),
        }
    }

    /// Encodes a reply (`phx_reply`) to the request `reference`.
    pub(crate) fn reply(
        self,
        join_ref: Option<&str>,
        reference: Option<&str>,
        topic: &str,
        status: &str,
        response: &Payload,
    ) -> Result<Out, CodecError> {
        match self {
            Vsn::V1 => v1::reply(reference, topic, status, response),
            Vsn::V2 => v2::reply(join_ref, reference, topic, status, response),
        }
    }

    /// Encodes a message with explicit refs: a server push (`join_ref`, no ref), a channel
    /// close or error (`ref` = `join_ref`).
    pub(crate) fn message(
        self,
        join_ref: Option<&str>,
        reference: Option<&str>,
        topic: &str,
        event: &str,
        payload: &Payload,
    ) -> Result<Out, CodecError> {
        match self {
            Vsn::V1 => v1::message(reference, topic, event, payload),
            Vsn::V2 => v2::message(join_ref, reference, topic, event, payload),
        }
    }

    /// Encodes a server push (`join_ref`, no ref) whose payload is the JSON text `body`,
    /// shared with other frames rather than copied.
    pub(crate) fn push_json(
        self,
        join_ref: Option<&str>,
        topic: &str,
        event: &str,
        body: &Arc<str>,
    ) -> Out {
        // Serializing strings cannot fail.
        let json = |v: &str| serde_json::to_string(v).unwrap_or_default();
        let (head, tail) = match self {
            Vsn::V1 => (
                format!("{{\"event\":{},\"payload\":", json(event)),
                format!(",\"ref\":null,\"topic\":{}}}", json(topic)),
            ),
            Vsn::V2 => {
                let join_ref = join_ref.map_or_else(|| "null".to_owned(), json);
                (
                    format!("[{join_ref},null,{},{},", json(topic), json(event)),
                    "]".to_owned(),
                )
            }
        };
        Out::Spliced(Box::new(Spliced {
            head: head.into(),
            body: body.clone(),
            tail: tail.into(),
        }))
    }

    /// Encodes a fastlane broadcast (no join_ref, no ref).
    pub(crate) fn broadcast(
        self,
        topic: &str,
        event: &str,
        payload: &Payload,
    ) -> Result<Out, CodecError> {
        match self {
            Vsn::V1 => v1::message(None, topic, event, payload),
            Vsn::V2 => v2::broadcast(topic, event, payload),
        }
    }
}

/// A reply's payload, serialized in Phoenix's key order.
#[derive(serde::Serialize)]
struct ReplyPayload<'a> {
    status: &'a str,
    response: &'a Value,
}

/// The JSON value of a payload, or an error for binary payloads (V1 and the JSON parts of V2).
fn json_of(payload: &Payload) -> Result<&Value, CodecError> {
    match payload {
        Payload::Json(v) => Ok(v),
        _ => Err(CodecError::BinaryUnsupported),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_pushes_encode_like_pushes() {
        let body: Arc<str> = Arc::from(r#"{"alice":{"metas":[{"phx_ref":"r"}]}}"#);
        let value: Value = serde_json::from_str(&body).unwrap();
        for vsn in [Vsn::V1, Vsn::V2] {
            let spliced = vsn.push_json(Some("3"), "room:\"1\"", "presence_state", &body);
            let plain = vsn
                .message(
                    Some("3"),
                    None,
                    "room:\"1\"",
                    "presence_state",
                    &Payload::Json(value.clone()),
                )
                .unwrap();
            assert_eq!(spliced.len(), plain.len());
            let as_value =
                |out: Out| -> Value { serde_json::from_str(&out.into_text().unwrap()).unwrap() };
            assert_eq!(as_value(spliced), as_value(plain));
        }
    }

    #[test]
    fn vsn_negotiation() {
        assert_eq!(Vsn::negotiate(None), Some(Vsn::V1));
        assert_eq!(Vsn::negotiate(Some("1.0.0")), Some(Vsn::V1));
        assert_eq!(Vsn::negotiate(Some("2.0.0")), Some(Vsn::V2));
        assert_eq!(Vsn::negotiate(Some("2.0.7")), Some(Vsn::V2));
        assert_eq!(Vsn::negotiate(Some("2.1.0")), None);
        assert_eq!(Vsn::negotiate(Some("3.0.0")), None);
        assert_eq!(Vsn::negotiate(Some("2.0")), None);
        assert_eq!(Vsn::negotiate(Some("two")), None);
        assert_eq!(Vsn::negotiate(Some("")), None);
        assert_eq!(Vsn::negotiate(Some("2.0.0.1")), None);
    }
}
