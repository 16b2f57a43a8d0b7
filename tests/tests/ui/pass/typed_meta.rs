//! A typed meta: the helpers take it, and `entry.metas()` gives it back, each beside its
//! references; `raw_metas()` gives the untyped JSON.
use presence_core::presence::{PresenceHandle, PresenceOptions, PresenceSocket, TypedMeta};
use presence_core::{Owner, Presence, PubSub, presence};
use serde::{Deserialize, Serialize};

presence_core::pubsub_server!(pub AppPubSub);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserMeta {
    pub device: String,
}

#[derive(Presence)]
#[presence(pubsub = AppPubSub, meta = UserMeta)]
pub struct Typed;

/// A map is an object too; the attribute spelling.
#[presence(pubsub = AppPubSub, meta = std::collections::BTreeMap<String, u32>)]
pub struct Counters;

/// The socket form takes the typed meta too.
fn track_typed(socket: &impl PresenceSocket) -> Result<(), presence_core::presence::PresenceError> {
    let meta = UserMeta {
        device: "web".to_owned(),
    };
    Typed::track(socket, "alice", &meta)?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    fn assert_meta<P: Presence<Meta = UserMeta>>() {}
    assert_meta::<Typed>();

    let typed = PresenceHandle::start(Typed, PubSub::new("a"), &PresenceOptions::new())?;
    let owner = Owner::new();
    let web = UserMeta {
        device: "web".to_owned(),
    };
    let phx_ref = typed.track(&owner, "room:1", "alice", &web)?;
    let list = typed.list("room:1").await;
    let metas: Vec<TypedMeta<UserMeta>> = list["alice"].metas()?;
    assert_eq!(metas[0].meta, web);
    assert_eq!(metas[0].phx_ref, phx_ref);
    assert_eq!(metas[0].phx_ref_prev, None);
    assert_eq!(list["alice"].raw_metas()[0].to_value()["device"], "web");

    let counters = PresenceHandle::start(Counters, PubSub::new("b"), &PresenceOptions::new())?;
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("unread".to_owned(), 3);
    counters.track(&owner, "room:1", "alice", &meta)?;
    let entry = counters.get_by_key("room:1", "alice").await.expect("alice");
    assert_eq!(entry.metas()?[0].meta["unread"], 3);
    let _ = |socket: &NoSocket| track_typed(socket);
    Ok(())
}

struct NoSocket;

impl PresenceSocket for NoSocket {
    fn registry(&self) -> &presence_core::Registry {
        unimplemented!()
    }
    fn owner(&self) -> &Owner {
        unimplemented!()
    }
    fn topic(&self) -> &str {
        "room:1"
    }
}
