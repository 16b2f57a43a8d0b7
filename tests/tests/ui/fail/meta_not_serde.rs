use presence_core::Presence;

presence_core::pubsub_server!(pub AppPubSub);

pub struct NotSerde {
    pub status: String,
}

#[derive(Presence)]
#[presence(pubsub = AppPubSub, meta = NotSerde)]
pub struct RoomPresence;

fn main() {}
