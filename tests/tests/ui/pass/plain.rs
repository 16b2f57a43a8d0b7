use presence_core::presence;
use presence_core::presence::{Presence, PresenceOptions};

presence_core::pubsub_server!(pub AppPubSub);

#[presence(pubsub = AppPubSub)]
pub struct RoomPresence;

fn main() {
    // The module path of the struct, then its name.
    assert!(RoomPresence::NAME.ends_with("::RoomPresence"));
    assert!(!RoomPresence::NAME.starts_with("::"));
    assert!(!RoomPresence::FETCHES && !RoomPresence::HANDLES_METAS);
    assert_eq!(RoomPresence::options(), PresenceOptions::new());
    let _meta: <RoomPresence as Presence>::Meta = serde_json::Map::new();
    let _spec = RoomPresence.child_spec(PresenceOptions::new());
}
