//! Property tests of the replication protocol: several shards over a simulated network that
//! drops, duplicates, delays and reorders messages, with partitions, crashes and restarts.
//!
//! Each case drives real [`ShardCore`]s (the same code the tokio driver runs) with simulated
//! milliseconds, heals everything, lets the cluster settle, then checks every live replica
//! against a model of the presences that should exist.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::json;

use super::clock::ReplicaRef;
use super::message::TrackerMsg;
use super::shard_core::{Outgoing, ShardCore, Timing};
use crate::{OwnerId, PhxRef};

const PERIOD: u64 = 100;
const TOPICS: [&str; 3] = ["room:a", "room:b", "room:c"];
const KEYS: [&str; 3] = ["k0", "k1", "k2"];

#[derive(Debug, Clone)]
enum Op {
    Track {
        node: usize,
        owner: u8,
        topic: usize,
        key: usize,
        meta: u8,
    },
    Update {
        node: usize,
        owner: u8,
        topic: usize,
        key: usize,
        meta: u8,
    },
    Untrack {
        node: usize,
        owner: u8,
        topic: usize,
        key: usize,
    },
    OwnerExit {
        node: usize,
        owner: u8,
    },
    Partition {
        a: usize,
        b: usize,
    },
    Heal,
    Faults {
        drop: u8,
        dup: u8,
        jitter: u8,
    },
    Advance {
        ticks: u8,
    },
    Crash {
        node: usize,
    },
    /// A graceful stop (SIGTERM): the node announces its permdown, then exits.
    Leave {
        node: usize,
    },
    /// A stopped node starts again, as a new incarnation of its name or under a new name.
    Restart {
        node: usize,
        rename: bool,
    },
}

fn op(nodes: usize) -> impl Strategy<Value = Op> {
    let n = 0..nodes;
    prop_oneof![
        6 => (n.clone(), 0..4u8, 0..3usize, 0..3usize, any::<u8>())
            .prop_map(|(node, owner, topic, key, meta)| Op::Track { node, owner, topic, key, meta }),
        3 => (n.clone(), 0..4u8, 0..3usize, 0..3usize, any::<u8>())
            .prop_map(|(node, owner, topic, key, meta)| Op::Update { node, owner, topic, key, meta }),
        2 => (n.clone(), 0..4u8, 0..3usize, 0..3usize)
            .prop_map(|(node, owner, topic, key)| Op::Untrack { node, owner, topic, key }),
        1 => (n.clone(), 0..4u8).prop_map(|(node, owner)| Op::OwnerExit { node, owner }),
        1 => (n.clone(), n.clone()).prop_map(|(a, b)| Op::Partition { a, b }),
        1 => Just(Op::Heal),
        1 => (0..40u8, 0..30u8, 0..4u8).prop_map(|(drop, dup, jitter)| Op::Faults { drop, dup, jitter }),
        4 => (1..12u8).prop_map(|ticks| Op::Advance { ticks }),
        1 => n.clone().prop_map(|node| Op::Crash { node }),
        1 => n.clone().prop_map(|node| Op::Leave { node }),
        1 => (n, any::<bool>()).prop_map(|(node, rename)| Op::Restart { node, rename }),
    ]
}

/// A presence the model expects: (topic, key, phx_ref).
type Expected = BTreeSet<(String, String, PhxRef)>;

struct Node {
    name: Arc<str>,
    core: Option<ShardCore>,
    incarnation: u64,
    /// What this incarnation's owners track: (owner, topic, key) -> current ref.
    live: BTreeMap<(u8, usize, usize), PhxRef>,
}

struct Sim {
    nodes: Vec<Node>,
    now: u64,
    seq: u64,
    queue: Vec<(u64, u64, usize, TrackerMsg)>,
    cut: HashSet<(usize, usize)>,
    drop: u8,
    dup: u8,
    jitter: u8,
    rng: u64,
    /// Every incarnation that ever ran, to look for ghosts.
    incarnations: Vec<ReplicaRef>,
}

impl Sim {
    fn new(n: usize, seed: u64) -> Self {
        let mut sim = Sim {
            nodes: Vec::new(),
            now: 0,
            seq: 0,
            queue: Vec::new(),
            cut: HashSet::new(),
            drop: 0,
            dup: 0,
            jitter: 0,
            rng: seed | 1,
            incarnations: Vec::new(),
        };
        for i in 0..n {
            let name: Arc<str> = Arc::from(format!("n{i}"));
            sim.nodes.push(Node {
                name,
                core: None,
                incarnation: 0,
                live: BTreeMap::new(),
            });
            sim.start(i);
        }
        sim
    }

    fn rand(&mut self, below: u64) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        if below == 0 { 0 } else { x % below }
    }

    fn start(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.incarnation += 1;
        let r = ReplicaRef {
            name: node.name.clone(),
            vsn: node.incarnation,
        };
        self.incarnations.push(r.clone());
        node.core = Some(ShardCore::new(r, Timing::test_harness()));
        node.live.clear();
    }

    fn owner(&self, i: usize, owner: u8) -> OwnerId {
        OwnerId::from_parts(
            i as u64 * 1000 + self.nodes[i].incarnation,
            u64::from(owner),
        )
    }

    fn send(&mut self, from: usize, out: Vec<Outgoing>) {
        for o in out {
            let (targets, msg): (Vec<usize>, TrackerMsg) = match o {
                Outgoing::Broadcast(msg) => {
                    ((0..self.nodes.len()).filter(|&j| j != from).collect(), msg)
                }
                Outgoing::Direct(name, msg) => (
                    (0..self.nodes.len())
                        .filter(|&j| self.nodes[j].name == name)
                        .collect(),
                    msg,
                ),
            };
            // Every message crosses the wire as bytes.
            let bytes = msg.encode();
            for to in targets {
                if self.cut.contains(&(from, to)) || self.rand(100) < u64::from(self.drop) {
                    continue;
                }
                let copies = if self.rand(100) < u64::from(self.dup) {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let delay = self.rand(u64::from(self.jitter) * PERIOD + 1);
                    let decoded = TrackerMsg::decode(&bytes).expect("a message decodes");
                    self.seq += 1;
                    self.queue.push((self.now + delay, self.seq, to, decoded));
                }
            }
        }
    }

    fn deliver_due(&mut self) {
        loop {
            self.queue.sort_by_key(|(at, seq, _, _)| (*at, *seq));
            let Some(pos) = self.queue.iter().position(|(at, _, _, _)| *at <= self.now) else {
                return;
            };
            let (_, _, to, msg) = self.queue.remove(pos);
            let now = self.now;
            let out = match self.nodes[to].core.as_mut() {
                Some(core) => core.handle(now, msg).out,
                None => continue,
            };
            self.send(to, out);
        }
    }

    fn advance(&mut self, ticks: u64) {
        for _ in 0..ticks {
            self.now += PERIOD;
            for i in 0..self.nodes.len() {
                let now = self.now;
                let out = match self.nodes[i].core.as_mut() {
                    Some(core) => core.tick_all(now).out,
                    None => continue,
                };
                self.send(i, out);
            }
            self.deliver_due();
        }
    }

    #[allow(clippy::needless_pass_by_value)]
    fn apply(&mut self, op: Op) {
        match op {
            Op::Track {
                node,
                owner,
                topic,
                key,
                meta,
            } => {
                let id = self.owner(node, owner);
                let n = &mut self.nodes[node];
                let Some(core) = n.core.as_mut() else { return };
                let result = core.track(id, TOPICS[topic], KEYS[key], json!({ "m": meta }));
                match (result, n.live.contains_key(&(owner, topic, key))) {
                    (Ok((r, _)), false) => {
                        n.live.insert((owner, topic, key), r);
                    }
                    (Err(_), true) => {}
                    (result, tracked) => panic!("track gave {result:?} with tracked = {tracked}"),
                }
            }
            Op::Update {
                node,
                owner,
                topic,
                key,
                meta,
            } => {
                let id = self.owner(node, owner);
                let n = &mut self.nodes[node];
                let Some(core) = n.core.as_mut() else { return };
                let result =
                    core.update(id, TOPICS[topic], KEYS[key], |_| Ok(json!({ "m": meta })));
                match (result, n.live.get_mut(&(owner, topic, key))) {
                    (Ok((r, _)), Some(slot)) => *slot = r,
                    (Err(_), None) => {}
                    (result, slot) => panic!("update gave {result:?} with slot {slot:?}"),
                }
            }
            Op::Untrack {
                node,
                owner,
                topic,
                key,
            } => {
                let id = self.owner(node, owner);
                let n = &mut self.nodes[node];
                let Some(core) = n.core.as_mut() else { return };
                core.untrack(id, TOPICS[topic], KEYS[key]);
                n.live.remove(&(owner, topic, key));
            }
            Op::OwnerExit { node, owner } => {
                let id = self.owner(node, owner);
                let n = &mut self.nodes[node];
                let Some(core) = n.core.as_mut() else { return };
                core.untrack_all(id);
                n.live.retain(|(o, _, _), _| *o != owner);
            }
            Op::Partition { a, b } => {
                if a != b {
                    self.cut.insert((a, b));
                    self.cut.insert((b, a));
                }
            }
            Op::Heal => self.cut.clear(),
            Op::Faults { drop, dup, jitter } => {
                self.drop = drop;
                self.dup = dup;
                self.jitter = jitter;
            }
            Op::Advance { ticks } => self.advance(u64::from(ticks)),
            Op::Crash { node } => {
                self.nodes[node].core = None;
                self.nodes[node].live.clear();
            }
            Op::Leave { node } => {
                let Some(core) = self.nodes[node].core.take() else {
                    return;
                };
                self.send(node, vec![core.graceful_permdown()]);
                self.nodes[node].live.clear();
            }
            Op::Restart { node, rename } => {
                if self.nodes[node].core.is_none() {
                    if rename {
                        let n = &mut self.nodes[node];
                        n.name = Arc::from(format!("n{node}.{}", n.incarnation + 1));
                    }
                    self.start(node);
                }
            }
        }
    }

    fn expected(&self) -> Expected {
        let mut set = Expected::new();
        for n in &self.nodes {
            if n.core.is_none() {
                continue;
            }
            for ((_, topic, key), r) in &n.live {
                set.insert((TOPICS[*topic].to_owned(), KEYS[*key].to_owned(), *r));
            }
        }
        set
    }
}

fn listed(core: &ShardCore, dirty: bool) -> Expected {
    let mut set = Expected::new();
    for topic in TOPICS {
        let rows = if dirty {
            core.state().dirty_list(topic)
        } else {
            core.state().list(topic)
        };
        for (key, meta) in rows {
            set.insert((topic.to_owned(), key.to_string(), meta.phx_ref()));
        }
    }
    set
}

fn run(nodes: usize, seed: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut sim = Sim::new(nodes, seed);
    for op in ops {
        sim.apply(op);
    }
    // Heal: perfect links, everyone connected; crashed nodes stay down for good.
    sim.cut.clear();
    sim.drop = 0;
    sim.dup = 0;
    sim.jitter = 0;
    // Long enough for in-flight messages, a permdown (1500 ms) and the catch-up after it.
    sim.advance(40);
    let expected = sim.expected();
    for n in &sim.nodes {
        let Some(core) = &n.core else { continue };
        prop_assert_eq!(
            &listed(core, false),
            &expected,
            "list of {} differs from the model",
            n.name
        );
        prop_assert_eq!(
            &listed(core, true),
            &expected,
            "{} keeps ghost rows",
            n.name
        );
        for (name, vsn, _) in core.replicas() {
            // A node that took a new name left its old one behind for good.
            let current = sim.nodes.iter().find(|m| &m.name == name);
            prop_assert!(
                current.is_some_and(|m| m.core.is_some() && m.incarnation == vsn),
                "{} still knows {}/{} which is gone",
                n.name,
                name,
                vsn
            );
        }
    }
    prop_assert!(!sim.incarnations.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge_on_the_model(
        nodes in 3..=5usize,
        seed in any::<u64>(),
        ops in proptest::collection::vec(op(5), 1..80),
    ) {
        let ops = ops
            .into_iter()
            .map(|op| clamp(op, nodes))
            .collect();
        run(nodes, seed, ops)?;
    }
}

/// 512 cases, or `PROPTEST_CASES` when set (CI raises it).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

/// Maps node indexes drawn for five nodes onto `nodes`.
fn clamp(op: Op, nodes: usize) -> Op {
    let c = |i: usize| i % nodes;
    match op {
        Op::Track {
            node,
            owner,
            topic,
            key,
            meta,
        } => Op::Track {
            node: c(node),
            owner,
            topic,
            key,
            meta,
        },
        Op::Update {
            node,
            owner,
            topic,
            key,
            meta,
        } => Op::Update {
            node: c(node),
            owner,
            topic,
            key,
            meta,
        },
        Op::Untrack {
            node,
            owner,
            topic,
            key,
        } => Op::Untrack {
            node: c(node),
            owner,
            topic,
            key,
        },
        Op::OwnerExit { node, owner } => Op::OwnerExit {
            node: c(node),
            owner,
        },
        Op::Partition { a, b } => Op::Partition { a: c(a), b: c(b) },
        Op::Crash { node } => Op::Crash { node: c(node) },
        Op::Leave { node } => Op::Leave { node: c(node) },
        Op::Restart { node, rename } => Op::Restart {
            node: c(node),
            rename,
        },
        other => other,
    }
}

#[test]
fn a_quiet_cluster_converges_after_a_netsplit() {
    let mut sim = Sim::new(3, 7);
    sim.apply(Op::Track {
        node: 0,
        owner: 0,
        topic: 0,
        key: 0,
        meta: 1,
    });
    sim.apply(Op::Advance { ticks: 10 });
    sim.apply(Op::Partition { a: 0, b: 1 });
    sim.apply(Op::Partition { a: 0, b: 2 });
    sim.apply(Op::Track {
        node: 1,
        owner: 1,
        topic: 0,
        key: 1,
        meta: 2,
    });
    sim.apply(Op::Untrack {
        node: 0,
        owner: 0,
        topic: 0,
        key: 0,
    });
    sim.apply(Op::Advance { ticks: 6 });
    // Node 0 is down for the others by now: its rows are hidden.
    let others = listed(sim.nodes[1].core.as_ref().unwrap(), false);
    assert!(others.iter().all(|(_, key, _)| key == "k1"));
    run_checked(sim);
}

fn run_checked(mut sim: Sim) {
    sim.cut.clear();
    sim.advance(40);
    let expected = sim.expected();
    for n in &sim.nodes {
        if let Some(core) = &n.core {
            assert_eq!(listed(core, false), expected, "{}", n.name);
        }
    }
}

/// Delivers `out` from `from` to the cores named in `to` (by index), returning nothing.
fn route(cores: &mut [ShardCore], now: u64, from: usize, to: &[usize], out: Vec<Outgoing>) {
    for o in out {
        let (targets, msg) = match o {
            Outgoing::Broadcast(m) => (to.to_vec(), m),
            Outgoing::Direct(name, m) => (
                to.iter()
                    .copied()
                    .filter(|&j| *cores[j].state().replica().name == *name)
                    .collect(),
                m,
            ),
        };
        for j in targets {
            if j != from {
                let reply = cores[j]
                    .handle(now, TrackerMsg::decode(&msg.encode()).unwrap())
                    .out;
                route(cores, now, j, &[from], reply);
            }
        }
    }
}

fn core(name: &str) -> ShardCore {
    ShardCore::new(
        ReplicaRef {
            name: Arc::from(name),
            vsn: 1,
        },
        Timing::test_harness(),
    )
}

#[test]
fn transfer_requests_collapse_to_the_dominant_clock() {
    let mut cores = vec![core("a"), core("b"), core("c")];
    // b and c meet and sync; c has one presence.
    let o = OwnerId::from_parts(9, 1);
    cores[2].track(o, "t", "x", json!({})).unwrap();
    for now in [100, 200, 300, 400] {
        for i in [1, 2] {
            let out = cores[i].tick_all(now).out;
            route(&mut cores, now, i, &[1, 2], out);
        }
    }
    assert_eq!(cores[1].state().list("t").len(), 1, "b caught up with c");
    // c moves ahead of b; a hears both heartbeats, c's clock dominates b's.
    cores[2].track(o, "t", "y", json!({})).unwrap();
    let hb = |core: &mut ShardCore| {
        (0..3)
            .flat_map(|k| core.tick_all(500 + k).out)
            .find_map(|o| match o {
                Outgoing::Broadcast(m @ TrackerMsg::Heartbeat { .. }) => Some(m),
                _ => None,
            })
            .expect("a heartbeat within max_silent_periods + 1 ticks")
    };
    let (hb_c, hb_b) = (hb(&mut cores[2]), hb(&mut cores[1]));
    cores[0].handle(500, hb_b);
    cores[0].handle(500, hb_c);
    // a samples over two ticks, then asks for a transfer.
    let mut requests = Vec::new();
    for now in [600, 700] {
        for o in cores[0].tick_all(now).out {
            if let Outgoing::Direct(to, TrackerMsg::TransferReq { .. }) = o {
                requests.push(to.to_string());
            }
        }
    }
    assert_eq!(requests, ["c"], "only the most advanced peer is asked");
}

#[test]
fn heartbeats_announce_an_idle_replica_every_max_silent_periods_plus_one_ticks() {
    let mut a = core("a");
    let beats: Vec<u64> = (1..=9)
        .filter(|t| {
            a.tick_all(t * PERIOD).out.iter().any(|o| {
                matches!(
                    o,
                    Outgoing::Broadcast(TrackerMsg::Heartbeat { delta: None, .. })
                )
            })
        })
        .collect();
    // The first tick announces; then one beat every max_silent_periods + 1 = 3 ticks.
    assert_eq!(beats, [1, 4, 7]);
    a.track(OwnerId::from_parts(1, 1), "t", "k", json!({}))
        .unwrap();
    let out = a.tick_all(10 * PERIOD).out;
    assert!(out.iter().any(|o| matches!(
        o,
        Outgoing::Broadcast(TrackerMsg::Heartbeat { delta: Some(_), .. })
    )));
}

/// A peer `name`/`vsn` tracking `rows` presences over 100 topics.
fn peer_with_rows(name: &str, vsn: u64, rows: u64) -> ShardCore {
    let mut core = ShardCore::new(
        ReplicaRef {
            name: Arc::from(name),
            vsn,
        },
        Timing::test_harness(),
    );
    for i in 0..rows {
        let owner = OwnerId::from_parts(vsn, i);
        core.track(
            owner,
            &format!("room:{}", i % 100),
            &format!("u{i}"),
            json!({"i": i}),
        )
        .unwrap();
    }
    core
}

/// Runs `ticks` heartbeat periods of `cores` from `now`, every message delivered at once.
fn beat(cores: &mut [ShardCore], now: &mut u64, ticks: u64) {
    let all: Vec<usize> = (0..cores.len()).collect();
    for _ in 0..ticks {
        *now += PERIOD;
        for i in 0..cores.len() {
            let out = cores[i].tick_all(*now).out;
            route(cores, *now, i, &all, out);
        }
    }
}

/// Fifty restarts of a peer holding 5,000 presences leave nothing behind in a node that saw
/// them all: whether the peer comes back under its name with a new incarnation (replaced at
/// once) or under a new name each time (purged after the permdown period).
#[test]
fn restarted_peers_leave_no_trace() {
    for same_name in [true, false] {
        let mut now = 0;
        let mut cores = vec![core("a"), peer_with_rows("b0", 1, 5_000)];
        beat(&mut cores, &mut now, 5);
        assert_eq!(cores[0].state().len(), 5_000, "a caught up with b");
        let fresh = cores[0].state().footprint();
        for restart in 1..=50u64 {
            let name = if same_name {
                "b0".to_owned()
            } else {
                format!("b{restart}")
            };
            cores[1] = peer_with_rows(&name, 1 + restart, 5_000);
            beat(&mut cores, &mut now, 5);
            if !same_name {
                // The old name falls silent: down, then purged after the permdown period.
                beat(
                    &mut cores,
                    &mut now,
                    Timing::test_harness().permdown_period / PERIOD + 2,
                );
            }
        }
        // A last period past every expiry.
        beat(
            &mut cores,
            &mut now,
            Timing::test_harness().permdown_period / PERIOD + 2,
        );
        let a = cores[0].state();
        a.check_indexes();
        assert_eq!(a.len(), 5_000, "only the live incarnation's rows");
        let left = a.footprint();
        assert_eq!(left.live_replicas, 2, "{left:?}");
        assert_eq!(left.down, 0, "the fast read path is back: {left:?}");
        assert!(left.slots <= 3, "replica slots are reused: {left:?}");
        assert!(
            left.row_capacity <= 2 * fresh.row_capacity,
            "dot indexes of gone incarnations are freed: {left:?} vs {fresh:?}"
        );
        assert!(
            left.arena_capacity <= 4 * fresh.arena_capacity,
            "the arena holds the live rows only: {left:?} vs {fresh:?}"
        );
        assert!(
            left.topic_capacity <= 2 * fresh.topic_capacity.max(128),
            "{left:?}"
        );
        assert!(
            left.ids_capacity <= 2 * fresh.ids_capacity.max(8),
            "{left:?}"
        );
        assert!(cores[0].gone_len() <= 8, "gone incarnations expire");
        assert!(
            cores[0]
                .replicas()
                .all(|(_, _, status)| status == super::replica::ReplicaStatus::Up)
        );
    }
}

/// A restarted node whose clock is behind (a lower vsn) is accepted once its predecessor is
/// down, and its presences replicate.
#[test]
fn a_restart_with_a_lower_vsn_replicates() {
    let mut now = 0;
    let mut cores = vec![core("a"), peer_with_rows("b", 1_000, 3)];
    beat(&mut cores, &mut now, 5);
    assert_eq!(cores[0].state().len(), 3);
    cores[1] = peer_with_rows("b", 10, 2);
    beat(
        &mut cores,
        &mut now,
        Timing::test_harness().down_period / PERIOD + 5,
    );
    let a = cores[0].state();
    assert_eq!(a.len(), 2, "the new incarnation's rows, not the old one's");
    assert_eq!(a.footprint().down, 0);
}

/// A shard that left gracefully sends nothing more, so a peer that hears its permdown cannot
/// see it come back from a later heartbeat; and a permdown that overtakes the incarnation's
/// heartbeat keeps that heartbeat out.
#[test]
fn nothing_brings_back_a_gracefully_departed_incarnation() {
    let mut now = 0;
    let mut cores = vec![core("a"), peer_with_rows("b", 5, 10)];
    beat(&mut cores, &mut now, 5);
    // b's next heartbeat (with a new row) is held back; its permdown overtakes it.
    cores[1]
        .track(OwnerId::from_parts(5, 99), "room:x", "late", json!({}))
        .unwrap();
    let late: Vec<TrackerMsg> = cores[1]
        .tick_all(now + 1)
        .out
        .into_iter()
        .filter_map(|o| match o {
            Outgoing::Broadcast(m @ TrackerMsg::Heartbeat { .. }) => Some(m),
            _ => None,
        })
        .collect();
    assert!(!late.is_empty());
    let Outgoing::Broadcast(permdown) = cores[1].graceful_permdown() else {
        panic!("a broadcast")
    };
    cores[0].handle(now + 2, permdown);
    assert_eq!(cores[0].state().len(), 0, "b's presences left at once");
    for m in late {
        cores[0].handle(now + 3, m);
    }
    assert_eq!(
        cores[0].state().len(),
        0,
        "the late heartbeat does not bring b back"
    );

    // Heard in the other order by a fresh node c that never knew b: the permdown first.
    let mut c = core("c");
    let Outgoing::Broadcast(permdown) = cores[1].graceful_permdown() else {
        panic!("a broadcast")
    };
    c.handle(now + 4, permdown);
    let heartbeat = (1..=4)
        .flat_map(|k| cores[1].tick_all(now + k * PERIOD).out)
        .find_map(|o| match o {
            Outgoing::Broadcast(m @ TrackerMsg::Heartbeat { .. }) => Some(m),
            _ => None,
        })
        .expect("the core still beats; the driver stops sending after a permdown");
    c.handle(now + 5, heartbeat);
    assert_eq!(c.state().len(), 0);
    assert!(c.replicas().next().is_none());
}

/// After a spike, a node's maps give their memory back: 20,000 presences tracked over 2,000
/// topics, then all but ten gone, leave maps sized for the ten.
#[test]
fn maps_shrink_after_a_spike() {
    let mut a = core("a");
    let before = a.state().footprint();
    let owners: Vec<OwnerId> = (0..20_000).map(|i| OwnerId::from_parts(1, i)).collect();
    for (i, owner) in owners.iter().enumerate() {
        a.track(
            *owner,
            &format!("room:{}", i % 2_000),
            &format!("u{i}"),
            json!({}),
        )
        .unwrap();
    }
    let peak = a.state().footprint();
    for owner in &owners[10..] {
        a.untrack_all(*owner);
    }
    let after = a.state().footprint();
    a.state().check_indexes();
    assert_eq!(a.state().len(), 10);
    assert!(peak.topic_capacity >= 2_000, "{peak:?}");
    assert!(after.topic_capacity <= 64, "{after:?} after {peak:?}");
    assert!(after.topic_slots <= 64, "{after:?} after {peak:?}");
    assert!(
        after.row_capacity <= 128.max(2 * before.row_capacity),
        "{after:?} after {peak:?}"
    );
    assert!(after.arena_capacity <= 128, "{after:?} after {peak:?}");
    assert!(a.state().owners_capacity() <= 128, "owners shrink too");
}

#[test]
fn many_rows_under_one_key_keep_the_indexes_whole() {
    // A shared key ("guest") chains every row of the topic: inserts go first in the chain,
    // removals unlink from its head, middle and end, and the topic's last row moves into
    // each hole.
    let mut a = core("a");
    let owners: Vec<OwnerId> = (0..3_000).map(|i| OwnerId::from_parts(1, i)).collect();
    for owner in &owners {
        a.track(*owner, "room:lobby", "guest", json!({})).unwrap();
    }
    a.state().check_indexes();
    assert_eq!(a.state().key_len("room:lobby", "guest"), 3_000);
    for owner in owners.iter().step_by(3) {
        a.untrack_all(*owner);
    }
    a.untrack_all(owners[2_999]);
    a.state().check_indexes();
    assert_eq!(a.state().key_len("room:lobby", "guest"), 1_999);
    for owner in &owners[..1_500] {
        a.untrack_all(*owner);
    }
    a.state().check_indexes();
    assert_eq!(a.state().get_by_key("room:lobby", "guest").len(), 999);
}
