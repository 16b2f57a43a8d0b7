//! The node's `/metrics` (Prometheus text, from `metrics-exporter-prometheus`) and `/presence`
//! (a status page: plain server-rendered HTML that refreshes itself). See OBSERVABILITY.md.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use poem::web::{Data, Html};
use poem::{IntoResponse, Response, handler};
use presence_core::presence::PresenceHandle;
use presence_core::tracker::ReplicaStatus;
use presence_core::{Registry, supervisor::BoxError};
use presence_poem::PhoenixSocket;

use crate::chat::RoomPresence;

/// Upper bounds of the buckets of the `*_seconds` histograms: 0.5 ms to 10 s.
const SECONDS_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the buckets of the `*_bytes` histograms: 256 B to 64 MiB, by fours.
const BYTES_BUCKETS: [f64; 10] = [
    256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0,
];

/// The process's Prometheus recorder, installed by the first call. `None` when another
/// recorder was installed first (a test's, say): `/metrics` then says so.
///
/// Every histogram is exported as a Prometheus histogram with fixed buckets, not as the
/// exporter's default summary: a summary keeps a sketch per series and per 20-second window
/// that grows with the spread of the values (up to 256 KiB each), which held 2 to 3 MB of a
/// chat node's heap in the churn soak and moved with its outliers; buckets cost a few hundred
/// bytes per series, and add up across nodes (OBSERVABILITY.md).
pub(crate) fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match recorder().install_recorder() {
            Ok(handle) => Some(handle),
            Err(error) => {
                tracing::warn!(%error, "no Prometheus recorder: /metrics stays empty");
                None
            }
        })
        .as_ref()
}

/// The recorder's builder, with the buckets above.
fn recorder() -> PrometheusBuilder {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), &BYTES_BUCKETS));
    // Both lists are non-empty constants, the only way these calls can fail.
    builder.unwrap_or_else(|_| PrometheusBuilder::new())
}

/// Drains the recorder's histograms now and then, so they stay bounded between scrapes. A
/// supervised task: it ends with the server.
pub(crate) async fn upkeep(_: Registry) -> Result<(), BoxError> {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        if let Some(handle) = prometheus() {
            handle.run_upkeep();
        }
    }
}

/// What the status page reads.
#[derive(Debug, Clone)]
pub(crate) struct Status {
    pub(crate) registry: Registry,
    pub(crate) socket: PhoenixSocket,
}

/// `GET /metrics`: the Prometheus text format.
#[handler]
pub(crate) fn metrics_text() -> Response {
    match prometheus() {
        Some(handle) => handle
            .render()
            .with_content_type("text/plain; version=0.0.4")
            .into_response(),
        None => "# no Prometheus recorder installed in this process\n"
            .with_content_type("text/plain; version=0.0.4")
            .into_response(),
    }
}

/// Escapes text for HTML (room names and socket ids come from clients).
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin-bottom:1.5em}\
td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}\
th{background:#f4f4f4}.up{color:#080}.down{color:#b00}";

/// `GET /presence`: the node at a glance.
#[handler]
pub(crate) fn presence_page(Data(status): Data<&Status>) -> Html<String> {
    let presence = PresenceHandle::<RoomPresence>::from_registry(&status.registry).ok();
    let node = status.registry_node();
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"2\">\
         <title>presence: {node}</title><style>{STYLE}</style></head><body>\
         <h1>Node <span id=\"node\">{node}</span></h1>\
         <table><tr><th>sockets open</th><td id=\"sockets-open\">{}</td></tr>\
         <tr><th>channels open</th><td id=\"channels-open\">{}</td></tr></table>",
        status.socket.open_sockets(),
        status.socket.open_channels(),
        node = esc(&node),
    );

    page.push_str("<h2>Peers</h2><table id=\"peers\"><tr><th>node</th><th>incarnation</th><th>state</th></tr>");
    let peers = presence
        .as_ref()
        .and_then(|p| p.tracker().replicas().into_iter().next())
        .unwrap_or_default();
    if peers.is_empty() {
        page.push_str("<tr><td colspan=\"3\">none</td></tr>");
    }
    for peer in peers {
        let state = match peer.status {
            ReplicaStatus::Up => "up",
            ReplicaStatus::Down => "down",
        };
        let _ = write!(
            page,
            "<tr data-peer=\"{name}\"><td>{name}</td><td>{}</td><td class=\"{state}\">{state}</td></tr>",
            peer.vsn,
            name = esc(&peer.name),
        );
    }
    page.push_str("</table>");

    page.push_str("<h2>Largest rooms</h2><table id=\"rooms\"><tr><th>room</th><th>users</th><th>presences</th></tr>");
    // Cluster-wide as this node sees it, rooms joined on other nodes included.
    let rooms = presence
        .as_ref()
        .map(|p| p.tracker().largest_topics(10))
        .unwrap_or_default();
    if rooms.is_empty() {
        page.push_str("<tr><td colspan=\"3\">none</td></tr>");
    }
    for (room, count) in rooms {
        let _ = write!(
            page,
            "<tr data-room=\"{room}\"><td>{room}</td><td class=\"keys\">{}</td><td class=\"metas\">{}</td></tr>",
            count.keys,
            count.metas,
            room = esc(&room),
        );
    }
    page.push_str("</table>");

    page.push_str("<h2>Recent slow-client and rate-limit closes</h2><table id=\"closes\"><tr><th>when</th><th>code</th><th>reason</th><th>socket id</th></tr>");
    let closes = status.socket.recent_closes();
    if closes.is_empty() {
        page.push_str("<tr><td colspan=\"4\">none</td></tr>");
    }
    let now = SystemTime::now();
    for close in closes {
        let ago = now.duration_since(close.at).unwrap_or_default().as_secs();
        let _ = write!(
            page,
            "<tr><td>{ago} s ago</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            close.code,
            esc(close.reason),
            esc(close.socket_id.as_deref().unwrap_or("-")),
        );
    }
    page.push_str("</table><p><a href=\"/metrics\">/metrics</a></p></body></html>");
    Html(page)
}

impl Status {
    fn registry_node(&self) -> String {
        PresenceHandle::<RoomPresence>::from_registry(&self.registry)
            .map(|p| p.pubsub().node_name().to_owned())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn room_names_are_escaped() {
        assert_eq!(
            esc("room:<script>\"x\"&'"),
            "room:&lt;script&gt;&quot;x&quot;&amp;&#39;"
        );
    }
}
