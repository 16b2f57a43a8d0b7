use presence_core::presence;

presence_core::pubsub_server!(pub AppPubSub);

pub struct NotSerde;

#[presence(pubsub = AppPubSub, meta = NotSerde)]
pub struct RoomPresence;

fn main() {}
