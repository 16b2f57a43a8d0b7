use presence_core::Presence;

presence_core::pubsub_server!(pub AppPubSub);

#[derive(Presence)]
#[presence(pubsub = AppPubSub)]
pub enum RoomPresence {
    Lobby,
}

fn main() {}
