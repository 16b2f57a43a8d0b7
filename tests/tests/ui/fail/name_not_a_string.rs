use presence_core::Presence;

presence_core::pubsub_server!(pub AppPubSub);

#[derive(Presence)]
#[presence(pubsub = AppPubSub, name = 5)]
pub struct RoomPresence;

fn main() {}
