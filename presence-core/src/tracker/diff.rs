//! The joins and leaves a tracker reports for its topics (Phoenix's `handle_diff`).

use std::collections::HashMap;
use std::sync::Arc;

use super::state::State;
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
    /// What the joins and leaves did to each key they touched, in the order the keys first
    /// appear; a key that gained and lost the same presences in one step is absent.
    pub keys: Vec<(Arc<str>, KeyChange)>,
}

/// What a diff did to one key of a topic, on live nodes, cluster-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyChange {
    /// The key had no presence and now has some: its first device joined.
    Online,
    /// The key's last presence left.
    Offline,
    /// The key had presences before and still has: one joined, left or was updated.
    Updated,
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

    /// Fills each topic's [`TopicDiff::keys`] from the state the diff left behind (called
    /// under the shard's lock, so the state is exactly the diff's result).
    pub(crate) fn mark_keys(&mut self, state: &State) {
        for (topic, diff) in &mut self.topics {
            // Keys in first-seen order, with their net change in presences.
            let mut net: Vec<(Arc<str>, isize)> = Vec::new();
            let mut index: HashMap<&str, usize> = HashMap::new();
            let changes = diff
                .joins
                .iter()
                .map(|(k, _)| (k, 1))
                .chain(diff.leaves.iter().map(|(k, _)| (k, -1)));
            for (key, step) in changes {
                let i = *index.entry(key).or_insert_with(|| {
                    net.push((key.clone(), 0));
                    net.len() - 1
                });
                net[i].1 += step;
            }
            diff.keys = net
                .into_iter()
                .filter_map(|(key, n)| {
                    let now = state.key_len(topic, &key) as isize;
                    let before = (now - n).max(0);
                    let change = match (before > 0, now > 0) {
                        (false, true) => KeyChange::Online,
                        (true, false) => KeyChange::Offline,
                        (true, true) => KeyChange::Updated,
                        (false, false) => return None,
                    };
                    Some((key, change))
                })
                .collect();
        }
    }

    fn topic(&mut self, topic: &Arc<str>) -> &mut TopicDiff {
        self.topics.entry(topic.clone()).or_default()
    }
}
