//! The messages a [`PubSub`](super::PubSub) carries.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

/// One published message: a topic, an event name and a payload.
///
/// Subscribers receive it as an `Arc<Message>` shared by all of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    topic: Arc<str>,
    event: Arc<str>,
    payload: Payload,
    /// Set on `presence_diff`s that local fan-out may merge (see [`Message::merge_window`]).
    merge_window: Option<Duration>,
}

/// What a [`Message`] carries.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Payload {
    /// A JSON value (a channel broadcast's payload).
    Json(Value),
    /// Raw bytes (binary channel broadcasts, and the tracker's replication messages).
    Binary(Bytes),
}

impl Message {
    /// A message with any payload.
    pub fn new(topic: impl Into<Arc<str>>, event: impl Into<Arc<str>>, payload: Payload) -> Self {
        Message {
            topic: topic.into(),
            event: event.into(),
            payload,
            merge_window: None,
        }
    }

    /// A message with a JSON payload.
    ///
    /// # Examples
    ///
    /// ```
    /// let m = presence_core::pubsub::Message::json("room:1", "new_msg", serde_json::json!({"body": "hi"}));
    /// assert_eq!(m.topic(), "room:1");
    /// ```
    pub fn json(topic: impl Into<Arc<str>>, event: impl Into<Arc<str>>, payload: Value) -> Self {
        Self::new(topic, event, Payload::Json(payload))
    }

    /// A message with a binary payload.
    pub fn binary(topic: impl Into<Arc<str>>, event: impl Into<Arc<str>>, payload: Bytes) -> Self {
        Self::new(topic, event, Payload::Binary(payload))
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic, shared.
    pub fn topic_arc(&self) -> &Arc<str> {
        &self.topic
    }

    /// The event name.
    pub fn event(&self) -> &str {
        &self.event
    }

    /// The payload.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// Marks a `presence_diff` as mergeable: a fan-out that has sent a diff for this topic less
    /// than `window` ago may hold this one back (at most until `window` after that send) and
    /// merge it with the diffs that follow, with
    /// [`merge_diff`](crate::presence::merge_diff). The Presence layer marks its diffs with its
    /// `diff_window`. A local hint: it is not carried to other nodes, and a zero window means no
    /// merging.
    pub fn with_merge_window(mut self, window: Duration) -> Self {
        self.merge_window = Some(window).filter(|w| !w.is_zero());
        self
    }

    /// The merge window set by [`with_merge_window`](Self::with_merge_window).
    pub fn merge_window(&self) -> Option<Duration> {
        self.merge_window
    }
}
