use presence_core::presence;

presence_core::pubsub_server!(pub AppPubSub);

#[presence(pubsub = AppPubSub)]
pub enum RoomPresence {
    Lobby,
}

fn main() {}
