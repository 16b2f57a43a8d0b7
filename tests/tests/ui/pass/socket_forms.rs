//! The socket forms of the helpers: `track`, `update`, `list`, `get_by_key`, `count` and
//! `untrack` take anything that is a `PresenceSocket` and use its registry, owner and topic.
use presence_core::presence::{PresenceError, PresenceOptions, PresenceSocket};
use presence_core::registry::RegistryError;
use presence_core::supervisor::{PubSubSpec, Supervisor};
use presence_core::{Owner, Presence, Registry};
use serde_json::json;

presence_core::pubsub_server!(pub AppPubSub);

#[derive(Presence)]
#[presence(pubsub = AppPubSub)]
pub struct RoomPresence;

/// Never started.
#[derive(Presence)]
#[presence(pubsub = AppPubSub)]
pub struct Stopped;

/// A channel socket, as presence-poem's `ChannelContext` is.
struct Socket {
    registry: Registry,
    owner: Owner,
    topic: String,
}

impl PresenceSocket for Socket {
    fn registry(&self) -> &Registry {
        &self.registry
    }
    fn owner(&self) -> &Owner {
        &self.owner
    }
    fn topic(&self) -> &str {
        &self.topic
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let app = Supervisor::new()
        .child(PubSubSpec::new(AppPubSub))
        .child(RoomPresence.child_spec(PresenceOptions::new()))
        .start()
        .await?;
    let socket = Socket {
        registry: app.registry().clone(),
        owner: Owner::new(),
        topic: "room:1".to_owned(),
    };

    RoomPresence::track(&socket, "alice", &json!({ "status": "online" }))?;
    let count = RoomPresence::count(&socket)?;
    assert_eq!((count.keys, count.metas), (1, 1));

    RoomPresence::update(&socket, "alice", &json!({ "status": "away" }))?;
    let list = RoomPresence::list(&socket).await?;
    let metas = list["alice"].metas()?;
    assert_eq!(metas[0].meta["status"], "away");

    let alice = RoomPresence::get_by_key(&socket, "alice").await?;
    assert_eq!(alice.map(|entry| entry.len()), Some(1));
    assert!(RoomPresence::get_by_key(&socket, "bob").await?.is_none());

    RoomPresence::untrack(&socket, "alice")?;
    assert_eq!(RoomPresence::count(&socket)?.keys, 0);
    assert!(RoomPresence::list(&socket).await?.is_empty());

    // A presence that is not running in the socket's registry.
    match Stopped::count(&socket) {
        Err(PresenceError::Registry(RegistryError::PresenceNotRunning(name))) => {
            assert_eq!(name, "Stopped");
        }
        other => panic!("not running, not {other:?}"),
    }
    app.shutdown().await;
    Ok(())
}
