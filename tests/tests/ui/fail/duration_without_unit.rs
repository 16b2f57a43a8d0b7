use presence_core::presence;

presence_core::pubsub_server!(pub AppPubSub);

#[presence(pubsub = AppPubSub, broadcast_period = 1500)]
pub struct RoomPresence;

fn main() {}
