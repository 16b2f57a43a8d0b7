use presence_core::presence;

presence_core::pubsub_server!(pub AppPubSub);

/// Says it fetches, but does not implement `Fetch`.
#[presence(pubsub = AppPubSub, fetch)]
pub struct RoomPresence;

fn main() {}
