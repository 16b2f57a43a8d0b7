//! The joins and leaves a tracker reports for its topics (Phoenix's `handle_diff`).

use std::collections::HashMap;
use std::sync::Arc;

use crate::Meta;

/// The presences that joined and left, per topic, in one tracker step.
///
/// A local track is one join; an update is a join of the new meta and a leave of the old one
/// under the same key, in one diff; a merge from a peer may carry any mix. Topics without
/// changes are absent, and an empty diff is never reported. The order inside the lists carries
/// no meaning.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diff {
    topics: HashMap<Arc<str>, TopicDiff>,
}

/// The joins and leaves of one topic, as `(key, meta)` pairs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopicDiff {
    /// Presences that appeared.
    pub joins: Vec<(Arc<str>, Meta)>,
    /// Presences that went away.
    pub leaves: Vec<(Arc<str>, Meta)>,
}

impl Diff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// The changes of one topic.
    pub fn get(&self, topic: &str) -> Option<&TopicDiff> {
        self.topics.get(topic)
    }

    /// Every changed topic with its changes, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &TopicDiff)> {
        self.topics.iter()
    }

    /// The number of changed topics.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// Takes the diff apart into its topics.
    pub fn into_topics(self) -> impl Iterator<Item = (Arc<str>, TopicDiff)> {
        self.topics.into_iter()
    }

    pub(crate) fn join(&mut self, topic: &Arc<str>, key: Arc<str>, meta: Meta) {
        self.topic(topic).joins.push((key, meta));
    }

    pub(crate) fn leave(&mut self, topic: &Arc<str>, key: Arc<str>, meta: Meta) {
        self.topic(topic).leaves.push((key, meta));
    }

    fn topic(&mut self, topic: &Arc<str>) -> &mut TopicDiff {
        self.topics.entry(topic.clone()).or_default()
    }
}
