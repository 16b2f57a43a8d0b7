//! Rebalancing: the nodes of a cluster tell each other how many sockets they hold, and a
//! node holding well over the average asks its newest sockets to reconnect elsewhere.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use presence_core::PubSub;
use presence_core::pubsub::{Message, Payload, RecvError};
use serde_json::json;
use tokio::time::{Instant, MissedTickBehavior};

use crate::metrics;
use crate::socket::Inner;

/// Spreads a cluster's sockets evenly again after a node comes back.
///
/// A load balancer spreads new connections, but websockets live for hours: when a node
/// stops, its clients reconnect to the others, and when it comes back it gets only the
/// clients that connect from then on. The survivors keep the extra sockets (half again as
/// many each, in a cluster of three), and with them the memory, the fan-out work, and the
/// load the next failure would add on top.
///
/// With rebalancing on, each node publishes its number of open sockets on the endpoint's
/// pub/sub every [`period`](Self::period). A node holding more than the cluster's average by
/// more than the [`tolerance`](Self::tolerance_percent) closes its newest sockets, down to
/// the average and at most [`max_percent_per_period`](Self::max_percent_per_period) of its
/// sockets at a time, once it has found itself over at three periods in a row. The sockets
/// close with close code **1012** ("service restart", reason `"rebalancing"`), as a drain
/// does: phoenix.js reconnects at once, through the load balancer, and rejoins its channels.
/// The next close waits three more periods, while those clients reconnect and the counts
/// catch up. The newest go first: they are the ones a failure moved, and long-lived sockets
/// keep their connection.
///
/// A node counts a peer until it has not heard from it for two periods (so the three
/// periods in a row keep it from acting on the last count of a peer that died), and never
/// counts a draining one ([`PhoenixSocket::drain`](crate::PhoenixSocket::drain)). A node with no
/// peer, or draining itself, closes nothing. How fast the cluster evens out depends on where
/// the load balancer sends the reconnects: to the node with the fewest connections, within a
/// few periods; at random, over a few more, since some come back.
///
/// The node's rebalancer starts when the endpoint is built inside a tokio runtime (or with
/// its first connection otherwise), and stops when the endpoint and its clones are dropped.
/// Every node of the cluster must rebalance on the same [`topic`](Self::topic), and endpoints
/// sharing a pub/sub need topics of their own. No client may join the topic, whatever the
/// channel routes (a channel's broadcasts could forge counts): an endpoint refuses joins to
/// its own rebalancing topic and to [`DEFAULT_REBALANCE_TOPIC`], so a custom topic must not
/// be one that a route of another endpoint on the same pub/sub matches. Off by default: turn it on with
/// [`PhoenixSocketBuilder::rebalance`](crate::PhoenixSocketBuilder::rebalance).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use presence_core::PubSub;
/// use presence_poem::{PhoenixSocket, Rebalance};
///
/// let socket = PhoenixSocket::builder(PubSub::new("node-a"))
///     .rebalance(
///         Rebalance::new()
///             .period(Duration::from_secs(10))
///             .tolerance_percent(20),
///     )
///     .build();
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Rebalance {
    pub(crate) topic: Arc<str>,
    pub(crate) period: Duration,
    pub(crate) tolerance: u32,
    pub(crate) max_per_period: u32,
}

/// The default pub/sub topic on which nodes publish their socket counts.
pub const DEFAULT_REBALANCE_TOPIC: &str = "phx:rebalance";

impl Default for Rebalance {
    fn default() -> Self {
        Rebalance::new()
    }
}

impl Rebalance {
    /// Rebalancing on [`DEFAULT_REBALANCE_TOPIC`], every 5 s, with a tolerance of 10 % above
    /// the average, closing at most 10 % of a node's sockets at a time.
    pub fn new() -> Self {
        Rebalance {
            topic: DEFAULT_REBALANCE_TOPIC.into(),
            period: Duration::from_secs(5),
            tolerance: 10,
            max_per_period: 10,
        }
    }

    /// The pub/sub topic the nodes publish their counts on.
    pub fn topic(mut self, topic: impl Into<Arc<str>>) -> Self {
        self.topic = topic.into();
        self
    }

    /// How often each node publishes its count and checks its share (at least 100 ms).
    pub fn period(mut self, period: Duration) -> Self {
        self.period = period.max(Duration::from_millis(100));
        self
    }

    /// How far above the average, in percent, a node may be before it closes sockets.
    pub fn tolerance_percent(mut self, percent: u32) -> Self {
        self.tolerance = percent;
        self
    }

    /// The most a node closes at a time, in percent of its sockets (1 to 100; at least one
    /// socket).
    pub fn max_percent_per_period(mut self, percent: u32) -> Self {
        self.max_per_period = percent.clamp(1, 100);
        self
    }

    /// How many of `own` sockets to close, given the fresh peers' counts.
    fn excess(&self, own: usize, peers: impl IntoIterator<Item = usize>) -> usize {
        // Saturating: a forged or garbled count must not overflow.
        let (sum, nodes) = peers.into_iter().fold((own, 1usize), |(sum, nodes), p| {
            (sum.saturating_add(p), nodes + 1)
        });
        if nodes == 1 {
            return 0;
        }
        let mean = sum as f64 / nodes as f64;
        if own as f64 <= mean * (1.0 + f64::from(self.tolerance) / 100.0) {
            return 0;
        }
        let over = own.saturating_sub(mean.ceil() as usize);
        let cap = (own as f64 * f64::from(self.max_per_period) / 100.0).ceil() as usize;
        over.min(cap.max(1))
    }
}

/// What a node publishes each period.
struct Report {
    node: String,
    sockets: usize,
    draining: bool,
}

impl Report {
    fn message(&self, topic: &Arc<str>) -> Message {
        Message::json(
            topic.clone(),
            "sockets",
            json!({"node": self.node, "sockets": self.sockets, "draining": self.draining}),
        )
    }

    fn parse(message: &Message) -> Option<Report> {
        let Payload::Json(value) = message.payload() else {
            return None;
        };
        Some(Report {
            node: value.get("node")?.as_str()?.to_owned(),
            sockets: usize::try_from(value.get("sockets")?.as_u64()?).ok()?,
            draining: value.get("draining")?.as_bool()?,
        })
    }
}

/// How many periods in a row a node must find itself over its share before it closes
/// sockets: one more than the periods a dead peer's last count is kept.
const OVER_TICKS: u32 = 3;

/// Starts the endpoint's rebalancer. It runs until the endpoint is dropped (it holds only a
/// weak reference) or its pub/sub closes the subscription.
pub(crate) fn start(inner: &Arc<Inner>) {
    let Some(config) = inner.config.rebalance.clone() else {
        return;
    };
    let pubsub = inner.hubs.pubsub().clone();
    let weak = Arc::downgrade(inner);
    tokio::spawn(run(config, pubsub, weak));
}

/// A node's view of the cluster's counts, and when to close sockets.
struct Balancer {
    config: Rebalance,
    node: String,
    /// Peers' counts, and when each was heard.
    peers: HashMap<String, (usize, Instant)>,
    /// Ticks in a row that found this node over its share. It closes sockets on the
    /// [`OVER_TICKS`]th: a peer that died is still counted for up to two periods (its last
    /// count), so the node does not act on it; and after closing, the next close waits as
    /// many periods, while the clients reconnect and the peers publish counts that include
    /// them.
    over: u32,
}

impl Balancer {
    fn new(config: Rebalance, node: String) -> Self {
        Balancer {
            config,
            node,
            peers: HashMap::new(),
            over: 0,
        }
    }

    /// Notes a peer's report (this node's own are ignored).
    fn heard(&mut self, report: Report, now: Instant) {
        if report.node == self.node {
            return;
        }
        if report.draining {
            self.peers.remove(&report.node);
        } else {
            self.peers.insert(report.node, (report.sockets, now));
        }
    }

    /// A period's check, with this node's count: how many of its newest sockets to close
    /// now.
    fn tick(&mut self, own: usize, draining: bool, now: Instant) -> usize {
        let stale = self.config.period * 2;
        self.peers
            .retain(|_, (_, heard)| now.saturating_duration_since(*heard) <= stale);
        let excess = if draining {
            0
        } else {
            self.config
                .excess(own, self.peers.values().map(|(n, _)| *n))
        };
        self.over = if excess > 0 { self.over + 1 } else { 0 };
        if self.over < OVER_TICKS {
            return 0;
        }
        self.over = 0;
        excess
    }
}

async fn run(config: Rebalance, pubsub: PubSub, inner: Weak<Inner>) {
    let mut subscription = pubsub.subscribe(&config.topic);
    let node = pubsub.node_name().to_owned();
    let mut tick = tokio::time::interval(config.period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let topic = config.topic.clone();
    let mut balancer = Balancer::new(config, node.clone());
    loop {
        tokio::select! {
            message = subscription.recv() => match message {
                Ok(message) => match Report::parse(&message) {
                    Some(report) => balancer.heard(report, Instant::now()),
                    None => tracing::debug!(%topic, "ignoring a malformed socket count"),
                },
                Err(RecvError::Lagged(_)) => {}
                Err(_) => return,
            },
            _ = tick.tick() => {
                let Some(inner) = inner.upgrade() else { return };
                let drain = &inner.drain;
                let report = Report {
                    node: node.clone(),
                    sockets: drain.open(),
                    draining: drain.is_draining(),
                };
                if let Err(error) = pubsub.broadcast(report.message(&topic)) {
                    tracing::debug!(%error, "could not publish this node's socket count");
                }
                let excess = balancer.tick(report.sockets, report.draining, Instant::now());
                if excess > 0 {
                    let closing = drain.shed_newest(excess);
                    metrics::rebalanced(closing);
                    tracing::info!(
                        sockets = report.sockets,
                        peers = balancer.peers.len(),
                        closing,
                        "rebalancing: asking the newest sockets to reconnect"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_down_to_the_average_within_the_caps() {
        let r = Rebalance::new();
        // Alone: nothing to compare with.
        assert_eq!(r.excess(900, []), 0);
        // Within 10 % of the average (700): nothing.
        assert_eq!(r.excess(760, [680, 660]), 0);
        // After a node came back empty: 943 against an average of 624, 10 % a period.
        assert_eq!(r.excess(943, [930, 0]), 95);
        // Down to the average when that is less than the cap.
        assert_eq!(r.excess(760, [650, 650]), 73);
        // Small nodes close at least one.
        let r = Rebalance::new().max_percent_per_period(1);
        assert_eq!(r.excess(20, [0]), 1);
        let r = Rebalance::new()
            .tolerance_percent(50)
            .max_percent_per_period(100);
        assert_eq!(r.excess(140, [100, 100]), 0);
        assert_eq!(r.excess(210, [100, 100]), 73);
        // Absurd counts neither overflow nor make a node close anything.
        assert_eq!(r.excess(210, [usize::MAX, usize::MAX]), 0);
    }

    fn report(node: &str, sockets: usize, draining: bool) -> Report {
        Report {
            node: node.into(),
            sockets,
            draining,
        }
    }

    #[test]
    fn a_node_closes_sockets_after_three_periods_over_and_then_waits() {
        let period = Duration::from_secs(5);
        let mut b = Balancer::new(Rebalance::new().period(period), "a".into());
        let mut now = Instant::now();
        b.heard(report("a", 0, false), now);
        assert!(b.peers.is_empty(), "its own report");
        let mut closed = Vec::new();
        for _ in 0..7 {
            b.heard(report("b", 900, false), now);
            b.heard(report("c", 0, false), now);
            closed.push(b.tick(943, false, now));
            now += period;
        }
        // Over at every tick: it closes at the third, then counts again from zero.
        assert_eq!(closed, [0, 0, 95, 0, 0, 95, 0]);
        // Draining: never, and the count starts over.
        assert_eq!(b.tick(943, true, now), 0);
        assert_eq!(b.over, 0);
        // A draining peer is dropped at once.
        b.heard(report("c", 0, true), now);
        assert!(!b.peers.contains_key("c"));
    }

    #[test]
    fn a_dead_peers_last_count_does_not_make_a_node_close_sockets() {
        // Three nodes of 680; c dies just after publishing, and its clients reconnect to a
        // and b. Until c's last count goes stale, a is over the average it makes.
        let period = Duration::from_secs(5);
        let mut b = Balancer::new(Rebalance::new().period(period), "a".into());
        let start = Instant::now();
        b.heard(report("c", 680, false), start);
        let mut now = start + Duration::from_millis(10);
        for _ in 0..6 {
            b.heard(report("b", 1020, false), now);
            assert_eq!(b.tick(1020, false, now), 0, "{:?}", now - start);
            now += period;
        }
        assert!(!b.peers.contains_key("c"), "c is forgotten");
    }

    #[test]
    fn reports_round_trip_and_bad_ones_are_ignored() {
        let topic: Arc<str> = "phx:rebalance".into();
        let report = Report {
            node: "a".into(),
            sockets: 12,
            draining: true,
        };
        let parsed = Report::parse(&report.message(&topic)).expect("parses");
        assert_eq!(
            (parsed.node.as_str(), parsed.sockets, parsed.draining),
            ("a", 12, true)
        );
        let bad = Message::json(
            topic.clone(),
            "sockets",
            json!({"node": "a", "sockets": -1}),
        );
        assert!(Report::parse(&bad).is_none());
        let bad = Message::json(topic, "sockets", json!([1, 2]));
        assert!(Report::parse(&bad).is_none());
    }
}
