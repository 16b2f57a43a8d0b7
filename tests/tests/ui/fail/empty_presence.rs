use presence_core::Presence;

presence_core::pubsub_server!(pub AppPubSub);

#[derive(Presence)]
#[presence]
pub struct RoomPresence;

fn main() {}
