use presence_core::Presence;

presence_core::pubsub_server!(pub AppPubSub);

#[derive(Presence)]
#[presence(pubsub, pool_size = 2)]
pub struct RoomPresence;

fn main() {}
