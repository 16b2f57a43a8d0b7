use presence_core::presence;

presence_core::pubsub_server!(pub AppPubSub);

#[presence(pubsub = AppPubSub, fetch = true)]
pub struct RoomPresence;

fn main() {}
