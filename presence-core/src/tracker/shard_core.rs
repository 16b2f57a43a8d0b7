//! One shard's replication protocol as a state machine without IO (reference 1.7 to 1.10).
//!
//! The tokio driver in `shard.rs` feeds it local operations, peer messages and ticks, with the
//! current time in milliseconds, and carries out the [`Effects`] it returns: messages to send,
//! the diff to report and replica events. Tests drive several of them over a simulated network.

use std::sync::Arc;

use serde_json::Value;

use super::clock::{self, Context, ReplicaRef};
use super::diff::Diff;
use super::generations::DeltaGenerations;
use super::message::TrackerMsg;
use super::replica::{ReplicaStatus, Replicas, Transition};
use super::state::{Delta, Entry, State, Transfer};
use super::{ReplicaEvent, TrackError, UpdateError};
use crate::{Meta, OwnerId, PhxRef};

/// The timing settings of a shard, in milliseconds.
#[derive(Debug, Clone)]
pub(crate) struct Timing {
    pub(crate) max_silent_periods: u32,
    pub(crate) down_period: u64,
    pub(crate) permdown_period: u64,
    pub(crate) clock_sample_periods: u32,
    pub(crate) max_delta_sizes: Vec<usize>,
    /// The most own counters (so the most rows) one heartbeat's delta covers: a burst of
    /// tracks goes out in several heartbeats (see [`Timing::DELTA_PART`]).
    pub(crate) max_delta_part: u64,
}

impl Timing {
    /// The default `max_delta_part`. Larger delta generations than this are never kept
    /// (Phoenix's largest default is 10,000), and a Redis subscriber gets messages of a few
    /// MB at most.
    pub(crate) const DELTA_PART: u64 = 10_000;

    /// The timings of Phoenix's own tracker test harness, for the simulation tests and the
    /// replication fuzz target.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn test_harness() -> Self {
        Timing {
            max_silent_periods: 2,
            down_period: 400,
            permdown_period: 1500,
            clock_sample_periods: 2,
            max_delta_sizes: vec![5, 20, 100],
            max_delta_part: 8,
        }
    }
}

/// A message for peers.
#[derive(Debug, Clone)]
pub(crate) enum Outgoing {
    /// To every other node.
    Broadcast(TrackerMsg),
    /// To the node of that name only.
    Direct(Arc<str>, TrackerMsg),
}

/// What one step asks the driver to do.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub(crate) out: Vec<Outgoing>,
    pub(crate) diff: Diff,
    pub(crate) events: Vec<ReplicaEvent>,
}

impl Effects {
    fn joins(&mut self, entries: Vec<Entry>) {
        for e in entries {
            self.diff.join(&e.topic, e.key, e.meta);
        }
    }

    fn leaves(&mut self, entries: Vec<Entry>) {
        for e in entries {
            self.diff.leave(&e.topic, e.key, e.meta);
        }
    }
}

/// One shard: the CRDT, its delta generations and what it knows of its peers.
#[derive(Debug)]
pub(crate) struct ShardCore {
    state: State,
    generations: DeltaGenerations,
    replicas: Replicas,
    timing: Timing,
    silent_periods: u32,
    sample_count: u32,
    pending_clocks: Vec<(ReplicaRef, Context)>,
}

impl ShardCore {
    pub(crate) fn new(replica: ReplicaRef, timing: Timing) -> Self {
        ShardCore {
            state: State::new(replica),
            generations: DeltaGenerations::new(timing.max_delta_sizes.clone()),
            replicas: Replicas::default(),
            silent_periods: timing.max_silent_periods,
            sample_count: timing.clock_sample_periods,
            pending_clocks: Vec::new(),
            timing,
        }
    }

    pub(crate) fn state(&self) -> &State {
        &self.state
    }

    // ----- local operations -----

    pub(crate) fn track(
        &mut self,
        owner: OwnerId,
        topic: &str,
        key: &str,
        meta: Value,
    ) -> Result<(PhxRef, Effects), TrackError> {
        if self.state.get_own(topic, owner, key).is_some() {
            return Err(TrackError::AlreadyTracked {
                topic: topic.to_owned(),
                key: key.to_owned(),
            });
        }
        let phx_ref = PhxRef::generate();
        let meta = Meta::new(meta, phx_ref, None);
        let topic: Arc<str> = Arc::from(topic);
        let key: Arc<str> = Arc::from(key);
        self.state
            .join(owner, topic.clone(), key.clone(), meta.clone());
        let mut fx = Effects::default();
        fx.diff.join(&topic, key, meta);
        Ok((phx_ref, fx))
    }

    pub(crate) fn untrack(&mut self, owner: OwnerId, topic: &str, key: &str) -> Effects {
        let mut fx = Effects::default();
        if let Some(e) = self.state.leave(topic, owner, key) {
            fx.leaves(vec![e]);
        }
        fx
    }

    pub(crate) fn untrack_all(&mut self, owner: OwnerId) -> Effects {
        let mut fx = Effects::default();
        fx.leaves(self.state.leave_owner(owner));
        fx
    }

    pub(crate) fn update(
        &mut self,
        owner: OwnerId,
        topic: &str,
        key: &str,
        f: impl FnOnce(&Meta) -> Result<Value, UpdateError>,
    ) -> Result<(PhxRef, Effects), UpdateError> {
        let Some(prev) = self.state.get_own(topic, owner, key).cloned() else {
            return Err(UpdateError::NoPresence);
        };
        let value = f(&prev)?;
        let phx_ref = PhxRef::generate();
        let meta = Meta::new(value, phx_ref, Some(prev.phx_ref()));
        let Some((old, new)) = self.state.leave_join(topic, owner, key, meta) else {
            return Err(UpdateError::NoPresence);
        };
        let mut fx = Effects::default();
        fx.joins(vec![new]);
        fx.leaves(vec![old]);
        Ok((phx_ref, fx))
    }

    // ----- time -----

    /// One heartbeat tick at `now` (ms): broadcast, sample clocks, detect downs (reference 1.9).
    pub(crate) fn tick(&mut self, now: u64) -> Effects {
        let mut fx = Effects::default();
        let own = self.state.replica().clone();

        if self.state.has_delta() {
            self.send_delta_part(&mut fx);
        } else if self.silent_periods >= self.timing.max_silent_periods {
            fx.out.push(Outgoing::Broadcast(TrackerMsg::Heartbeat {
                from: own.clone(),
                delta: None,
                clocks: self.state.clocks(),
                since: None,
            }));
            self.silent_periods = 0;
        } else {
            self.silent_periods += 1;
        }

        if self.sample_count <= 1 {
            let context = self.state.clocks();
            clock::append_clock(&mut self.pending_clocks, own.clone(), context.clone());
            for target in clock::clockset_replicas(&self.pending_clocks) {
                if target.name == own.name {
                    continue;
                }
                fx.out.push(Outgoing::Direct(
                    target.name.clone(),
                    TrackerMsg::TransferReq {
                        from: own.clone(),
                        context: context.clone(),
                    },
                ));
            }
            self.pending_clocks.clear();
            self.sample_count = self.timing.clock_sample_periods;
        } else {
            self.sample_count -= 1;
        }

        let transitions =
            self.replicas
                .detect_downs(now, self.timing.down_period, self.timing.permdown_period);
        self.apply(transitions, &mut fx);
        fx
    }

    /// Whether part of the pending delta is still to be sent (after a tick that sent the
    /// first part of a large one): the driver calls [`ShardCore::send_more`] until not.
    pub(crate) fn has_more(&self) -> bool {
        self.state.has_delta()
    }

    /// Broadcasts the next part of the pending delta, if any, in a heartbeat of its own.
    pub(crate) fn send_more(&mut self) -> Effects {
        let mut fx = Effects::default();
        if self.state.has_delta() {
            self.send_delta_part(&mut fx);
        }
        fx
    }

    /// A tick, then every part of the pending delta (what the driver does, in one step).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn tick_all(&mut self, now: u64) -> Effects {
        let mut fx = self.tick(now);
        while self.has_more() {
            fx.out.extend(self.send_more().out);
        }
        fx
    }

    /// Broadcasts the oldest part of the pending delta, at most `max_delta_part` own
    /// counters: a burst of tracks goes out in messages of bounded size (Redis limits what a
    /// subscriber may have queued), each built only when sent.
    fn send_delta_part(&mut self, fx: &mut Effects) {
        let own = self.state.replica().clone();
        let delta = self.state.take_delta_part(self.timing.max_delta_part);
        // Generations serve peers that already know this replica; with none known, a
        // newcomer gets the whole state anyway, so keeping history would be wasted work.
        // Cleared rather than left behind, so that the next push starts a contiguous window.
        // A first push seeds them empty at this part's end (not with the pending rest, which
        // later parts bring).
        if self.replicas.iter().next().is_some() {
            let end = delta.end().clone();
            self.generations.push(|| Delta::empty_at(end), &delta);
        } else {
            self.generations.clear();
        }
        // The clocks say how far this part brings its receivers, not how far the pending rest
        // goes: a peer reading the rest's counter before the rest arrives would ask for a
        // transfer it does not need.
        let mut clocks = self.state.clocks();
        if let Some(end) = delta.end().get(&own) {
            clocks.insert(own.clone(), end);
        }
        // `since` is the driver's to set: this core keeps no wall clock.
        fx.out.push(Outgoing::Broadcast(TrackerMsg::Heartbeat {
            from: own,
            delta: Some(delta),
            clocks,
            since: None,
        }));
        self.silent_periods = 0;
    }

    // ----- peers -----

    /// Handles one message from a peer at `now` (ms).
    pub(crate) fn handle(&mut self, now: u64, msg: TrackerMsg) -> Effects {
        let mut fx = Effects::default();
        if msg.sender().name == self.state.replica().name {
            // Our own broadcast, or a stale incarnation of this node: nothing to learn.
            return fx;
        }
        if self.replicas.is_stale(msg.sender()) {
            // Delayed past a newer incarnation of its sender, or past its permdown.
            return fx;
        }
        match msg {
            TrackerMsg::Heartbeat {
                from,
                delta,
                clocks,
                since: _,
            } => {
                let transitions = self.replicas.put_heartbeat(&from, now);
                self.apply(transitions, &mut fx);
                if let Some(delta) = delta {
                    let changes = self.state.merge_delta(&delta);
                    fx.joins(changes.joins);
                    fx.leaves(changes.leaves);
                    self.generations.push(|| self.state.delta(), &delta);
                }
                clock::append_clock(&mut self.pending_clocks, from, clocks);
            }
            TrackerMsg::TransferReq { from, context } => {
                let transfer = self.generations.extract(&self.state, &from, &context);
                fx.out.push(Outgoing::Direct(
                    from.name.clone(),
                    TrackerMsg::TransferAck {
                        from: self.state.replica().clone(),
                        transfer,
                    },
                ));
            }
            TrackerMsg::TransferAck { transfer, .. } => match &transfer {
                Transfer::Delta(delta) => {
                    let changes = self.state.merge_delta(delta);
                    fx.joins(changes.joins);
                    fx.leaves(changes.leaves);
                    self.generations.push(|| self.state.delta(), delta);
                }
                Transfer::State(extract) => {
                    let changes = self.state.merge_state(extract);
                    fx.joins(changes.joins);
                    fx.leaves(changes.leaves);
                    self.generations.clear();
                }
            },
            TrackerMsg::GracefulPermdown { from } => {
                let transitions = self.replicas.graceful_permdown(&from, now);
                self.apply(transitions, &mut fx);
            }
        }
        fx
    }

    /// The message that tells peers this shard leaves for good.
    pub(crate) fn graceful_permdown(&self) -> Outgoing {
        Outgoing::Broadcast(TrackerMsg::GracefulPermdown {
            from: self.state.replica().clone(),
        })
    }

    /// How many incarnations the shard remembers as gone.
    #[cfg(test)]
    pub(crate) fn gone_len(&self) -> usize {
        self.replicas.gone_len()
    }

    /// The peers this shard knows, with their status.
    pub(crate) fn replicas(&self) -> impl Iterator<Item = (&Arc<str>, u64, ReplicaStatus)> {
        self.replicas.iter().map(|(n, r)| (n, r.vsn, r.status))
    }

    fn apply(&mut self, transitions: Vec<Transition>, fx: &mut Effects) {
        for t in transitions {
            match t {
                Transition::Up(r) => {
                    // Announce ourselves at the next tick rather than after up to
                    // max_silent_periods: the newcomer learns our clock (and asks for a
                    // transfer) one period later instead of up to eleven.
                    self.silent_periods = self.timing.max_silent_periods;
                    fx.joins(self.state.replica_up(&r));
                    fx.events.push(ReplicaEvent::Up {
                        name: r.name.to_string(),
                        vsn: r.vsn,
                    });
                }
                Transition::Down(r) => {
                    fx.leaves(self.state.replica_down(&r));
                    fx.events.push(ReplicaEvent::Down {
                        name: r.name.to_string(),
                        vsn: r.vsn,
                    });
                }
                Transition::Permdown(r) => {
                    self.state.remove_down_replica(&r);
                    self.generations.remove_replica(&r);
                    fx.events.push(ReplicaEvent::Permdown {
                        name: r.name.to_string(),
                        vsn: r.vsn,
                    });
                }
            }
        }
    }
}
