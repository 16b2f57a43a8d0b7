//! Three presence nodes in one process, joined by the in-process cluster adapter.
//!
//! Each node tracks its own users; after a few heartbeats every node lists all of them.
//! Run it with `cargo run --example cluster`.

use std::time::Duration;

use presence_core::presence::PresenceOptions;
use presence_core::pubsub::LocalCluster;
use presence_core::supervisor::{PubSubSpec, Supervisor};
use presence_core::{Owner, Presence, pubsub_server};
use serde::{Deserialize, Serialize};

pubsub_server!(
    /// The pub/sub every node of the example runs.
    pub ClusterPubSub
);

/// One device of a user.
#[derive(Debug, Serialize, Deserialize)]
pub struct Device {
    /// The node the device is connected to.
    pub node: String,
    /// When it joined, in seconds since the epoch.
    pub online_at: u64,
}

/// Who is in which room.
#[derive(Debug, Presence)]
#[presence(pubsub = ClusterPubSub, meta = Device)]
pub struct RoomPresence;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = LocalCluster::new();
    let mut nodes = Vec::new();
    for name in ["node-a", "node-b", "node-c"] {
        let adapter_cluster = cluster.clone();
        let app =
            Supervisor::new()
                .child(
                    PubSubSpec::new(ClusterPubSub)
                        .node_name(name)
                        .with_adapter(move || adapter_cluster.adapter()),
                )
                .child(RoomPresence.child_spec(
                    PresenceOptions::new().broadcast_period(Duration::from_millis(100)),
                ))
                .start()
                .await?;
        nodes.push((name, app));
    }

    // Two users on each node; "carol" is on two nodes at once (two devices).
    let mut owners = Vec::new();
    for (i, (name, app)) in nodes.iter().enumerate() {
        let rooms = RoomPresence::running(app.registry())?;
        for user in [["alice", "bob"], ["carol", "dave"], ["carol", "erin"]][i] {
            let owner = Owner::new();
            let device = Device {
                node: (*name).to_owned(),
                online_at: 1_700_000_000 + i as u64,
            };
            rooms.track(&owner, "room:lobby", user, &device)?;
            owners.push(owner);
        }
    }

    // Wait until every node lists all five users (a few heartbeats).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut converged = true;
        for (_, app) in &nodes {
            converged &= RoomPresence::running(app.registry())?
                .list("room:lobby")
                .await
                .len()
                == 5;
        }
        if converged {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err("the nodes did not converge within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for (name, app) in &nodes {
        let list = RoomPresence::running(app.registry())?
            .list("room:lobby")
            .await;
        println!("{name} sees {} users:", list.len());
        for (user, entry) in &list {
            let devices: Vec<String> = entry.metas()?.into_iter().map(|d| d.meta.node).collect();
            println!("  {user:<6} on {}", devices.join(", "));
        }
    }
    drop(owners);
    for (_, app) in nodes {
        app.shutdown().await;
    }
    Ok(())
}
