//! Rebalancing: a node holding more than its share of the cluster's sockets closes its newest
//! ones with 1012, down to the average; a draining peer does not count.

mod common;

use std::time::Duration;

use common::*;
use presence_core::PubSub;
use presence_core::pubsub::LocalCluster;
use presence_poem::{PhoenixSocket, Rebalance};

fn node(cluster: &LocalCluster, name: &str, period_ms: u64) -> (PubSub, PhoenixSocket) {
    let pubsub = PubSub::builder(name).adapter(cluster.adapter()).build();
    let socket = builder(&pubsub)
        .rebalance(
            Rebalance::new()
                .period(Duration::from_millis(period_ms))
                .max_percent_per_period(50),
        )
        .build();
    (pubsub, socket)
}

async fn clients(server: &TestServer, n: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for i in 0..n {
        let mut c = Client::v2(server.addr).await;
        c.heartbeat(&i.to_string()).await;
        clients.push(c);
    }
    clients
}

#[tokio::test]
async fn the_newest_sockets_of_a_crowded_node_reconnect_elsewhere() {
    let cluster = LocalCluster::new();
    let (pa, a) = node(&cluster, "a", 400);
    let server = serve(pa, a.clone()).await;
    // Alone, a keeps every socket.
    let mut clients = clients(&server, 10).await;
    // b comes back, empty. Its rebalancer runs from the build, with no socket to wait for,
    // so a hears its count.
    // (a waits two periods after closing sockets before it compares counts again.)
    let (pb, b) = node(&cluster, "b", 400);
    let b_server = serve(pb, b.clone()).await;

    // The average is 5: a closes its 5 newest sockets (50 % a period at most), with 1012,
    // and their clients reconnect, to b (as a load balancer sends them to the node with the
    // fewest connections).
    let newest = clients.split_off(5);
    let mut moved = Vec::new();
    for mut c in newest {
        let close = tokio::time::timeout(DEADLINE, c.closed())
            .await
            .expect("a new socket is closed")
            .expect("with a close frame");
        assert_eq!(u16::from(close.code), 1012);
        assert_eq!(close.reason.as_str(), "rebalancing");
        moved.push(Client::v2(b_server.addr).await);
    }
    // The oldest stay, and each node holds its share: nothing more closes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!((a.open_sockets(), b.open_sockets()), (5, 5));
    for (i, c) in clients.iter_mut().enumerate() {
        let reply = c.heartbeat(&format!("after-{i}")).await;
        assert_eq!(reply.payload["status"], "ok");
    }
}

#[tokio::test]
async fn a_draining_peer_is_not_counted() {
    let cluster = LocalCluster::new();
    let (_pb, b) = node(&cluster, "b", 100);
    // b drains (it is shutting down, it has no sockets), before a is there to hear any
    // count of it: a must not send it clients.
    tokio::time::timeout(DEADLINE, b.drain())
        .await
        .expect("b has nothing to drain");
    let (pa, a) = node(&cluster, "a", 100);
    let server = serve(pa, a.clone()).await;
    let mut clients = clients(&server, 6).await;
    // Ten periods: with b counted, a would have closed sockets within two.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(a.open_sockets(), 6);
    for c in &mut clients {
        c.assert_silent(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_lone_node_keeps_its_sockets() {
    let cluster = LocalCluster::new();
    let (pa, a) = node(&cluster, "a", 100);
    let server = serve(pa, a.clone()).await;
    let _clients = clients(&server, 6).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(a.open_sockets(), 6);
}

/// A catch-all route does not let a client join the rebalancing topic: a channel's
/// broadcasts there would forge socket counts.
#[tokio::test]
async fn clients_cannot_join_the_rebalancing_topic() {
    let pubsub = PubSub::new("a");
    let socket = PhoenixSocket::builder(pubsub.clone())
        .channel("*", TestChannel::default)
        .rebalance(Rebalance::new().topic("ops:counts"))
        .build();
    let server = serve(pubsub, socket).await;
    let mut c = Client::v2(server.addr).await;
    for (i, topic) in ["ops:counts", presence_poem::DEFAULT_REBALANCE_TOPIC]
        .into_iter()
        .enumerate()
    {
        let reply = c.join(topic, &i.to_string(), serde_json::json!({})).await;
        assert_eq!(reply.payload["status"], "error", "{reply:?}");
        assert_eq!(reply.payload["response"]["reason"], "unmatched topic");
    }
    // Other topics still route.
    c.join_ok("room:1", "9").await;
}
