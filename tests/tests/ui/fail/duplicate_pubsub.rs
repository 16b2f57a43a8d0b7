use presence_core::presence;

presence_core::pubsub_server!(pub AppPubSub);
presence_core::pubsub_server!(pub OtherPubSub);

#[presence(pubsub = AppPubSub, pubsub = OtherPubSub)]
pub struct RoomPresence;

fn main() {}
