//! The node-to-node encoding of a [`Message`]: serialized once per broadcast.
//!
//! Layout: version byte (1), topic length (u32 BE), topic, event length (u32 BE), event,
//! payload kind (0 JSON text, 1 binary), payload bytes to the end.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::DecodeError;
use super::message::{Message, Payload};

const VERSION: u8 = 1;

pub(crate) fn encode(message: &Message) -> Bytes {
    let topic = message.topic().as_bytes();
    let event = message.event().as_bytes();
    let mut buf = BytesMut::with_capacity(11 + topic.len() + event.len() + 64);
    buf.put_u8(VERSION);
    buf.put_u32(topic.len() as u32);
    buf.put_slice(topic);
    buf.put_u32(event.len() as u32);
    buf.put_slice(event);
    match message.payload() {
        Payload::Json(value) => {
            buf.put_u8(0);
            let mut w = buf.writer();
            // Writing a `Value` to memory cannot fail.
            let _ = serde_json::to_writer(&mut w, value);
            buf = w.into_inner();
        }
        Payload::Binary(bytes) => {
            buf.put_u8(1);
            buf.put_slice(bytes);
        }
    }
    buf.freeze()
}

pub(crate) fn decode(mut frame: Bytes) -> Result<Message, DecodeError> {
    if frame.remaining() < 1 || frame.get_u8() != VERSION {
        return Err(DecodeError("unknown version"));
    }
    let topic = take_str(&mut frame)?;
    let event = take_str(&mut frame)?;
    if frame.remaining() < 1 {
        return Err(DecodeError("missing payload kind"));
    }
    let payload = match frame.get_u8() {
        0 => Payload::Json(serde_json::from_slice(&frame).map_err(|_| DecodeError("bad JSON"))?),
        1 => Payload::Binary(frame),
        _ => return Err(DecodeError("unknown payload kind")),
    };
    Ok(Message::new(topic, event, payload))
}

fn take_str(frame: &mut Bytes) -> Result<String, DecodeError> {
    if frame.remaining() < 4 {
        return Err(DecodeError("truncated length"));
    }
    let len = frame.get_u32() as usize;
    if frame.remaining() < len {
        return Err(DecodeError("truncated string"));
    }
    let s = frame.split_to(len);
    String::from_utf8(s.to_vec()).map_err(|_| DecodeError("invalid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_payload_kinds() {
        let a = Message::json("room:é", "ev", serde_json::json!({"a": [1, 2]}));
        assert_eq!(decode(encode(&a)).unwrap(), a);
        let b = Message::binary("t", "bin", Bytes::from_static(b"\x00\xff"));
        assert_eq!(decode(encode(&b)).unwrap(), b);
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in [
            &b""[..],
            b"\x02",
            b"\x01\x00\x00\x00\x09ab",
            b"\x01\x00\x00\x00\x00\x00\x00\x00\x00\x07",
        ] {
            assert!(decode(Bytes::copy_from_slice(bad)).is_err());
        }
        let mut good = encode(&Message::json("t", "e", serde_json::json!(1))).to_vec();
        for cut in 0..good.len() {
            let _ = decode(Bytes::copy_from_slice(&good[..cut]));
        }
        good.push(b'}');
        assert!(decode(Bytes::from(good)).is_err());
    }
}
