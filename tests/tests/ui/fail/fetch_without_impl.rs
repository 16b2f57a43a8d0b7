use presence_core::Presence;

presence_core::pubsub_server!(pub AppPubSub);

/// Says it fetches, but does not implement `Fetch`.
#[derive(Presence)]
#[presence(pubsub = AppPubSub, fetch)]
pub struct RoomPresence;

fn main() {}
