//! The simplest declaration, in the attribute spelling: JSON-object metas, no hooks, no
//! options, and the struct's name as the tracker name.
use presence_core::presence;
use presence_core::presence::{Presence, PresenceOptions};

presence_core::pubsub_server!(pub AppPubSub);

#[presence(pubsub = AppPubSub)]
pub struct RoomPresence;

fn main() {
    assert_eq!(RoomPresence::NAME, "RoomPresence");
    assert!(!RoomPresence::FETCHES && !RoomPresence::HANDLES_METAS);
    assert_eq!(RoomPresence::options(), PresenceOptions::new());
    let _meta: <RoomPresence as Presence>::Meta = serde_json::json!({ "status": "online" });
    let _: <RoomPresence as Presence>::Extra = ();
    let _: <RoomPresence as Presence>::State = ();
    let _spec = RoomPresence.child_spec(PresenceOptions::new());
}
