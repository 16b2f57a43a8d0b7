use presence_core::presence;

presence_core::pubsub_server!(pub AppPubSub);

#[presence(pubsub = AppPubSub)]
pub fn room_presence() {}

fn main() {}
