//! The pure delta-state CRDT of the tracker (Phoenix's `Tracker.State`).
//!
//! An add-wins observed-remove set of presence rows keyed by `(topic, owner, key)`, each tagged
//! with a *dot* `(replica, counter)`. Replicas exchange small deltas (the dots and rows created or
//! removed since the last broadcast) and, to catch up, whole-state extracts. It is a plain value:
//! no tasks, clocks, IO or randomness; the shard drives it.
//!
//! Layout, chosen for memory (one tracked presence costs a row of 64 bytes, its key string
//! and a few bytes of index) and for the hot paths:
//! - replica refs are interned to small indexes (`Rid`), so a dot is two integers, and topics
//!   to small indexes (`Tid`);
//! - the rows of a topic live in one vector, without holes, so `list` reads one run of memory;
//!   the indexes are hash tables of row positions, hashed by what they look up (the row's
//!   key, dot counter or owner) and compared against the row itself;
//! - the rows under one topic and key form a chain through their `next_key` indexes, and each
//!   topic's table holds the first row of each key: `get_by_key` walks one chain; the rows of
//!   a chain share one allocation of the key string;
//! - the rows of other replicas are found by dot in their replica's table, for merges and
//!   up/down; own rows never need that;
//! - the own rows of one owner form a chain through `next_owner`, with its first row in the
//!   owner table, which makes `leave_owner` proportional to the owner's rows.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::Arc;

use hashbrown::{HashTable, hash_table};

use serde::{Deserialize, Serialize};

use super::clock::{self, Context, ReplicaRef, pairs};
use crate::{Meta, OwnerId};

/// An interned replica: index into `State::reps`.
type Rid = u32;
/// A dot with an interned replica.
type Dot = (Rid, u64);
/// The own replica is always interned first.
const ME: Rid = 0;

/// A cheap hasher for trusted integer keys (dot counters, locally generated owner ids): one
/// multiply per word instead of SipHash. Never used for user-supplied strings.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(26) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by integers, hashed with [`IntHasher`].
pub(crate) type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

/// Whether a replica's rows are visible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) enum ReplicaStatus {
    /// Heartbeats arrive: rows are listed.
    Up,
    /// Presumed dead: rows are kept but hidden from `list` and `get_by_key`.
    Down,
}

/// One presence row, as reported in [`Changes`] and by local operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The topic.
    pub(crate) topic: Arc<str>,
    /// The presence key.
    pub(crate) key: Arc<str>,
    /// The owner that tracked it.
    pub(crate) owner: OwnerId,
    /// Its metadata.
    pub(crate) meta: Meta,
    /// The replica that created the row.
    pub(crate) replica: ReplicaRef,
}

/// The visible joins and leaves produced by a merge.
///
/// Rows of replicas marked down are never reported: their leaves were reported by
/// [`State::replica_down`] and their joins will be by [`State::replica_up`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    /// Rows that became visible.
    pub(crate) joins: Vec<Entry>,
    /// Rows that were removed.
    pub(crate) leaves: Vec<Entry>,
}

impl Changes {
    /// Whether nothing changed.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }
}

/// A row as carried in a [`Delta`] or an [`Extract`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Element {
    /// The topic.
    #[serde(rename = "t")]
    pub(crate) topic: Arc<str>,
    /// The owner.
    #[serde(rename = "o")]
    pub(crate) owner: OwnerId,
    /// The presence key.
    #[serde(rename = "k")]
    pub(crate) key: Arc<str>,
    /// The metadata.
    #[serde(rename = "m")]
    pub(crate) meta: Meta,
}

/// The dots of one replica inside a delta or an extract: the covered counters not contiguous
/// with a context (`cloud`) and the rows still alive (`values`). A covered counter without a
/// value is a remove.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReplicaDots {
    /// Covered counters.
    #[serde(rename = "c", default)]
    pub(crate) cloud: BTreeSet<u64>,
    /// Live rows by counter.
    #[serde(rename = "v", default)]
    pub(crate) values: IntMap<u64, Element>,
}

impl ReplicaDots {
    fn is_empty(&self) -> bool {
        self.cloud.is_empty() && self.values.is_empty()
    }
}

/// A delta: the rows and dots of a contiguous range of history, `start..=end`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Delta {
    #[serde(with = "pairs")]
    dots: BTreeMap<ReplicaRef, ReplicaDots>,
    start: Context,
    end: Context,
}

impl Delta {
    /// A delta covering nothing, with an empty range at `at`.
    pub(crate) fn empty_at(at: Context) -> Self {
        Delta {
            dots: BTreeMap::new(),
            start: at.clone(),
            end: at,
        }
    }

    /// Values plus cloud dots: the measure capped by delta generations.
    pub(crate) fn size(&self) -> usize {
        self.dots
            .values()
            .map(|d| d.values.len() + d.cloud.len())
            .sum()
    }

    /// Whether no dot is covered (nothing to broadcast).
    pub(crate) fn is_empty(&self) -> bool {
        self.dots.values().all(|d| d.cloud.is_empty())
    }

    /// The context at which the range starts.
    pub(crate) fn start(&self) -> &Context {
        &self.start
    }

    /// The context at which the range ends.
    pub(crate) fn end(&self) -> &Context {
        &self.end
    }

    /// The per-replica dots.
    #[cfg(test)]
    pub(crate) fn dots(&self) -> &BTreeMap<ReplicaRef, ReplicaDots> {
        &self.dots
    }

    /// This delta restricted to the replicas that are keys of `known` (dots, values and range).
    pub(crate) fn restricted(&self, known: &Context) -> Delta {
        Delta {
            dots: self
                .dots
                .iter()
                .filter(|(r, _)| known.contains(r))
                .map(|(r, d)| (r.clone(), d.clone()))
                .collect(),
            start: clock::filter_replicas(&self.start, known),
            end: clock::filter_replicas(&self.end, known),
        }
    }

    /// Forgets everything about `r` (dots, values, range entries).
    pub(crate) fn remove_replica(&mut self, r: &ReplicaRef) {
        self.dots.remove(r);
        self.start.0.remove(r);
        self.end.0.remove(r);
    }

    fn dots_mut(&mut self, r: &ReplicaRef) -> &mut ReplicaDots {
        // Avoid cloning the ref when the entry already exists (the common case).
        if !self.dots.contains_key(r) {
            self.dots.insert(r.clone(), ReplicaDots::default());
        }
        self.dots.get_mut(r).expect("just inserted")
    }
}

/// The error of merging two deltas whose ranges leave a gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("delta ranges are not contiguous")]
pub(crate) struct NotContiguous;

/// Merges two deltas into one covering both ranges (1.12 of the reference).
///
/// # Errors
///
/// [`NotContiguous`] unless each range's end dominates-or-equals the other's start.
pub(crate) fn merge_deltas(a: &Delta, b: &Delta) -> Result<Delta, NotContiguous> {
    if !(clock::dominates_or_equal(&b.end, &a.start) && clock::dominates_or_equal(&a.end, &b.start))
    {
        return Err(NotContiguous);
    }
    let mut dots = BTreeMap::new();
    let empty = ReplicaDots::default();
    let replicas: BTreeSet<&ReplicaRef> = a.dots.keys().chain(b.dots.keys()).collect();
    for r in replicas {
        let da = a.dots.get(r).unwrap_or(&empty);
        let db = b.dots.get(r).unwrap_or(&empty);
        let mut out = ReplicaDots {
            cloud: da.cloud.union(&db.cloud).copied().collect(),
            values: IntMap::with_capacity_and_hasher(
                da.values.len() + db.values.len(),
                BuildHasherDefault::default(),
            ),
        };
        for (n, v) in &da.values {
            if db.values.contains_key(n) || !db.cloud.contains(n) {
                out.values.insert(*n, v.clone());
            }
        }
        for (n, v) in &db.values {
            if !da.values.contains_key(n) && !da.cloud.contains(n) {
                out.values.insert(*n, v.clone());
            }
        }
        dots.insert(r.clone(), out);
    }
    Ok(Delta {
        dots,
        start: clock::lowerbound(&a.start, &b.start),
        end: clock::upperbound(&a.end, &b.end),
    })
}

/// A whole-state extract for one requester: context and dots restricted to the replicas it
/// knows, and every row of those replicas (but its own).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Extract {
    context: Context,
    #[serde(with = "pairs")]
    dots: BTreeMap<ReplicaRef, ReplicaDots>,
}

impl Extract {
    /// The extracted context.
    #[cfg(test)]
    pub(crate) fn context(&self) -> &Context {
        &self.context
    }

    /// Number of rows carried.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.dots.values().map(|d| d.values.len()).sum()
    }

    /// Whether no row is carried.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The per-replica dots.
    #[cfg(test)]
    pub(crate) fn dots(&self) -> &BTreeMap<ReplicaRef, ReplicaDots> {
        &self.dots
    }
}

/// What a transfer acknowledgement carries: a delta generation or the whole state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Transfer {
    /// A delta generation covering what the requester misses.
    Delta(Delta),
    /// The whole state.
    State(Extract),
}

/// An interned topic: index into `State::topics`.
type Tid = u32;
/// A row's index in its topic's rows.
type Idx = u32;
/// The end of a key chain (past the end of any topic's rows).
const NIL: Idx = Idx::MAX;

/// Where a row is: its topic, and its index in the topic's rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pos {
    topic: Tid,
    index: Idx,
}

impl Pos {
    /// The end of an owner chain.
    const NIL: Pos = Pos {
        topic: Tid::MAX,
        index: NIL,
    };
}

/// One presence row (64 bytes), stored in its topic's vector; the indexes hold positions.
#[derive(Clone, Debug)]
struct Row {
    /// The presence key: one allocation shared by the rows under the same topic and key.
    key: Arc<str>,
    meta: Meta,
    owner: OwnerId,
    /// The counter of the row's dot.
    n: u64,
    /// The replica of the row's dot.
    rid: Rid,
    /// The next row under the same topic and key, or [`NIL`].
    next_key: Idx,
    /// The next own row of the same owner, or [`Pos::NIL`] (always [`Pos::NIL`] in other
    /// replicas' rows).
    next_owner: Pos,
}

/// The row at `p`.
fn row_at(topics: &[Option<Topic>], p: Pos) -> &Row {
    &live(topics, p.topic).rows[p.index as usize]
}

/// The topic `t`, which a row or an index names: it is live.
fn live(topics: &[Option<Topic>], t: Tid) -> &Topic {
    topics[t as usize].as_ref().expect("a live topic")
}

/// The rows under one topic and key, from the first.
#[derive(Clone, Copy, Debug)]
struct KeyChain<'a> {
    rows: &'a [Row],
    at: Idx,
}

impl<'a> Iterator for KeyChain<'a> {
    type Item = &'a Row;

    fn next(&mut self) -> Option<Self::Item> {
        // NIL is past the end of the rows.
        let row = self.rows.get(self.at as usize)?;
        self.at = row.next_key;
        Some(row)
    }
}

/// The own rows of one owner, from the first.
#[derive(Clone, Copy, Debug)]
struct OwnerChain<'a> {
    topics: &'a [Option<Topic>],
    at: Pos,
}

impl<'a> Iterator for OwnerChain<'a> {
    type Item = (Pos, &'a Row);

    fn next(&mut self) -> Option<Self::Item> {
        let at = self.at;
        if at == Pos::NIL {
            return None;
        }
        let row = row_at(self.topics, at);
        self.at = row.next_owner;
        Some((at, row))
    }
}

/// Replaces the reference to `old` in the key chain that starts at `*head` (the head itself
/// or the link of the row before it) by `new`. Unlinks `old` when `new` is the row after it;
/// `*head` becomes [`NIL`] when that empties the chain. The row at `old` is not read, so it
/// may already be gone.
fn replace_in_key_chain(rows: &mut [Row], head: &mut Idx, old: Idx, new: Idx) {
    if *head == old {
        *head = new;
        return;
    }
    let mut at = *head;
    while rows[at as usize].next_key != old {
        at = rows[at as usize].next_key;
    }
    rows[at as usize].next_key = new;
}

/// The same for an owner chain.
fn replace_in_owner_chain(topics: &mut [Option<Topic>], head: &mut Pos, old: Pos, new: Pos) {
    if *head == old {
        *head = new;
        return;
    }
    let mut at = *head;
    while row_at(topics, at).next_owner != old {
        at = row_at(topics, at).next_owner;
    }
    let topic = topics[at.topic as usize].as_mut().expect("a live topic");
    topic.rows[at.index as usize].next_owner = new;
}

/// The hash of a trusted integer key (a dot counter, an owner id) for the tables of row
/// positions.
fn int_hash(x: impl Hash) -> u64 {
    BuildHasherDefault::<IntHasher>::default().hash_one(x)
}

/// Lets a table that emptied after a spike give its memory back (amortized: each shrink
/// follows at least as many removals as it keeps).
fn shrink_table<T>(table: &mut HashTable<T>, hasher: impl Fn(&T) -> u64) {
    if table.capacity() > 64 && table.len() < table.capacity() / 4 {
        table.shrink_to(table.len() * 2, hasher);
    }
}

/// The same for a vector.
fn shrink_vec<T>(v: &mut Vec<T>) {
    if v.capacity() > 64 && v.len() < v.capacity() / 4 {
        v.shrink_to(v.len() * 2);
    }
}

/// One topic: its rows, and the first row of each of its keys.
#[derive(Clone, Debug)]
struct Topic {
    name: Arc<str>,
    /// The head of each key's chain, hashed by the key.
    keys: HashTable<Idx>,
    /// The rows, without holes: removing a row moves the last one into its place. Its
    /// capacity grows by an eighth (not double) and shrinks even when small: the slack of
    /// many topics' vectors would otherwise cost more than the indexes.
    rows: Vec<Row>,
    /// Whether it is in [`State::touched`]: it may hold own rows newer than the last
    /// [`State::take_delta_part`].
    touched: bool,
}

/// Everything known about one replica.
#[derive(Clone, Debug)]
struct Rep {
    id: ReplicaRef,
    /// `Some` when the replica is in the context (its values are adopted).
    ctx: Option<u64>,
    cloud: BTreeSet<u64>,
    status: Option<ReplicaStatus>,
    /// Its rows, hashed by dot counter. Empty for the own replica, whose rows are never
    /// looked up by dot (they are found by topic and key, or by owner).
    rows: HashTable<Pos>,
}

impl Rep {
    fn new(id: ReplicaRef) -> Self {
        Rep {
            id,
            ctx: None,
            cloud: BTreeSet::new(),
            status: None,
            rows: HashTable::new(),
        }
    }

    fn seen(&self, n: u64) -> bool {
        self.ctx.is_some_and(|c| c >= n) || self.cloud.contains(&n)
    }

    fn compact(&mut self) {
        let Some(mut c) = self.ctx else { return };
        while let Some(&first) = self.cloud.first() {
            if first <= c {
            } else if first == c + 1 {
                c += 1;
            } else {
                break;
            }
            self.cloud.pop_first();
        }
        self.ctx = Some(c);
    }
}

/// What a state holds besides its rows (see [`State::footprint`]).
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Footprint {
    pub(crate) live_replicas: usize,
    pub(crate) slots: usize,
    pub(crate) down: usize,
    /// Capacity of the replicas' dot indexes.
    pub(crate) row_capacity: usize,
    /// Capacity of the topics' row vectors.
    pub(crate) arena_capacity: usize,
    /// Capacity of the topic name index.
    pub(crate) topic_capacity: usize,
    /// Capacity of the topic slots.
    pub(crate) topic_slots: usize,
    pub(crate) ids_capacity: usize,
}

/// The replicated set of presences held by one shard replica.
#[derive(Clone, Debug)]
pub(crate) struct State {
    /// Replicas by rid; a forgotten replica's slot is vacant (not in `ids`) and reused.
    reps: Vec<Rep>,
    ids: HashMap<ReplicaRef, Rid>,
    /// Vacant slots of `reps`, reused before the vector grows.
    vacant: Vec<Rid>,
    /// Number of replicas with status down (fast path for reads when 0).
    down: usize,
    /// Topics by tid; the slot of a topic whose last row left is `None` until reused.
    topics: Vec<Option<Topic>>,
    /// Vacant tids, reused before `topics` grows. May hold tids past the end of `topics`
    /// (after its vacant tail was cut), which are skipped.
    free_topics: Vec<Tid>,
    /// Tids by topic name. The entry holds the name too, so that a lookup reads the name and
    /// the topic's slot at once rather than one after the other.
    topic_ids: HashTable<(Arc<str>, Tid)>,
    /// The head of each owner's chain of own rows, hashed by owner.
    owners: HashTable<Pos>,
    /// Hashes topics and keys. They come from users, so the hash is keyed per state like
    /// the standard maps', rather than the [`IntHasher`] of trusted integers.
    hasher: RandomState,
    /// Number of rows held.
    len: usize,
    /// The pending outgoing delta, without the own rows and counters newer than
    /// `fresh_from`: those are read from the rows when the delta is taken, so that a burst
    /// of tracks costs no copy of each row (and no memory left behind once it is sent).
    /// It holds the own dots removed that are not newer, and the observed removes of others.
    delta: Delta,
    /// The own counter when the pending delta was last taken.
    fresh_from: u64,
    /// The topics that may hold own rows newer than `fresh_from` (with their flag set;
    /// a tid may repeat, or name a topic gone since).
    touched: Vec<Tid>,
}

impl State {
    /// A fresh state for the replica `replica`, with counter 0.
    pub(crate) fn new(replica: ReplicaRef) -> Self {
        let mut me = Rep::new(replica.clone());
        me.ctx = Some(0);
        me.status = Some(ReplicaStatus::Up);
        let delta = Delta::empty_at(std::iter::once((replica.clone(), 0)).collect());
        State {
            reps: vec![me],
            ids: std::iter::once((replica, ME)).collect(),
            vacant: Vec::new(),
            down: 0,
            topics: Vec::new(),
            free_topics: Vec::new(),
            topic_ids: HashTable::new(),
            owners: HashTable::new(),
            hasher: RandomState::new(),
            len: 0,
            delta,
            fresh_from: 0,
            touched: Vec::new(),
        }
    }

    /// This replica's ref.
    pub(crate) fn replica(&self) -> &ReplicaRef {
        &self.reps[ME as usize].id
    }

    fn rep(&self, rid: Rid) -> &Rep {
        &self.reps[rid as usize]
    }

    fn rep_mut(&mut self, rid: Rid) -> &mut Rep {
        &mut self.reps[rid as usize]
    }

    fn rid(&self, r: &ReplicaRef) -> Option<Rid> {
        self.ids.get(r).copied()
    }

    /// The rid of `r` when it is in the local context (its values are adopted).
    fn known_rid(&self, r: &ReplicaRef) -> Option<Rid> {
        self.rid(r).filter(|&rid| self.rep(rid).ctx.is_some())
    }

    fn intern(&mut self, r: &ReplicaRef) -> Rid {
        if let Some(rid) = self.rid(r) {
            return rid;
        }
        let rid = match self.vacant.pop() {
            Some(rid) => {
                self.reps[rid as usize] = Rep::new(r.clone());
                rid
            }
            None => {
                let rid = Rid::try_from(self.reps.len())
                    .expect("fewer than 2^32 live replica incarnations");
                self.reps.push(Rep::new(r.clone()));
                rid
            }
        };
        self.ids.insert(r.clone(), rid);
        rid
    }

    /// Whether `rid` is a live (not vacant) slot.
    fn is_live(&self, rid: usize) -> bool {
        let rep = &self.reps[rid];
        self.ids.get(&rep.id).is_some_and(|&r| r as usize == rid)
    }

    /// Lets a map that emptied after a spike give its memory back, like [`shrink_table`].
    fn shrink_if_sparse<K, V, S>(map: &mut HashMap<K, V, S>)
    where
        K: Eq + std::hash::Hash,
        S: std::hash::BuildHasher,
    {
        if map.capacity() > 64 && map.len() < map.capacity() / 4 {
            map.shrink_to(map.len() * 2);
        }
    }

    fn visible(&self, rid: Rid) -> bool {
        self.down == 0 || self.rep(rid).status != Some(ReplicaStatus::Down)
    }

    fn own_counter(&self) -> u64 {
        self.rep(ME).ctx.unwrap_or(0)
    }

    /// Consumes the next own counter. The pending delta covers every own counter newer
    /// than `fresh_from` (see [`State::take_delta_part`]).
    fn bump(&mut self) -> u64 {
        let me = &mut self.reps[ME as usize];
        let n = me.ctx.unwrap_or(0) + 1;
        me.ctx = Some(n);
        n
    }

    /// Notes that topic `t` holds an own row newer than `fresh_from`.
    fn touch(&mut self, t: Tid) {
        let topic = self.topics[t as usize].as_mut().expect("a live topic");
        if !topic.touched {
            topic.touched = true;
            self.touched.push(t);
        }
    }

    /// Records in the pending delta that the dot `(rid, n)` was removed.
    fn delta_remove(&mut self, rid: Rid, n: u64) {
        if rid == ME && n > self.fresh_from {
            // Covered by the pending range, and gone from the rows it is read from.
            return;
        }
        let id = &self.reps[rid as usize].id;
        let d = self.delta.dots_mut(id);
        d.values.remove(&n);
        d.cloud.insert(n);
    }

    fn topic(&self, t: Tid) -> &Topic {
        live(&self.topics, t)
    }

    fn topic_mut(&mut self, t: Tid) -> &mut Topic {
        self.topics[t as usize].as_mut().expect("a live topic")
    }

    fn row(&self, p: Pos) -> &Row {
        row_at(&self.topics, p)
    }

    fn find_topic(&self, name: &str) -> Option<Tid> {
        self.topic_ids
            .find(self.hasher.hash_one(name), |(x, _)| **x == *name)
            .map(|&(_, t)| t)
    }

    /// The tid of `name`, adding the topic (with the string given) if it is new.
    fn intern_topic(&mut self, name: Arc<str>) -> Tid {
        let (topics, hasher) = (&mut self.topics, &self.hasher);
        let entry = self.topic_ids.entry(
            hasher.hash_one(&*name),
            |(x, _)| *x == name,
            |(x, _)| hasher.hash_one(&**x),
        );
        match entry {
            hash_table::Entry::Occupied(e) => e.get().1,
            hash_table::Entry::Vacant(e) => {
                let t = loop {
                    match self.free_topics.pop() {
                        Some(t) if (t as usize) < topics.len() => break t,
                        // Past the end since the vacant tail was cut.
                        Some(_) => {}
                        None => {
                            topics.push(None);
                            break Tid::try_from(topics.len() - 1)
                                .ok()
                                .filter(|&t| t != Pos::NIL.topic)
                                .expect("fewer than 2^32 - 1 topics");
                        }
                    }
                };
                e.insert((Arc::clone(&name), t));
                topics[t as usize] = Some(Topic {
                    name,
                    keys: HashTable::new(),
                    rows: Vec::new(),
                    touched: false,
                });
                t
            }
        }
    }

    /// Forgets the topic `t`, whose last row left.
    fn drop_topic(&mut self, t: Tid) {
        let topic = self.topics[t as usize].take().expect("a live topic");
        let hasher = &self.hasher;
        if let Ok(e) = self
            .topic_ids
            .find_entry(hasher.hash_one(&*topic.name), |&(_, x)| x == t)
        {
            e.remove();
        }
        shrink_table(&mut self.topic_ids, |(x, _)| hasher.hash_one(&**x));
        if t as usize + 1 == self.topics.len() {
            while let Some(None) = self.topics.last() {
                self.topics.pop();
            }
            shrink_vec(&mut self.topics);
        } else {
            self.free_topics.push(t);
        }
        shrink_vec(&mut self.free_topics);
    }

    /// The first row under `key` in `topic`.
    fn key_head(topic: &Topic, hasher: &RandomState, key: &str) -> Option<Idx> {
        topic
            .keys
            .find(hasher.hash_one(key), |&i| {
                *topic.rows[i as usize].key == *key
            })
            .copied()
    }

    /// The rows under `(topic, key)`.
    fn rows_under(&self, topic: &str, key: &str) -> KeyChain<'_> {
        let Some(t) = self.find_topic(topic) else {
            return KeyChain { rows: &[], at: NIL };
        };
        let topic = self.topic(t);
        KeyChain {
            rows: &topic.rows,
            at: Self::key_head(topic, &self.hasher, key).unwrap_or(NIL),
        }
    }

    /// The own rows of `owner`.
    fn owner_chain(&self, owner: OwnerId) -> OwnerChain<'_> {
        let topics = &self.topics;
        let head = self
            .owners
            .find(int_hash(owner), |&p| row_at(topics, p).owner == owner)
            .copied();
        OwnerChain {
            topics,
            at: head.unwrap_or(Pos::NIL),
        }
    }

    /// The row of another replica tagged `(rid, n)`.
    fn find_dot(&self, rid: Rid, n: u64) -> Option<Pos> {
        let topics = &self.topics;
        self.rep(rid)
            .rows
            .find(int_hash(n), |&p| row_at(topics, p).n == n)
            .copied()
    }

    /// This replica's row `(topic, owner, key)`.
    fn find_own(&self, topic: &str, owner: OwnerId, key: &str) -> Option<Pos> {
        let t = self.find_topic(topic)?;
        let topic = self.topic(t);
        let mut at = Self::key_head(topic, &self.hasher, key)?;
        while let Some(row) = topic.rows.get(at as usize) {
            if row.owner == owner && row.rid == ME {
                return Some(Pos {
                    topic: t,
                    index: at,
                });
            }
            at = row.next_key;
        }
        None
    }

    /// The positions of the rows of `rid`.
    fn positions_of(&self, rid: Rid) -> Vec<Pos> {
        if rid != ME {
            return self.rep(rid).rows.iter().copied().collect();
        }
        let mut out = Vec::with_capacity(self.owners.len());
        for (t, topic) in self.topics.iter().enumerate() {
            let Some(topic) = topic else { continue };
            let t = Tid::try_from(t).expect("tids fit");
            for (i, row) in topic.rows.iter().enumerate() {
                if row.rid == ME {
                    let index = Idx::try_from(i).expect("row indexes fit");
                    out.push(Pos { topic: t, index });
                }
            }
        }
        out
    }

    fn entry_at(&self, p: Pos) -> Entry {
        let row = self.row(p);
        Entry {
            topic: Arc::clone(&self.topic(p.topic).name),
            key: Arc::clone(&row.key),
            owner: row.owner,
            meta: row.meta.clone(),
            replica: self.rep(row.rid).id.clone(),
        }
    }

    fn element_at(&self, p: Pos) -> Element {
        let row = self.row(p);
        Element {
            topic: Arc::clone(&self.topic(p.topic).name),
            owner: row.owner,
            key: Arc::clone(&row.key),
            meta: row.meta.clone(),
        }
    }

    /// Inserts a row, interning topic and key (the row and its topic keep the strings
    /// already held for them, if any); returns its position.
    fn insert_row(
        &mut self,
        (rid, n): Dot,
        topic: Arc<str>,
        key: Arc<str>,
        owner: OwnerId,
        meta: Meta,
    ) -> Pos {
        let t = self.intern_topic(topic);
        let hasher = &self.hasher;
        let Topic { keys, rows, .. } = self.topics[t as usize].as_mut().expect("interned");
        let index = Idx::try_from(rows.len())
            .ok()
            .filter(|&i| i != NIL)
            .expect("fewer than 2^32 - 1 rows in a topic");
        let entry = keys.entry(
            hasher.hash_one(&*key),
            |&h| rows[h as usize].key == key,
            |&h| hasher.hash_one(&*rows[h as usize].key),
        );
        // A new row goes first in its key's chain and its owner's: an insert costs the same
        // however many rows share the key (a shared "guest" key, a peer's delta of many rows
        // under one key).
        let (key, next_key) = match entry {
            hash_table::Entry::Occupied(mut e) => {
                let head = std::mem::replace(e.get_mut(), index);
                (Arc::clone(&rows[head as usize].key), head)
            }
            hash_table::Entry::Vacant(e) => {
                e.insert(index);
                (key, NIL)
            }
        };
        if rows.len() == rows.capacity() {
            rows.reserve_exact((rows.len() / 8).max(1));
        }
        rows.push(Row {
            key,
            meta,
            owner,
            n,
            rid,
            next_key,
            next_owner: Pos::NIL,
        });
        self.len += 1;
        let pos = Pos { topic: t, index };
        let topics = &mut self.topics;
        if rid == ME {
            let entry = self.owners.entry(
                int_hash(owner),
                |&p| row_at(topics, p).owner == owner,
                |&p| int_hash(row_at(topics, p).owner),
            );
            let next_owner = match entry {
                hash_table::Entry::Occupied(mut e) => std::mem::replace(e.get_mut(), pos),
                hash_table::Entry::Vacant(e) => {
                    e.insert(pos);
                    Pos::NIL
                }
            };
            let topic = topics[t as usize].as_mut().expect("a live topic");
            topic.rows[index as usize].next_owner = next_owner;
        } else {
            self.reps[rid as usize]
                .rows
                .insert_unique(int_hash(n), pos, |&p| int_hash(row_at(topics, p).n));
        }
        pos
    }

    /// Removes the row of another replica tagged `dot`, if present.
    fn remove_row(&mut self, (rid, n): Dot) -> Option<Entry> {
        let p = self.find_dot(rid, n)?;
        Some(self.remove_row_at(p))
    }

    /// Removes the row at `p` from its indexes and its topic, where the topic's last row
    /// takes its place.
    fn remove_row_at(&mut self, p: Pos) -> Entry {
        let row = self.row(p);
        let (rid, n, owner) = (row.rid, row.n, row.owner);
        let (next_key, next_owner) = (row.next_key, row.next_owner);
        let topics = &mut self.topics;

        if rid == ME {
            let entry = self
                .owners
                .find_entry(int_hash(owner), |&h| row_at(topics, h).owner == owner);
            if let Ok(mut e) = entry {
                replace_in_owner_chain(topics, e.get_mut(), p, next_owner);
                if *e.get() == Pos::NIL {
                    e.remove();
                }
            }
            shrink_table(&mut self.owners, |&h| int_hash(row_at(topics, h).owner));
        } else {
            let dots = &mut self.reps[rid as usize].rows;
            if let Ok(e) = dots.find_entry(int_hash(n), |&h| h == p) {
                e.remove();
            }
            shrink_table(dots, |&h| int_hash(row_at(topics, h).n));
        }

        let hasher = &self.hasher;
        let Topic { keys, rows, .. } = topics[p.topic as usize].as_mut().expect("a live topic");
        let key = &rows[p.index as usize].key;
        if let Ok(mut e) =
            keys.find_entry(hasher.hash_one(&**key), |&h| rows[h as usize].key == *key)
        {
            replace_in_key_chain(rows, e.get_mut(), p.index, next_key);
            if *e.get() == NIL {
                e.remove();
            }
        }
        shrink_table(keys, |&h| hasher.hash_one(&*rows[h as usize].key));
        let row = rows.swap_remove(p.index as usize);
        let moved = Idx::try_from(rows.len()).expect("row indexes fit");
        if rows.len() < rows.capacity() / 4 {
            rows.shrink_to(rows.len() * 2);
        }
        self.len -= 1;
        let topic = if rows.is_empty() {
            let name = Arc::clone(&self.topic(p.topic).name);
            self.drop_topic(p.topic);
            name
        } else {
            if moved != p.index {
                self.relocate(
                    Pos {
                        topic: p.topic,
                        index: moved,
                    },
                    p,
                );
            }
            Arc::clone(&self.topic(p.topic).name)
        };
        Entry {
            topic,
            key: row.key,
            owner,
            meta: row.meta,
            replica: self.rep(rid).id.clone(),
        }
    }

    /// Points the indexes that held `from` (an index past the end of its topic's rows now)
    /// at `to`, where that row was moved in the same topic.
    fn relocate(&mut self, from: Pos, to: Pos) {
        let hasher = &self.hasher;
        let topics = &mut self.topics;
        let row = row_at(topics, to);
        let (rid, n, owner) = (row.rid, row.n, row.owner);
        if rid == ME {
            // The head of the owner's chain, which may be the row itself.
            let head = self.owners.find_mut(int_hash(owner), |&h| {
                h == from || row_at(topics, h).owner == owner
            });
            if let Some(head) = head {
                replace_in_owner_chain(topics, head, from, to);
            }
        } else if let Some(h) = self.reps[rid as usize]
            .rows
            .find_mut(int_hash(n), |&h| h == from)
        {
            *h = to;
        }
        let Topic { keys, rows, .. } = topics[to.topic as usize].as_mut().expect("a live topic");
        let key = &rows[to.index as usize].key;
        // The head of the row's key chain, which may be the row itself.
        let head = keys.find_mut(hasher.hash_one(&**key), |&h| {
            h == from.index || rows[h as usize].key == *key
        });
        if let Some(head) = head {
            replace_in_key_chain(rows, head, from.index, to.index);
        }
    }

    fn rows_of(&self, rid: Rid) -> Vec<Entry> {
        self.rep(rid)
            .rows
            .iter()
            .map(|&p| self.entry_at(p))
            .collect()
    }

    /// Adds a row owned by this replica. The caller has checked with [`State::get_own`] that
    /// `(topic, owner, key)` is not tracked yet.
    pub(crate) fn join(&mut self, owner: OwnerId, topic: Arc<str>, key: Arc<str>, meta: Meta) {
        let n = self.bump();
        let p = self.insert_row((ME, n), topic, key, owner, meta);
        self.touch(p.topic);
    }

    /// The meta of the row `(topic, owner, key)` of any replica (down ones included).
    #[cfg(test)]
    pub(crate) fn get(&self, topic: &str, owner: OwnerId, key: &str) -> Option<&Meta> {
        let mut rows = self.rows_under(topic, key);
        rows.clone()
            .find(|r| r.owner == owner && r.rid == ME)
            .or_else(|| rows.find(|r| r.owner == owner))
            .map(|r| &r.meta)
    }

    /// The meta of this replica's row `(topic, owner, key)`: the uniqueness check of `track`.
    pub(crate) fn get_own(&self, topic: &str, owner: OwnerId, key: &str) -> Option<&Meta> {
        self.find_own(topic, owner, key).map(|p| &self.row(p).meta)
    }

    /// Removes this replica's row `(topic, owner, key)`. Rows of other replicas are refused
    /// (`None`), as is a missing row.
    pub(crate) fn leave(&mut self, topic: &str, owner: OwnerId, key: &str) -> Option<Entry> {
        let p = self.find_own(topic, owner, key)?;
        let n = self.row(p).n;
        let entry = self.remove_row_at(p);
        self.delta_remove(ME, n);
        self.bump();
        Some(entry)
    }

    /// Removes every own row of `owner`, in all topics.
    pub(crate) fn leave_owner(&mut self, owner: OwnerId) -> Vec<Entry> {
        let mut out = Vec::with_capacity(self.owner_chain(owner).count());
        // Each removal may move another row, so the chain is read again from its head.
        while let Some((p, row)) = self.owner_chain(owner).next() {
            let n = row.n;
            out.push(self.remove_row_at(p));
            self.delta_remove(ME, n);
            self.bump();
        }
        out
    }

    /// Replaces the meta of this replica's row `(topic, owner, key)` with a fresh dot, as one
    /// overwrite (the row is never missing). Returns the old and the new row, or `None` when
    /// there is no such own row.
    pub(crate) fn leave_join(
        &mut self,
        topic: &str,
        owner: OwnerId,
        key: &str,
        new_meta: Meta,
    ) -> Option<(Entry, Entry)> {
        let p = self.find_own(topic, owner, key)?;
        let old = self.row(p).n;
        self.delta_remove(ME, old);
        self.bump();
        let new = self.bump();
        // Own rows are not in the dot index: the new dot is just written in.
        let row = &mut self.topic_mut(p.topic).rows[p.index as usize];
        row.n = new;
        let old_meta = std::mem::replace(&mut row.meta, new_meta);
        self.touch(p.topic);
        let new_entry = self.entry_at(p);
        let old_entry = Entry {
            meta: old_meta,
            ..new_entry.clone()
        };
        Some((old_entry, new_entry))
    }

    /// Visible rows of `topic` (rows of down replicas hidden), as `(key, meta)`.
    pub(crate) fn list(&self, topic: &str) -> Vec<(Arc<str>, Meta)> {
        self.collect_topic(topic, true)
    }

    /// All rows of `topic`, including those of down replicas.
    #[cfg(test)]
    pub(crate) fn dirty_list(&self, topic: &str) -> Vec<(Arc<str>, Meta)> {
        self.collect_topic(topic, false)
    }

    fn collect_topic(&self, topic: &str, hide_down: bool) -> Vec<(Arc<str>, Meta)> {
        let Some(t) = self.find_topic(topic) else {
            return Vec::new();
        };
        let filter = hide_down && self.down > 0;
        self.topic(t)
            .rows
            .iter()
            .filter(|row| !filter || self.visible(row.rid))
            .map(|row| (Arc::clone(&row.key), row.meta.clone()))
            .collect()
    }

    /// Visible rows of `topic` as entries (owner and replica included).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn list_entries(&self, topic: &str) -> Vec<Entry> {
        let Some(t) = self.find_topic(topic) else {
            return Vec::new();
        };
        let topic = self.topic(t);
        topic
            .rows
            .iter()
            .filter(|row| self.visible(row.rid))
            .map(|row| Entry {
                topic: Arc::clone(&topic.name),
                key: Arc::clone(&row.key),
                owner: row.owner,
                meta: row.meta.clone(),
                replica: self.rep(row.rid).id.clone(),
            })
            .collect()
    }

    /// Visible rows under `(topic, key)`, as `(owner, meta)`.
    pub(crate) fn get_by_key(&self, topic: &str, key: &str) -> Vec<(OwnerId, Meta)> {
        self.rows_under(topic, key)
            .filter(|r| self.visible(r.rid))
            .map(|r| (r.owner, r.meta.clone()))
            .collect()
    }

    /// The number of keys and of rows of `topic` on live replicas: O(1) while no replica is
    /// down, a walk of the topic's rows otherwise.
    pub(crate) fn count(&self, topic: &str) -> (usize, usize) {
        match self.find_topic(topic) {
            Some(t) => self.count_at(t),
            None => (0, 0),
        }
    }

    /// The `n` topics with the most visible rows, largest first (ties by name), with their
    /// `(keys, rows)` counts. One pass over the topics; a topic whose row count cannot beat
    /// the smallest of the `n` kept so far is not counted.
    pub(crate) fn largest_topics(&self, n: usize) -> Vec<(Arc<str>, (usize, usize))> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        if n == 0 {
            return Vec::new();
        }
        // (visible rows, name reversed, keys): the least is the fewest rows, then the last
        // name (names are unique, so keys never decide), and is on top of the heap of
        // `Reverse`s.
        type Ranked<'a> = (usize, Reverse<&'a Arc<str>>, usize);
        // Never more than there are topics, whatever `n` is (`usize::MAX` means all of them).
        let n = n.min(self.topics.len());
        let mut kept: BinaryHeap<Reverse<Ranked<'_>>> = BinaryHeap::with_capacity(n + 1);
        for (t, topic) in self.topics.iter().enumerate() {
            let Some(topic) = topic else { continue };
            if kept.len() == n
                && let Some(Reverse((rows, Reverse(name), _))) = kept.peek()
                && (topic.rows.len(), Reverse(&topic.name)) <= (*rows, Reverse(*name))
            {
                // Its row count bounds its visible rows: it cannot make the cut.
                continue;
            }
            let (keys, rows) = self.count_at(t as Tid);
            if rows == 0 {
                continue;
            }
            kept.push(Reverse((rows, Reverse(&topic.name), keys)));
            if kept.len() > n {
                kept.pop();
            }
        }
        let mut out: Vec<_> = kept
            .into_iter()
            .map(|Reverse((rows, Reverse(name), keys))| (Arc::clone(name), (keys, rows)))
            .collect();
        out.sort_by(|a, b| b.1.1.cmp(&a.1.1).then_with(|| a.0.cmp(&b.0)));
        out
    }

    /// `(keys, rows)` of topic `t`, counting only visible rows.
    fn count_at(&self, t: Tid) -> (usize, usize) {
        let topic = self.topic(t);
        if self.down == 0 {
            return (topic.keys.len(), topic.rows.len());
        }
        topic.keys.iter().fold((0, 0), |(keys, metas), &head| {
            let chain = KeyChain {
                rows: &topic.rows,
                at: head,
            };
            let n = chain.filter(|r| self.visible(r.rid)).count();
            (keys + usize::from(n > 0), metas + n)
        })
    }

    /// The number of visible rows under `(topic, key)`.
    pub(crate) fn key_len(&self, topic: &str, key: &str) -> usize {
        self.rows_under(topic, key)
            .filter(|r| self.visible(r.rid))
            .count()
    }

    /// Number of visible rows of `topic`.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn topic_len(&self, topic: &str) -> usize {
        let Some(t) = self.find_topic(topic) else {
            return 0;
        };
        let rows = &self.topic(t).rows;
        if self.down == 0 {
            return rows.len();
        }
        rows.iter().filter(|r| self.visible(r.rid)).count()
    }

    /// Number of rows held, including those of down replicas.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether no row is held.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Topics holding at least one row (of any replica).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn topics(&self) -> Vec<Arc<str>> {
        self.topics
            .iter()
            .flatten()
            .map(|t| Arc::clone(&t.name))
            .collect()
    }

    /// Whether the pending delta covers any dot (there is something to broadcast).
    pub(crate) fn has_delta(&self) -> bool {
        self.own_counter() > self.fresh_from || !self.delta.is_empty()
    }

    /// A copy of the whole pending delta (it reads the touched topics' rows).
    pub(crate) fn delta(&self) -> Delta {
        let mut d = self.delta.clone();
        self.add_fresh(&mut d, self.own_counter());
        d
    }

    /// Adds to `d` what the pending delta leaves to the rows: the own counters newer than
    /// `fresh_from` up to `cut`, and the own rows still alive among them.
    fn add_fresh(&self, d: &mut Delta, cut: u64) {
        if cut == self.fresh_from {
            return;
        }
        let me = self.replica();
        let fresh = self.fresh_from + 1..=cut;
        let dots = d.dots_mut(me);
        dots.cloud.extend(fresh.clone());
        for &t in &self.touched {
            let Some(topic) = self.topics.get(t as usize).and_then(Option::as_ref) else {
                continue;
            };
            if !topic.touched {
                continue;
            }
            for (index, row) in topic.rows.iter().enumerate() {
                if row.rid == ME && fresh.contains(&row.n) {
                    let index = index as Idx;
                    dots.values
                        .insert(row.n, self.element_at(Pos { topic: t, index }));
                }
            }
        }
        d.end.insert(me.clone(), cut);
    }

    /// Takes the whole pending delta (see [`State::take_delta_part`]).
    #[cfg(test)]
    pub(crate) fn take_delta(&mut self) -> Delta {
        self.take_delta_part(u64::MAX)
    }

    /// Takes the oldest part of the pending delta: at most `max` own counters (and with them
    /// at most `max` rows), plus the pending removes of older rows and the observed removes
    /// of other replicas. What is left starts where the part ends. The state is compacted.
    ///
    /// A burst of tracks is so sent in deltas of bounded size, each only built when it is
    /// sent: every part scans the topics touched since the last whole take.
    pub(crate) fn take_delta_part(&mut self, max: u64) -> Delta {
        let now = self.own_counter();
        let cut = now.min(self.fresh_from.saturating_add(max.max(1)));
        let at = std::iter::once((self.replica().clone(), cut)).collect();
        let mut d = std::mem::replace(&mut self.delta, Delta::empty_at(at));
        self.add_fresh(&mut d, cut);
        self.fresh_from = cut;
        if cut == now {
            for &t in &self.touched {
                if let Some(topic) = self.topics.get_mut(t as usize).and_then(Option::as_mut) {
                    topic.touched = false;
                }
            }
            self.touched.clear();
            shrink_vec(&mut self.touched);
        }
        for rep in &mut self.reps {
            rep.compact();
        }
        d
    }

    /// The full context (down replicas included).
    #[cfg(test)]
    pub(crate) fn context(&self) -> Context {
        self.reps
            .iter()
            .filter_map(|r| r.ctx.map(|c| (r.id.clone(), c)))
            .collect()
    }

    /// The context advertised in heartbeats: the context minus replicas marked down.
    pub(crate) fn clocks(&self) -> Context {
        self.reps
            .iter()
            .filter(|r| r.status != Some(ReplicaStatus::Down))
            .filter_map(|r| r.ctx.map(|c| (r.id.clone(), c)))
            .collect()
    }

    /// Merges a remote delta. Deltas may arrive with gaps, duplicated or out of order: the dot
    /// clouds make any order safe, so (like Phoenix) no contiguity is required here.
    pub(crate) fn merge_delta(&mut self, delta: &Delta) -> Changes {
        self.merge_parts(&Context::new(), &delta.dots)
    }

    /// Merges a whole-state extract.
    pub(crate) fn merge_state(&mut self, extract: &Extract) -> Changes {
        self.merge_parts(&extract.context, &extract.dots)
    }

    /// Merges either kind of transfer.
    #[cfg(test)]
    pub(crate) fn merge(&mut self, transfer: &Transfer) -> Changes {
        match transfer {
            Transfer::Delta(d) => self.merge_delta(d),
            Transfer::State(e) => self.merge_state(e),
        }
    }

    fn merge_parts(
        &mut self,
        remote_ctx: &Context,
        dots: &BTreeMap<ReplicaRef, ReplicaDots>,
    ) -> Changes {
        let mut added: Vec<(Dot, &Element)> = Vec::new();
        let mut removed: Vec<Dot> = Vec::new();
        for (r, rd) in dots {
            let Some(rid) = self.known_rid(r).filter(|&rid| rid != ME) else {
                continue;
            };
            let rep = self.rep(rid);
            for (&n, el) in &rd.values {
                if !rep.seen(n) {
                    added.push(((rid, n), el));
                }
            }
            for &n in &rd.cloud {
                if !rd.values.contains_key(&n) && self.find_dot(rid, n).is_some() {
                    removed.push((rid, n));
                }
            }
        }
        for (r, c) in remote_ctx.iter() {
            let Some(rid) = self.known_rid(r).filter(|&rid| rid != ME) else {
                continue;
            };
            let rd = dots.get(r);
            for &p in self.rep(rid).rows.iter() {
                let n = self.row(p).n;
                let kept = rd.is_some_and(|d| d.values.contains_key(&n) || d.cloud.contains(&n));
                if n <= c && !kept {
                    removed.push((rid, n));
                }
            }
        }

        let mut changes = Changes::default();
        // Joins first, so that an update (old dot removed, new dot added under the same
        // topic/owner/key) never leaves the row missing.
        for ((rid, n), el) in added {
            let p = self.insert_row(
                (rid, n),
                Arc::clone(&el.topic),
                Arc::clone(&el.key),
                el.owner,
                el.meta.clone(),
            );
            self.rep_mut(rid).cloud.insert(n);
            if self.visible(rid) {
                changes.joins.push(self.entry_at(p));
            }
        }
        for dot in removed {
            if let Some(e) = self.remove_row(dot) {
                self.delta_remove(dot.0, dot.1);
                if self.visible(dot.0) {
                    changes.leaves.push(e);
                }
            }
        }
        for (r, rd) in dots {
            if let Some(rid) = self.known_rid(r).filter(|&rid| rid != ME) {
                let rep = self.rep_mut(rid);
                rep.cloud.extend(rd.cloud.iter().copied());
                rep.compact();
            }
        }
        for (r, c) in remote_ctx.iter() {
            if let Some(rid) = self.known_rid(r).filter(|&rid| rid != ME) {
                let rep = self.rep_mut(rid);
                rep.ctx = rep.ctx.map(|l| l.max(c));
                rep.compact();
            }
        }
        changes
    }

    /// The whole state for `requester`: context, clouds and rows restricted to the replicas in
    /// `requester_ctx`, without the requester's own rows.
    pub(crate) fn extract(&self, requester: &ReplicaRef, requester_ctx: &Context) -> Extract {
        let mut context = Context::new();
        let mut dots = BTreeMap::new();
        for (rid, rep) in self.reps.iter().enumerate() {
            let Some(c) = rep.ctx else { continue };
            if !requester_ctx.contains(&rep.id) {
                continue;
            }
            context.insert(rep.id.clone(), c);
            let mut rd = ReplicaDots {
                cloud: rep.cloud.clone(),
                values: IntMap::default(),
            };
            if rep.id != *requester {
                let rid = Rid::try_from(rid).expect("interned");
                let positions = self.positions_of(rid);
                rd.values.reserve(positions.len());
                for p in positions {
                    rd.values.insert(self.row(p).n, self.element_at(p));
                }
            }
            if !rd.is_empty() {
                dots.insert(rep.id.clone(), rd);
            }
        }
        Extract { context, dots }
    }

    /// Marks `r` up: it enters the context (at 0 if new) and its rows become visible. Returns
    /// them as joins (empty if it was already up).
    pub(crate) fn replica_up(&mut self, r: &ReplicaRef) -> Vec<Entry> {
        let rid = self.intern(r);
        if rid == ME {
            return Vec::new();
        }
        let rep = self.rep_mut(rid);
        let was = rep.status.replace(ReplicaStatus::Up);
        rep.ctx.get_or_insert(0);
        match was {
            Some(ReplicaStatus::Up) => Vec::new(),
            Some(ReplicaStatus::Down) => {
                self.down -= 1;
                self.rows_of(rid)
            }
            None => self.rows_of(rid),
        }
    }

    /// Marks `r` down: its rows stay but are hidden. Returns them as leaves (empty if it was
    /// already down).
    pub(crate) fn replica_down(&mut self, r: &ReplicaRef) -> Vec<Entry> {
        let rid = self.intern(r);
        if rid == ME {
            return Vec::new();
        }
        let was = self.rep_mut(rid).status.replace(ReplicaStatus::Down);
        if was == Some(ReplicaStatus::Down) {
            return Vec::new();
        }
        self.down += 1;
        self.rows_of(rid)
    }

    /// Forgets a replica for good: its rows, context entry, cloud, pending-delta dots and its
    /// slot, which a later replica reuses. Values from it are not adopted again unless it is
    /// brought up (as for any replica outside the context), and nothing of it stays in memory:
    /// a deploy that gives every node a new incarnation leaves no trace.
    pub(crate) fn remove_down_replica(&mut self, r: &ReplicaRef) {
        let Some(rid) = self.rid(r).filter(|&rid| rid != ME) else {
            return;
        };
        // Counters, not positions: each removal may move another row.
        let ns: Vec<u64> = self.rep(rid).rows.iter().map(|&p| self.row(p).n).collect();
        for n in ns {
            self.remove_row((rid, n));
        }
        if self.rep(rid).status == Some(ReplicaStatus::Down) {
            self.down -= 1;
        }
        self.delta.remove_replica(r);
        self.ids.remove(r);
        // A vacant slot: no context, no rows, no status; `is_live` is false for it.
        self.reps[rid as usize] = Rep::new(ReplicaRef {
            name: Arc::from(""),
            vsn: 0,
        });
        self.vacant.push(rid);
        Self::shrink_if_sparse(&mut self.ids);
        if self.reps.len() > 16 && self.vacant.len() > self.reps.len() / 2 {
            self.compact_reps();
        }
    }

    /// Drops vacant slots at the end of `reps` (rids are positions, so only the tail can go).
    fn compact_reps(&mut self) {
        while self.reps.len() > 1 && !self.is_live(self.reps.len() - 1) {
            self.reps.pop();
        }
        let len = self.reps.len();
        self.vacant.retain(|&rid| (rid as usize) < len);
        self.reps.shrink_to(len * 2);
        self.vacant.shrink_to(self.vacant.len() * 2);
    }

    /// What the state holds besides its rows, for tests that look for leaks.
    #[cfg(test)]
    pub(crate) fn footprint(&self) -> Footprint {
        Footprint {
            live_replicas: (0..self.reps.len())
                .filter(|&rid| self.is_live(rid))
                .count(),
            slots: self.reps.len(),
            down: self.down,
            row_capacity: self.reps.iter().map(|r| r.rows.capacity()).sum(),
            arena_capacity: self
                .topics
                .iter()
                .flatten()
                .map(|t| t.rows.capacity())
                .sum(),
            topic_capacity: self.topic_ids.capacity(),
            topic_slots: self.topics.capacity(),
            ids_capacity: self.ids.capacity(),
        }
    }

    /// The capacity of the own-rows-by-owner index.
    #[cfg(test)]
    pub(crate) fn owners_capacity(&self) -> usize {
        self.owners.capacity()
    }

    /// The status of `r`, if known.
    #[cfg(test)]
    pub(crate) fn replica_status(&self, r: &ReplicaRef) -> Option<ReplicaStatus> {
        self.rid(r).and_then(|rid| self.rep(rid).status)
    }

    /// Other replicas with a status (own replica excluded).
    #[cfg(test)]
    pub(crate) fn replicas(&self) -> Vec<(ReplicaRef, ReplicaStatus)> {
        self.reps
            .iter()
            .skip(1)
            .filter_map(|r| r.status.map(|s| (r.id.clone(), s)))
            .collect()
    }
}

#[cfg(test)]
#[path = "tracker_state_props.rs"]
mod tracker_state_props;

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod test_support {
    //! Helpers shared by the unit tests, the property tests and the fuzz targets.
    use super::*;

    /// Context entry, cloud and status of one replica.
    type RepView = (Option<u64>, BTreeSet<u64>, Option<ReplicaStatus>);

    /// A canonical, comparable view of everything a state holds.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) struct Canonical {
        reps: BTreeMap<ReplicaRef, RepView>,
        rows: BTreeSet<(ReplicaRef, u64, String, String, OwnerId, String)>,
        owners: BTreeMap<OwnerId, BTreeSet<u64>>,
        delta: Delta,
        len: usize,
        me: ReplicaRef,
    }

    impl Canonical {
        /// Drops the pending delta's record of observed removes (the cloud dots of other
        /// replicas), which depends on the order merges happened in (a remove that arrives
        /// before the add it removes is never "observed"). Own values and dots are kept.
        #[cfg_attr(not(test), allow(dead_code))]
        pub(crate) fn without_observed_removes(mut self) -> Self {
            let me = self.me.clone();
            self.delta.dots.retain(|r, _| *r == me);
            self
        }
    }

    impl State {
        pub(crate) fn canonical(&self) -> Canonical {
            let rows = self
                .topics
                .iter()
                .flatten()
                .flat_map(|topic| topic.rows.iter().map(move |row| (topic, row)))
                .map(|(topic, row)| {
                    (
                        self.rep(row.rid).id.clone(),
                        row.n,
                        topic.name.to_string(),
                        row.key.to_string(),
                        row.owner,
                        row.meta.phx_ref().to_string(),
                    )
                })
                .collect();
            Canonical {
                reps: self
                    .reps
                    .iter()
                    .enumerate()
                    .filter(|(rid, _)| self.is_live(*rid))
                    .map(|(_, r)| (r.id.clone(), (r.ctx, r.cloud.clone(), r.status)))
                    .collect(),
                rows,
                owners: self
                    .owners
                    .iter()
                    .map(|&head| {
                        let owner = self.row(head).owner;
                        (owner, self.owner_chain(owner).map(|(_, r)| r.n).collect())
                    })
                    .collect(),
                delta: self.delta(),
                len: self.len,
                me: self.replica().clone(),
            }
        }

        /// Visible rows of every topic as comparable tuples.
        pub(crate) fn visible_rows(&self) -> BTreeSet<(String, String, OwnerId, String)> {
            let mut out = BTreeSet::new();
            for t in self.topics() {
                for e in self.list_entries(&t) {
                    out.insert((
                        e.topic.to_string(),
                        e.key.to_string(),
                        e.owner,
                        e.meta.phx_ref().to_string(),
                    ));
                }
            }
            out
        }

        /// Checks the internal indexes agree with each other and with the rows: every row is
        /// on exactly one key chain (of its topic, sharing the chain's key string); a row of
        /// another replica is found by its dot, an own row is on exactly one owner chain.
        pub(crate) fn check_indexes(&self) {
            let mut len = 0;
            let mut live_topics = 0;
            let mut own = 0;
            for (t, topic) in self.topics.iter().enumerate() {
                let t = Tid::try_from(t).unwrap();
                let Some(topic) = topic else {
                    assert!(self.free_topics.contains(&t), "vacant topic {t} not free");
                    continue;
                };
                live_topics += 1;
                assert_eq!(self.find_topic(&topic.name), Some(t));
                assert!(!topic.rows.is_empty(), "empty topic {:?} kept", topic.name);
                let mut on_chain = vec![false; topic.rows.len()];
                for &head in topic.keys.iter() {
                    let key = &topic.rows[head as usize].key;
                    assert_eq!(Self::key_head(topic, &self.hasher, key), Some(head));
                    let mut at = head;
                    while let Some(row) = topic.rows.get(at as usize) {
                        assert!(!on_chain[at as usize], "row {at} on two key chains");
                        on_chain[at as usize] = true;
                        assert!(Arc::ptr_eq(&row.key, key), "key {key:?} not shared");
                        at = row.next_key;
                    }
                    assert_eq!(at, NIL);
                }
                assert!(
                    on_chain.iter().all(|&on| on),
                    "rows of {:?} off chains",
                    topic.name
                );
                for (i, row) in topic.rows.iter().enumerate() {
                    let p = Pos {
                        topic: t,
                        index: Idx::try_from(i).unwrap(),
                    };
                    let rep = self.rep(row.rid);
                    if let Some(c) = rep.ctx {
                        assert!(rep.seen(row.n), "row dot {} not seen (ctx {c})", row.n);
                    }
                    if row.rid == ME {
                        own += 1;
                        assert_eq!(
                            self.owner_chain(row.owner)
                                .find(|&(q, _)| q == p)
                                .map(|(q, _)| q),
                            Some(p),
                            "own row {p:?} off its owner's chain"
                        );
                    } else {
                        assert_eq!(self.find_dot(row.rid, row.n), Some(p), "dot of {p:?}");
                        assert_eq!(row.next_owner, Pos::NIL);
                    }
                }
                len += topic.rows.len();
            }
            assert_eq!(len, self.len);
            assert_eq!(self.topic_ids.len(), live_topics);
            for &t in &self.free_topics {
                assert!(self.topics.get(t as usize).is_none_or(Option::is_none));
            }
            // Dot indexes hold other replicas' rows, each once.
            assert!(self.rep(ME).rows.is_empty(), "own rows in the dot index");
            let indexed: usize = self.reps.iter().map(|r| r.rows.len()).sum();
            assert_eq!(indexed, len - own, "dot indexes");
            for (rid, rep) in self.reps.iter().enumerate() {
                for &p in rep.rows.iter() {
                    assert_eq!(self.row(p).rid as usize, rid, "{p:?} indexed under {rid}");
                }
            }
            // Owner chains hold own rows, each once.
            let mut chained = 0;
            for &head in self.owners.iter() {
                let owner = self.row(head).owner;
                assert_eq!(self.owner_chain(owner).next().map(|(p, _)| p), Some(head));
                for (_, row) in self.owner_chain(owner) {
                    assert_eq!((row.rid, row.owner), (ME, owner));
                    chained += 1;
                }
            }
            assert_eq!(chained, own, "owner chains");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PhxRef;
    use serde_json::json;

    fn rr(name: &str) -> ReplicaRef {
        ReplicaRef::new(name, 1)
    }

    fn owner(n: u64) -> OwnerId {
        OwnerId::from_parts(7, n)
    }

    fn meta(v: &str) -> Meta {
        Meta::new(json!({ "v": v }), PhxRef::generate(), None)
    }

    fn keys(list: &[(Arc<str>, Meta)]) -> Vec<String> {
        let mut k: Vec<String> = list.iter().map(|(k, _)| k.to_string()).collect();
        k.sort();
        k
    }

    fn join(s: &mut State, o: u64, topic: &str, key: &str) -> Meta {
        let m = meta(key);
        s.join(owner(o), topic.into(), key.into(), m.clone());
        m
    }

    /// `to` merges the whole state of `from` (as it would after a transfer).
    fn sync(to: &mut State, from: &State) -> Changes {
        let ex = from.extract(to.replica(), &to.context());
        to.merge_state(&ex)
    }

    fn ctx(pairs: &[(&str, u64)]) -> Context {
        pairs.iter().map(|(n, c)| (rr(n), *c)).collect()
    }

    /// Three replicas that all know each other.
    fn trio() -> (State, State, State) {
        let (mut a, mut b, mut c) = (
            State::new(rr("a")),
            State::new(rr("b")),
            State::new(rr("c")),
        );
        for s in [&mut a, &mut b, &mut c] {
            for n in ["a", "b", "c"] {
                s.replica_up(&rr(n));
            }
        }
        (a, b, c)
    }

    #[test]
    fn fresh_state_extracts_empty() {
        let a = State::new(rr("a"));
        let ex = a.extract(&rr("b"), &ctx(&[("a", 0), ("b", 0)]));
        assert!(ex.is_empty());
        assert_eq!(ex.context(), &ctx(&[("a", 0)]));
        assert!(!a.has_delta());
        assert!(a.is_empty());
    }

    #[test]
    fn join_visible_leave_removes() {
        let mut a = State::new(rr("a"));
        let m = join(&mut a, 1, "t", "alice");
        assert_eq!(a.list("t"), vec![(Arc::from("alice"), m.clone())]);
        assert_eq!(a.topic_len("t"), 1);
        assert_eq!(a.topics(), vec![Arc::from("t")]);
        let e = a.leave("t", owner(1), "alice").expect("own row");
        assert_eq!(e.meta, m);
        assert!(a.list("t").is_empty());
        assert!(a.topics().is_empty());
        assert!(a.leave("t", owner(1), "alice").is_none());
        a.check_indexes();
    }

    #[test]
    fn leave_of_another_replicas_row_is_refused() {
        let (mut a, mut b, _) = trio();
        join(&mut a, 1, "t", "alice");
        sync(&mut b, &a);
        assert!(b.get("t", owner(1), "alice").is_some());
        assert!(b.get_own("t", owner(1), "alice").is_none());
        assert!(b.leave("t", owner(1), "alice").is_none());
        assert!(b.leave_join("t", owner(1), "alice", meta("x")).is_none());
        assert!(b.leave_owner(owner(1)).is_empty());
        assert_eq!(b.list("t").len(), 1);
    }

    #[test]
    fn remote_join_emitted_once_and_idempotent() {
        let (mut a, mut b, _) = trio();
        join(&mut a, 1, "t", "alice");
        join(&mut a, 2, "t", "bob");
        let ch = sync(&mut b, &a);
        assert_eq!(ch.joins.len(), 2);
        assert!(ch.leaves.is_empty());
        let before = b.canonical();
        let ch = sync(&mut b, &a);
        assert!(ch.is_empty(), "{ch:?}");
        assert_eq!(b.canonical(), before);
        // the same through a delta
        let d = a.take_delta();
        let ch = b.merge_delta(&d);
        assert!(ch.is_empty(), "{ch:?}");
        assert_eq!(b.canonical(), before);
        b.check_indexes();
    }

    #[test]
    fn remote_leave_observed_once() {
        let (mut a, mut b, _) = trio();
        join(&mut a, 1, "t", "alice");
        join(&mut a, 2, "t", "bob");
        sync(&mut b, &a);
        let left = a.leave("t", owner(1), "alice").unwrap();
        let ch = sync(&mut b, &a);
        assert!(ch.joins.is_empty());
        assert_eq!(ch.leaves, vec![left]);
        assert_eq!(keys(&b.list("t")), vec!["bob"]);
        assert!(sync(&mut b, &a).is_empty());
        b.check_indexes();
    }

    #[test]
    fn mutual_merges_converge() {
        let (mut a, mut b, _) = trio();
        join(&mut a, 1, "t", "alice");
        join(&mut b, 2, "t", "bob");
        join(&mut b, 3, "u", "carol");
        sync(&mut b, &a);
        sync(&mut a, &b);
        assert_eq!(a.visible_rows(), b.visible_rows());
        assert_eq!(keys(&a.list("t")), vec!["alice", "bob"]);
        assert_eq!(a.context(), b.context());
    }

    #[test]
    fn update_merges_as_one_join_and_one_leave() {
        let (mut a, mut b, _) = trio();
        join(&mut a, 1, "t", "alice");
        sync(&mut b, &a);
        let len = b.len();
        let new = meta("away");
        let (old_e, new_e) = a.leave_join("t", owner(1), "alice", new.clone()).unwrap();
        assert_eq!(a.list("t"), vec![(Arc::from("alice"), new.clone())]);
        let ch = b.merge_delta(&a.take_delta());
        assert_eq!(ch.joins, vec![new_e]);
        assert_eq!(ch.leaves, vec![old_e]);
        assert_eq!(b.list("t"), vec![(Arc::from("alice"), new)]);
        assert_eq!(b.len(), len);
        a.check_indexes();
        b.check_indexes();
    }

    #[test]
    fn netsplit_down_hides_and_up_reemits() {
        let (mut a, mut b, _) = trio();
        join(&mut a, 1, "t", "alice");
        join(&mut b, 2, "t", "bob");
        sync(&mut b, &a);
        let leaves = b.replica_down(&rr("a"));
        assert_eq!(leaves.len(), 1);
        assert_eq!(leaves[0].key.as_ref(), "alice");
        assert_eq!(keys(&b.list("t")), vec!["bob"]);
        assert_eq!(keys(&b.dirty_list("t")), vec!["alice", "bob"]);
        assert_eq!(b.topic_len("t"), 1);
        assert!(b.get_by_key("t", "alice").is_empty());
        assert!(!b.clocks().contains(&rr("a")));
        assert!(sync(&mut b, &a).is_empty());
        let joins = b.replica_up(&rr("a"));
        assert_eq!(joins.len(), 1);
        assert_eq!(keys(&b.list("t")), vec!["alice", "bob"]);
        assert!(b.replica_up(&rr("a")).is_empty(), "already up");
    }

    #[test]
    fn joins_and_removes_observed_via_third_replica() {
        let (mut a, mut b, mut c) = trio();
        // a and c never talk directly
        join(&mut a, 1, "t", "alice");
        sync(&mut b, &a);
        let ch = sync(&mut c, &b);
        assert_eq!(ch.joins.len(), 1);
        assert_eq!(keys(&c.list("t")), vec!["alice"]);
        a.leave("t", owner(1), "alice");
        sync(&mut b, &a);
        let ch = sync(&mut c, &b);
        assert_eq!(ch.leaves.len(), 1);
        assert!(c.list("t").is_empty());
        // also through relayed deltas: b's pending delta records the observed remove
        join(&mut a, 1, "t", "alice");
        let d = a.take_delta();
        b.merge_delta(&d);
        c.merge_delta(&d);
        a.leave("t", owner(1), "alice");
        b.merge_delta(&a.take_delta());
        assert!(b.has_delta());
        let ch = c.merge_delta(&b.take_delta());
        assert_eq!(ch.leaves.len(), 1);
        assert!(c.list("t").is_empty());
    }

    #[test]
    fn own_rows_get_and_first_dot() {
        let mut a = State::new(rr("a"));
        let m = join(&mut a, 1, "t", "alice");
        assert_eq!(a.get("t", owner(1), "alice"), Some(&m));
        assert_eq!(a.get_own("t", owner(1), "alice"), Some(&m));
        assert_eq!(a.delta().end(), &ctx(&[("a", 1)]));
        assert!(a.delta().dots()[&rr("a")].values.contains_key(&1));
        assert_eq!(a.get("t", owner(2), "alice"), None);
        assert_eq!(a.get("t", owner(1), "bob"), None);
        assert_eq!(a.get("u", owner(1), "alice"), None);
        assert!(a.list("u").is_empty());
        let left = a.leave_owner(owner(1));
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].replica, rr("a"));
    }

    #[test]
    fn the_pending_delta_reads_fresh_own_rows_from_their_topics() {
        let mut a = State::new(rr("a"));
        join(&mut a, 1, "t", "alice"); // 1
        join(&mut a, 2, "gone", "bob"); // 2
        a.take_delta();
        // Since the take: an update of a row from before it (3: remove of 1, 4: new dot), a
        // leave of one from before it (5: remove of 2, emptying its topic), a row in a
        // topic that takes the emptied topic's slot (6), and a row tracked and left (7, 8).
        let new = meta("away");
        a.leave_join("t", owner(1), "alice", new.clone()).unwrap();
        a.leave("gone", owner(2), "bob").unwrap();
        join(&mut a, 3, "reused", "carol");
        join(&mut a, 4, "t", "dave");
        a.leave("t", owner(4), "dave").unwrap();
        assert!(a.has_delta());
        let d = a.delta();
        assert_eq!(d.start(), &ctx(&[("a", 2)]));
        assert_eq!(d.end(), &ctx(&[("a", 8)]));
        let dots = &d.dots()[&rr("a")];
        assert_eq!(dots.cloud, (1..=8).collect::<BTreeSet<u64>>());
        let mut values: Vec<(u64, String, String, Meta)> = dots
            .values
            .iter()
            .map(|(&n, e)| (n, e.topic.to_string(), e.key.to_string(), e.meta.clone()))
            .collect();
        values.sort_by_key(|v| v.0);
        assert_eq!(values.len(), 2);
        assert_eq!(
            (values[0].0, &*values[0].1, &*values[0].2),
            (4, "t", "alice")
        );
        assert_eq!(values[0].3, new);
        assert_eq!(
            (values[1].0, &*values[1].1, &*values[1].2),
            (6, "reused", "carol")
        );
        // Taking it gives the same, and leaves nothing pending.
        assert_eq!(a.take_delta(), d);
        assert!(!a.has_delta());
        assert_eq!(a.delta(), Delta::empty_at(ctx(&[("a", 8)])));
        // A peer that merges it lists what a lists.
        let mut b = State::new(rr("b"));
        b.replica_up(&rr("a"));
        b.merge_delta(&d);
        assert_eq!(keys(&b.list("t")), vec!["alice"]);
        assert_eq!(keys(&b.list("reused")), vec!["carol"]);
        assert!(b.list("gone").is_empty());
    }

    #[test]
    fn a_pending_delta_is_taken_in_contiguous_parts_of_bounded_size() {
        let mut a = State::new(rr("a"));
        join(&mut a, 100, "t", "old");
        a.take_delta();
        // 1 is tracked before the last take; then its remove (2), and 23 rows (3..=25).
        a.leave("t", owner(100), "old").unwrap();
        for i in 0..23 {
            join(&mut a, i, &format!("room:{}", i % 3), &format!("user{i}"));
        }
        let mut parts = Vec::new();
        while a.has_delta() {
            parts.push(a.take_delta_part(10));
        }
        assert_eq!(parts.len(), 3);
        let ends: Vec<_> = parts.iter().map(|d| d.end().get(&rr("a"))).collect();
        assert_eq!(ends, vec![Some(11), Some(21), Some(25)]);
        for (i, part) in parts.iter().enumerate() {
            let dots = &part.dots()[&rr("a")];
            assert!(
                dots.values.len() <= 10,
                "part {i}: {} rows",
                dots.values.len()
            );
            if i > 0 {
                assert_eq!(part.start(), parts[i - 1].end(), "contiguous");
            }
        }
        // The old row's remove goes with the first part; the parts cover every counter once.
        let covered: Vec<u64> = parts
            .iter()
            .flat_map(|d| d.dots()[&rr("a")].cloud.iter().copied())
            .collect();
        assert_eq!(covered, (1..=25).collect::<Vec<_>>());
        // Merged as one delta, or the parts in any order, a peer lists all of a's rows.
        let whole = parts
            .iter()
            .skip(1)
            .try_fold(parts[0].clone(), |acc, d| merge_deltas(&acc, d))
            .unwrap();
        for order in [vec![2, 0, 1], vec![0, 1, 2]] {
            let mut b = State::new(rr("b"));
            b.replica_up(&rr("a"));
            let mut c = b.clone();
            c.merge_delta(&whole);
            for i in order {
                b.merge_delta(&parts[i]);
            }
            for t in ["t", "room:0", "room:1", "room:2"] {
                assert_eq!(keys(&b.list(t)), keys(&a.list(t)), "{t}");
                assert_eq!(keys(&c.list(t)), keys(&a.list(t)), "{t}");
            }
        }
    }

    #[test]
    fn leave_owner_removes_all_topics() {
        let mut a = State::new(rr("a"));
        join(&mut a, 1, "t", "alice");
        join(&mut a, 1, "u", "alice");
        join(&mut a, 1, "u", "alias");
        join(&mut a, 2, "t", "bob");
        let mut left: Vec<String> = a
            .leave_owner(owner(1))
            .into_iter()
            .map(|e| format!("{}/{}", e.topic, e.key))
            .collect();
        left.sort();
        assert_eq!(left, vec!["t/alice", "u/alias", "u/alice"]);
        assert_eq!(keys(&a.list("t")), vec!["bob"]);
        assert!(a.list("u").is_empty());
        assert!(a.leave_owner(owner(1)).is_empty());
        a.check_indexes();
    }

    #[test]
    fn get_by_key_returns_all_owners_under_key() {
        let (mut a, mut b, _) = trio();
        let m1 = join(&mut a, 1, "t", "alice");
        let m2 = join(&mut a, 2, "t", "alice");
        let m3 = join(&mut b, 3, "t", "alice");
        join(&mut a, 4, "t", "bob");
        join(&mut a, 5, "u", "alice");
        sync(&mut b, &a);
        let mut got = b.get_by_key("t", "alice");
        got.sort_by_key(|(o, _)| *o);
        assert_eq!(got, vec![(owner(1), m1), (owner(2), m2), (owner(3), m3)]);
        assert!(b.get_by_key("t", "nobody").is_empty());
        assert!(b.get_by_key("v", "alice").is_empty());
    }

    #[test]
    fn mutual_replica_up_contexts_and_down_filtering() {
        let (mut a, mut b, mut c) = trio();
        for s in [&a, &b, &c] {
            assert_eq!(s.context(), ctx(&[("a", 0), ("b", 0), ("c", 0)]));
        }
        join(&mut a, 1, "t", "alice");
        join(&mut b, 2, "t", "bob");
        join(&mut c, 3, "t", "carol");
        sync(&mut c, &a);
        sync(&mut c, &b);
        assert_eq!(keys(&c.list("t")), vec!["alice", "bob", "carol"]);
        c.replica_down(&rr("a"));
        assert_eq!(keys(&c.list("t")), vec!["bob", "carol"]);
        c.replica_down(&rr("b"));
        assert_eq!(keys(&c.list("t")), vec!["carol"]);
        assert_eq!(c.replica_status(&rr("b")), Some(ReplicaStatus::Down));
        assert_eq!(c.clocks(), ctx(&[("c", 1)]));
        assert_eq!(c.replicas().len(), 2);
    }

    #[test]
    fn remove_down_replica_purges_and_up_does_not_resurrect() {
        let (mut a, mut b, _) = trio();
        join(&mut a, 1, "t", "alice");
        join(&mut b, 2, "t", "bob");
        sync(&mut b, &a);
        a.leave("t", owner(1), "alice");
        b.merge_delta(&a.take_delta());
        join(&mut a, 1, "t", "alice2");
        sync(&mut b, &a);
        assert!(b.has_delta(), "observed remove recorded");
        b.replica_down(&rr("a"));
        b.remove_down_replica(&rr("a"));
        assert_eq!(keys(&b.dirty_list("t")), vec!["bob"]);
        assert!(!b.context().contains(&rr("a")));
        assert!(!b.delta().dots().contains_key(&rr("a")));
        // values of a forgotten replica are never adopted
        assert!(sync(&mut b, &a).is_empty());
        assert!(b.replica_up(&rr("a")).is_empty());
        assert_eq!(keys(&b.list("t")), vec!["bob"]);
        b.check_indexes();
    }

    #[test]
    fn basic_deltas_clocks() {
        let (mut a, mut b, _) = trio();
        join(&mut a, 1, "t", "alice");
        join(&mut b, 2, "t", "bob");
        let ch = b.merge_delta(&a.take_delta());
        assert_eq!(ch.joins.len(), 1);
        assert_eq!(b.clocks(), ctx(&[("a", 1), ("b", 1), ("c", 0)]));
        a.leave("t", owner(1), "alice");
        assert_eq!(a.clocks().get(&rr("a")), Some(2));
        let ch = b.merge_delta(&a.take_delta());
        assert_eq!(ch.leaves.len(), 1);
        assert_eq!(b.clocks().get(&rr("a")), Some(2));
        join(&mut a, 1, "t", "alice");
        assert_eq!(a.clocks().get(&rr("a")), Some(3));
        let ch = b.merge_delta(&a.take_delta());
        assert_eq!(ch.joins.len(), 1);
        assert_eq!(b.clocks().get(&rr("a")), Some(3));
        b.take_delta();
        assert!(b.reps.iter().all(|r| r.cloud.is_empty()));
        assert!(a.reps.iter().all(|r| r.cloud.is_empty()));
    }

    #[test]
    fn gaps_in_deltas_stay_in_clouds_until_filled() {
        let (mut a, mut b, _) = trio();
        join(&mut a, 1, "t", "alice");
        let d1 = a.take_delta();
        join(&mut a, 2, "t", "bob");
        let d2 = a.take_delta();
        b.merge_delta(&d2);
        assert_eq!(b.context().get(&rr("a")), Some(0));
        assert_eq!(keys(&b.list("t")), vec!["bob"]);
        b.merge_delta(&d1);
        assert_eq!(b.context().get(&rr("a")), Some(2));
        assert_eq!(keys(&b.list("t")), vec!["alice", "bob"]);
    }

    #[test]
    fn non_contiguous_deltas_do_not_merge() {
        let mut a = State::new(rr("a"));
        join(&mut a, 1, "t", "alice");
        let d1 = a.take_delta();
        join(&mut a, 2, "t", "bob");
        let d2 = a.take_delta();
        join(&mut a, 3, "t", "carol");
        let d3 = a.take_delta();
        assert_eq!(merge_deltas(&d1, &d3), Err(NotContiguous));
        assert_eq!(merge_deltas(&d3, &d1), Err(NotContiguous));
        let d12 = merge_deltas(&d1, &d2).unwrap();
        assert_eq!(d12.start(), &ctx(&[("a", 0)]));
        assert_eq!(d12.end(), &ctx(&[("a", 2)]));
        assert!(merge_deltas(&d12, &d3).is_ok());
        assert!(merge_deltas(&d3, &d12).is_ok());
    }

    #[test]
    fn extract_context_only_known_replicas() {
        let (mut a, mut b, mut c) = trio();
        join(&mut a, 1, "t", "alice");
        join(&mut b, 2, "t", "bob");
        join(&mut c, 3, "t", "carol");
        sync(&mut a, &b);
        sync(&mut a, &c);
        let mut d = State::new(rr("d"));
        d.replica_up(&rr("a"));
        d.replica_up(&rr("b"));
        let ex = a.extract(d.replica(), &d.context());
        assert_eq!(ex.context(), &ctx(&[("a", 1), ("b", 1)]));
        assert_eq!(ex.len(), 2);
        assert!(!ex.dots().contains_key(&rr("c")));
        let ch = d.merge_state(&ex);
        assert_eq!(ch.joins.len(), 2);
        assert_eq!(keys(&d.list("t")), vec!["alice", "bob"]);
    }

    #[test]
    fn merging_deltas_unions_independent_replicas() {
        let (mut a, mut b, _) = trio();
        join(&mut a, 1, "t", "alice");
        join(&mut b, 2, "t", "bob");
        let (da, db) = (a.take_delta(), b.take_delta());
        let m = merge_deltas(&da, &db).unwrap();
        assert_eq!(m.size(), 4);
        assert_eq!(m.dots()[&rr("a")].cloud, BTreeSet::from([1]));
        assert_eq!(m.dots()[&rr("b")].cloud, BTreeSet::from([1]));
        assert_eq!(m.end(), &ctx(&[("a", 1), ("b", 1)]));
        assert_eq!(merge_deltas(&db, &da).unwrap(), m);
        let mut c = State::new(rr("c"));
        c.replica_up(&rr("a"));
        c.replica_up(&rr("b"));
        assert_eq!(c.merge_delta(&m).joins.len(), 2);
    }

    #[test]
    fn merging_deltas_with_removes_add_wins() {
        let (mut a, mut b, mut c) = trio();
        join(&mut a, 1, "t", "alice");
        let d1 = a.take_delta();
        b.merge_delta(&d1);
        // a removes its row while b concurrently adds one under the same key
        a.leave("t", owner(1), "alice");
        let d2 = a.take_delta();
        join(&mut b, 2, "t", "alice");
        let db = b.take_delta();
        let m = merge_deltas(&merge_deltas(&d1, &d2).unwrap(), &db).unwrap();
        // observed remove: value gone, dot kept as a tombstone
        assert!(m.dots()[&rr("a")].values.is_empty());
        assert_eq!(m.dots()[&rr("a")].cloud, BTreeSet::from([1, 2]));
        assert_eq!(m.dots()[&rr("b")].values.len(), 1);
        // duplicate merge is a no-op
        assert_eq!(merge_deltas(&m, &d2).unwrap(), m);
        assert_eq!(merge_deltas(&m, &m).unwrap(), m);
        // the concurrent add survives the remove
        c.merge_delta(&m);
        let got = c.get_by_key("t", "alice");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, owner(2));
        let before = c.canonical();
        assert!(c.merge_delta(&m).is_empty());
        assert_eq!(c.canonical(), before);
        b.merge_delta(&d2);
        assert_eq!(b.visible_rows(), c.visible_rows());
    }

    #[test]
    fn unknown_replicas_values_are_ignored_until_up() {
        let mut a = State::new(rr("a"));
        let mut b = State::new(rr("b"));
        join(&mut a, 1, "t", "alice");
        let d = a.take_delta();
        assert!(b.merge_delta(&d).is_empty());
        assert!(b.list("t").is_empty());
        b.replica_up(&rr("a"));
        assert_eq!(b.merge_delta(&d).joins.len(), 1);
    }

    #[test]
    fn the_largest_topics_count_visible_rows_only() {
        let (mut a, mut b, _) = trio();
        // b's own: "big" 3 rows (two keys), "mid" 2, "tie" 2; a's: "aonly" 4.
        join(&mut b, 1, "big", "bob");
        join(&mut b, 2, "big", "bob");
        join(&mut b, 3, "big", "bea");
        join(&mut b, 4, "mid", "bob");
        join(&mut b, 5, "mid", "ben");
        join(&mut b, 6, "tie", "bob");
        join(&mut b, 7, "tie", "ben");
        for (o, key) in [(1, "al"), (2, "amy"), (3, "ann"), (4, "ava")] {
            join(&mut a, o, "aonly", key);
        }
        sync(&mut b, &a);
        let names = |v: Vec<(Arc<str>, (usize, usize))>| -> Vec<(String, usize, usize)> {
            v.into_iter()
                .map(|(t, (k, m))| (t.to_string(), k, m))
                .collect()
        };
        assert_eq!(
            names(b.largest_topics(3)),
            [
                ("aonly".to_owned(), 4, 4),
                ("big".to_owned(), 2, 3),
                ("mid".to_owned(), 2, 2),
            ],
            "largest first, ties by name"
        );
        assert!(b.largest_topics(0).is_empty());
        assert_eq!(b.largest_topics(10).len(), 4);
        assert_eq!(
            b.largest_topics(usize::MAX).len(),
            4,
            "all, without a huge allocation"
        );
        // a's rows are not listed while a is down.
        b.replica_down(&rr("a"));
        assert_eq!(
            names(b.largest_topics(2)),
            [("big".to_owned(), 2, 3), ("mid".to_owned(), 2, 2)]
        );
    }

    #[test]
    fn the_largest_topics_are_those_a_full_sort_gives() {
        let mut s = State::new(rr("a"));
        let mut x: u64 = 7;
        let mut o = 0;
        let mut names = Vec::new();
        for t in 0..60 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let topic = format!("t{t}");
            for _ in 0..(x >> 60) {
                o += 1;
                join(&mut s, o, &topic, &format!("k{o}"));
            }
            names.push(topic);
        }
        let mut all: Vec<(String, usize)> = names
            .iter()
            .map(|t| (t.clone(), s.count(t).1))
            .filter(|(_, rows)| *rows > 0)
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        for n in [1, 3, 10, 59, 100] {
            let got: Vec<(String, usize)> = s
                .largest_topics(n)
                .into_iter()
                .map(|(t, (_, rows))| (t.to_string(), rows))
                .collect();
            assert_eq!(got, all[..n.min(all.len())], "n = {n}");
        }
    }

    #[test]
    fn own_rows_never_lost_through_merge() {
        let (mut a, mut b, _) = trio();
        join(&mut a, 1, "t", "alice");
        sync(&mut b, &a);
        // b's extract for a excludes a's rows but its context covers them
        let ex = b.extract(a.replica(), &a.context());
        assert!(ex.is_empty());
        assert!(a.merge_state(&ex).is_empty());
        assert_eq!(keys(&a.list("t")), vec!["alice"]);
    }

    #[test]
    fn wire_forms_round_trip_through_json() {
        let (mut a, mut b, _) = trio();
        join(&mut a, 1, "t", "alice");
        join(&mut a, 2, "t", "bob");
        a.leave("t", owner(2), "bob");
        let d = a.take_delta();
        let json = serde_json::to_string(&Transfer::Delta(d.clone())).unwrap();
        let back: Transfer = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Transfer::Delta(d));
        let ex = a.extract(b.replica(), &b.context());
        let json = serde_json::to_string(&Transfer::State(ex.clone())).unwrap();
        let back: Transfer = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Transfer::State(ex));
        assert_eq!(b.merge(&back).joins.len(), 1);
    }

    #[test]
    fn state_is_send_sync_and_rows_are_small() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<State>();
        send_sync::<Transfer>();
        // per presence: one row in the arena, and a row position in a few tables
        assert!(size_of::<Row>() <= 64, "{}", size_of::<Row>());
    }

    #[test]
    fn large_topic_lists_quickly() {
        let mut a = State::new(rr("a"));
        let topic: Arc<str> = "big".into();
        let m = meta("x");
        let keys: Vec<Arc<str>> = (0..100_000u64).map(|i| i.to_string().into()).collect();
        let t = std::time::Instant::now();
        for (i, key) in keys.iter().enumerate() {
            a.join(
                owner(i as u64),
                Arc::clone(&topic),
                Arc::clone(key),
                m.clone(),
            );
        }
        let joins = t.elapsed();
        let t = std::time::Instant::now();
        let d = a.take_delta();
        let wire = serde_json::to_vec(&d).unwrap();
        let ser = t.elapsed();
        eprintln!(
            "100k joins took {joins:?}; delta of {} bytes serialized in {ser:?}",
            wire.len()
        );
        let mut took = std::time::Duration::MAX;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            let l = a.list("big");
            took = took.min(t.elapsed());
            assert_eq!(l.len(), 100_000);
        }
        assert_eq!(a.topic_len("big"), 100_000);
        eprintln!("list of 100k rows took {took:?}");
        // the topic string is interned once: the delta's 100k elements share it
        assert!(Arc::strong_count(&topic) > 100_000);
    }
}
