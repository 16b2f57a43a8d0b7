use presence_core::presence;
use serde::{Deserialize, Serialize};

presence_core::pubsub_server!(pub AppPubSub);

#[derive(Serialize, Deserialize)]
pub struct UserMeta {
    pub device: String,
}

#[presence(pubsub = AppPubSub, meta = UserMeta)]
pub struct Typed;

fn track_typed<S: presence_core::presence::PresenceSocket>(socket: &S) {
    let meta = UserMeta {
        device: "web".to_owned(),
    };
    let _ = Typed::track(socket, "alice", &meta);
}

fn main() {
    fn assert_meta<P: presence_core::presence::Presence<Meta = UserMeta>>() {}
    assert_meta::<Typed>();
    let _ = track_typed::<Socket>;
}

struct Socket;

impl presence_core::presence::PresenceSocket for Socket {
    fn registry(&self) -> &presence_core::Registry {
        unimplemented!()
    }
    fn owner(&self) -> &presence_core::Owner {
        unimplemented!()
    }
    fn topic(&self) -> &str {
        "room:1"
    }
}
