//! The endpoint's metrics, through the [`metrics`] facade: a no-op until the application
//! installs a recorder. Every name is a constant here and a row of the table in
//! `OBSERVABILITY.md` (a test checks they agree).
//!
//! Per-message counters are registered once per endpoint or hub ([`SocketCounters`],
//! [`HubCounters`]) and only incremented afterwards, so a socket holds no handle of its own;
//! rare events (connects, refusals, closes, joins) go through the macros, whose names and
//! labels are static strings.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, counter, gauge, histogram};

/// Gauge: open sockets (upgraded websockets and long-poll sessions, until their channels have
/// stopped).
pub(crate) const SOCKETS_OPEN: &str = "presence_sockets_open";
/// Counter: connections accepted (websocket upgrades and new long-poll sessions).
pub(crate) const SOCKET_CONNECTS: &str = "presence_socket_connects_total";
/// Counter, label `reason`: upgrades refused.
pub(crate) const SOCKET_REFUSALS: &str = "presence_socket_refusals_total";
/// Counter, label `code`: sockets closed, by close code.
pub(crate) const SOCKET_CLOSES: &str = "presence_socket_closes_total";
/// Counter: sockets asked to reconnect elsewhere by rebalancing (closed with 1012).
pub(crate) const SOCKETS_REBALANCED: &str = "presence_sockets_rebalanced_total";
/// Counter: sockets closed because their outbound queue was full (1013).
pub(crate) const SOCKET_SLOW_CLOSES: &str = "presence_socket_slow_closes_total";
/// Counter, label `limit` (`message`, `join`): client messages refused by a rate limit.
pub(crate) const SOCKET_RATE_LIMITED: &str = "presence_socket_rate_limited_total";
/// Counter: messages received (websocket messages, and long-poll messages).
pub(crate) const FRAMES_RECEIVED: &str = "presence_socket_frames_received_total";
/// Counter: payload bytes received.
pub(crate) const BYTES_RECEIVED: &str = "presence_socket_bytes_received_total";
/// Counter: messages sent (websocket messages written, and messages in long-poll answers).
pub(crate) const FRAMES_SENT: &str = "presence_socket_frames_sent_total";
/// Counter: payload bytes written.
pub(crate) const BYTES_SENT: &str = "presence_socket_bytes_sent_total";
/// Histogram: the most bytes a socket's outbound queue held, recorded when it closes.
pub(crate) const OUTBOUND_PEAK_BYTES: &str = "presence_socket_outbound_queue_peak_bytes";
/// Gauge, label `route`: channels joined.
pub(crate) const CHANNELS_JOINED: &str = "presence_channels_joined";
/// Counter, labels `route`, `outcome`: joins answered.
pub(crate) const CHANNEL_JOINS: &str = "presence_channel_joins_total";
/// Histogram, label `route`: seconds from a join message to its answer.
pub(crate) const CHANNEL_JOIN_DURATION: &str = "presence_channel_join_duration_seconds";
/// Counter: `presence_diff`s a hub sent to its sockets.
pub(crate) const DIFFS_BROADCAST: &str = "presence_hub_diffs_broadcast_total";
/// Counter, label `where` (`hub`, `socket`): `presence_diff`s merged into an earlier one.
pub(crate) const DIFFS_COALESCED: &str = "presence_diffs_coalesced_total";
/// Counter: times a hub lagged and resynced its topic's channels.
pub(crate) const HUB_LAGGED: &str = "presence_hub_lagged_total";

/// Why an upgrade was refused: the `reason` label of [`SOCKET_REFUSALS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The endpoint is draining (503).
    Draining,
    /// `max_connections` reached (503).
    Limit,
    /// `check_origin` refused the `Origin` (403).
    Origin,
    /// An unparsable query string (400).
    BadRequest,
    /// An unsupported `vsn` (403).
    Vsn,
    /// Not a valid websocket upgrade request.
    Upgrade,
    /// A malformed auth token header (403).
    AuthToken,
    /// The connect hook refused (403).
    ConnectHook,
    /// The connect hook timed out (503).
    ConnectTimeout,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Draining => "draining",
            Refusal::Limit => "limit",
            Refusal::Origin => "origin",
            Refusal::BadRequest => "bad_request",
            Refusal::Vsn => "vsn",
            Refusal::Upgrade => "upgrade",
            Refusal::AuthToken => "auth_token",
            Refusal::ConnectHook => "connect_hook",
            Refusal::ConnectTimeout => "connect_timeout",
        }
    }
}

pub(crate) fn refused(why: Refusal) {
    counter!(SOCKET_REFUSALS, "reason" => why.label()).increment(1);
}

pub(crate) fn connected() {
    counter!(SOCKET_CONNECTS).increment(1);
}

/// A close code as a label (no allocation for the codes the server uses).
fn code_label(code: u16) -> &'static str {
    match code {
        1000 => "1000",
        1001 => "1001",
        1005 => "1005",
        1006 => "1006",
        1007 => "1007",
        1008 => "1008",
        1009 => "1009",
        1011 => "1011",
        1012 => "1012",
        1013 => "1013",
        _ => "other",
    }
}

pub(crate) fn closed(code: u16, outbound_peak: usize) {
    counter!(SOCKET_CLOSES, "code" => code_label(code)).increment(1);
    histogram!(OUTBOUND_PEAK_BYTES).record(outbound_peak as f64);
}

pub(crate) fn rebalanced(sockets: usize) {
    counter!(SOCKETS_REBALANCED).increment(sockets as u64);
}

pub(crate) fn slow_close() {
    counter!(SOCKET_SLOW_CLOSES).increment(1);
}

pub(crate) fn rate_limited(join: bool) {
    let limit = if join { "join" } else { "message" };
    counter!(SOCKET_RATE_LIMITED, "limit" => limit).increment(1);
}

pub(crate) fn diff_coalesced_in_socket() {
    counter!(DIFFS_COALESCED, "where" => "socket").increment(1);
}

/// The sockets' gauge and per-message counters, registered once per endpoint (when it is
/// built) and shared by its sockets.
#[derive(Debug)]
pub(crate) struct SocketCounters {
    pub(crate) open: Gauge,
    pub(crate) frames_in: Counter,
    pub(crate) bytes_in: Counter,
    pub(crate) frames_out: Counter,
    pub(crate) bytes_out: Counter,
}

impl SocketCounters {
    pub(crate) fn register() -> Self {
        SocketCounters {
            open: gauge!(SOCKETS_OPEN),
            frames_in: counter!(FRAMES_RECEIVED),
            bytes_in: counter!(BYTES_RECEIVED),
            frames_out: counter!(FRAMES_SENT),
            bytes_out: counter!(BYTES_SENT),
        }
    }
}

/// How a join was answered: the `outcome` label of [`CHANNEL_JOINS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinOutcome {
    /// Replied `ok`.
    Ok,
    /// The channel replied `error` (or crashed, or its params did not deserialize).
    Error,
    /// The join timeout passed.
    Timeout,
    /// Refused by the socket before any channel ran (limits, unmatched topic).
    Refused,
}

impl JoinOutcome {
    fn label(self) -> &'static str {
        match self {
            JoinOutcome::Ok => "ok",
            JoinOutcome::Error => "error",
            JoinOutcome::Timeout => "timeout",
            JoinOutcome::Refused => "refused",
        }
    }
}

/// The `route` label of a topic no route matches.
pub(crate) const UNMATCHED: &str = "unmatched";

/// Counts a join's answer, and its duration when a channel ran it.
pub(crate) fn join_answered(route: &Arc<str>, outcome: JoinOutcome, took: Option<Duration>) {
    let route = metrics::SharedString::from(route.clone());
    counter!(CHANNEL_JOINS, "route" => route.clone(), "outcome" => outcome.label()).increment(1);
    if let Some(took) = took {
        histogram!(CHANNEL_JOIN_DURATION, "route" => route).record(took.as_secs_f64());
    }
}

pub(crate) fn join_refused(route: Option<&Arc<str>>) {
    match route {
        Some(route) => join_answered(route, JoinOutcome::Refused, None),
        None => {
            counter!(CHANNEL_JOINS, "route" => UNMATCHED, "outcome" => JoinOutcome::Refused.label())
                .increment(1)
        }
    }
}

/// The joined-channels gauge of one route, decremented when dropped (the channel's task
/// ended, however: stopped, crashed or aborted).
#[derive(Debug)]
pub(crate) struct JoinedChannel(Gauge);

impl JoinedChannel {
    pub(crate) fn enter(route: &Arc<str>) -> Self {
        let gauge = gauge!(CHANNELS_JOINED, "route" => metrics::SharedString::from(route.clone()));
        gauge.increment(1.0);
        JoinedChannel(gauge)
    }
}

impl Drop for JoinedChannel {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// A hub's counters, registered once when it starts.
#[derive(Debug, Clone)]
pub(crate) struct HubCounters {
    pub(crate) diffs: Counter,
    pub(crate) coalesced: Counter,
}

impl HubCounters {
    pub(crate) fn register() -> Self {
        HubCounters {
            diffs: counter!(DIFFS_BROADCAST),
            coalesced: counter!(DIFFS_COALESCED, "where" => "hub"),
        }
    }
}

pub(crate) fn hub_lagged() {
    counter!(HUB_LAGGED).increment(1);
}
