use presence_core::presence;

presence_core::pubsub_server!(pub AppPubSub);

#[presence(pubsub = AppPubSub, handle_metas)]
pub struct RoomPresence;

fn main() {}
