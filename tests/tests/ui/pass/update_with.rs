//! `update_with` takes a closure from the current meta, typed, to the new one: the socket form
//! and `PresenceHandle::update_with`.
use presence_core::presence::{PresenceHandle, PresenceOptions, PresenceSocket};
use presence_core::supervisor::{PubSubSpec, Supervisor};
use presence_core::{Owner, Presence, Registry};
use serde::{Deserialize, Serialize};

presence_core::pubsub_server!(pub AppPubSub);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub status: String,
    pub typing: bool,
}

#[derive(Presence)]
#[presence(pubsub = AppPubSub, meta = Status)]
pub struct RoomPresence;

struct Socket {
    registry: Registry,
    owner: Owner,
}

impl PresenceSocket for Socket {
    fn registry(&self) -> &Registry {
        &self.registry
    }
    fn owner(&self) -> &Owner {
        &self.owner
    }
    fn topic(&self) -> &str {
        "room:1"
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
    };
    let online = Status {
        status: "online".to_owned(),
        typing: false,
    };
    RoomPresence::track(&socket, "alice", &online)?;

    // The socket form: the closure gets the current `Status`.
    RoomPresence::update_with(&socket, "alice", |old: Status| Status {
        typing: true,
        ..old
    })?;

    // The handle form, for any owner and topic; the closure may capture.
    let rooms: PresenceHandle<RoomPresence> = RoomPresence::running(app.registry())?;
    let away = String::from("away");
    rooms.update_with(&socket.owner, "room:1", "alice", move |old| Status {
        status: away,
        ..old
    })?;

    let alice = rooms
        .get_by_key("room:1", "alice")
        .await
        .expect("alice is there");
    let metas = alice.metas()?;
    assert_eq!(
        metas[0].meta,
        Status {
            status: "away".to_owned(),
            typing: true
        }
    );
    assert!(metas[0].phx_ref_prev.is_some());
    app.shutdown().await;
    Ok(())
}
